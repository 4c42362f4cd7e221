"""The one way ALA services talk to NATS.

- `Bus.connect` never gives up reconnecting (small wait, unlimited attempts); its callbacks only log and count.
- `publish` (core NATS, at most once) and `publish_durable` (JetStream, acked, de-duplicated by `Nats-Msg-Id`) are
  both bounded by a timeout and report failure as a return value or `PublishError`, never by hanging.
- `provision` creates the streams and buckets of `protos.subjects` idempotently: the service that owns them calls it
  (`ala.security.manages_streams`); the others `await_streams` until they exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ObjectStoreConfig, PubAck, StorageType, StreamConfig

from ala.config import NatsSettings
from ala.metrics import BusMetrics, child
from ala.ratelimit import RateLimitedLog
from ala.tls import client_context
from protos import MessageBase, encode
from protos.subjects import OBJECT_BUCKETS, STREAM_NAMES, STREAMS, StreamSpec

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_STREAM_CONFIG_CHANGED = 10058  # JetStream API error: "stream name already in use with a different configuration"


class PublishError(RuntimeError):
    """A durable publish that was not acknowledged in time; the caller keeps the message and retries."""


class Bus:
    """A connected NATS client with ALA's conventions. Build it with `await Bus.connect(...)`."""

    def __init__(self, nc: NatsClient, settings: NatsSettings, metrics: BusMetrics) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout_s)
        self.settings = settings
        self.metrics = metrics

    @classmethod
    async def connect(cls, settings: NatsSettings, name: str, metrics: BusMetrics) -> Bus:
        """Connect, retrying until a broker answers (a service may start before its broker)."""
        nc = NatsClient()
        error_log = RateLimitedLog(log)

        async def on_error(exc: Exception) -> None:
            metrics.errors.inc()
            if "permissions violation" in str(exc).lower():  # the broker refused a publish or subscribe
                metrics.permission_denied.inc()
            error_log.warning("nats error: %s: %s", type(exc).__name__, exc)

        async def on_disconnected() -> None:
            metrics.connected.set(0)
            if nc.is_closed:
                return  # our own drain or close, not a lost connection
            metrics.disconnects.inc()
            log.warning("disconnected from nats")

        async def on_reconnected() -> None:
            metrics.reconnects.inc()
            metrics.connected.set(1)
            log.info("reconnected to nats at %s", nc.connected_url.netloc if nc.connected_url else "?")

        async def on_closed() -> None:
            metrics.connected.set(0)
            log.debug("nats connection closed")

        options: dict[str, Any] = {}
        if settings.user:
            options |= {"user": settings.user, "password": settings.login_password()}
        if settings.creds_file:
            options["user_credentials"] = settings.creds_file
        if settings.tls_ca_file:
            options["tls"] = client_context(settings.tls_ca_file)
        await nc.connect(
            servers=settings.servers,
            name=name,
            connect_timeout=settings.connect_timeout_s,
            reconnect_time_wait=settings.reconnect_time_wait_s,  # type: ignore[arg-type]  # nats-py takes floats
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            pending_size=settings.pending_size_bytes,
            drain_timeout=settings.drain_timeout_s,  # type: ignore[arg-type]  # nats-py takes floats
            flush_timeout=settings.publish_timeout_s,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **options,
        )
        metrics.connected.set(1)
        log.info("connected to nats at %s as %s", settings.url, name)
        return cls(nc, settings, metrics)

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    async def publish(self, subject: str, message: MessageBase, kind: str) -> bool:
        """Core publish, at most once. Returns False (counted by reason) instead of raising or blocking."""
        return await self.publish_bytes(subject, encode(message), kind)

    async def publish_bytes(self, subject: str, payload: bytes, kind: str) -> bool:
        start = time.perf_counter()
        try:
            # Bounded without a wrapper task (which would cost more than the publish): nats-py appends to its
            # buffer, refuses when the buffer is full, and waits at most `flush_timeout` when it must flush.
            await self.nc.publish(subject, payload)
        except (TimeoutError, nats.errors.TimeoutError):
            self.metrics.publish_failures.labels(kind, "timeout").inc()
            return False
        except nats.errors.OutboundBufferLimitError:
            self.metrics.publish_failures.labels(kind, "buffer_full").inc()
            return False
        except nats.errors.MaxPayloadError:
            self.metrics.publish_failures.labels(kind, "too_large").inc()
            log.error("%s message of %d bytes exceeds the broker's max_payload", kind, len(payload))
            return False
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            self.metrics.publish_failures.labels(kind, "closed").inc()
            return False
        child(self.metrics.published, kind).inc()
        child(self.metrics.publish_seconds, kind).observe(time.perf_counter() - start)
        return True

    async def publish_durable(self, subject: str, payload: bytes, msg_id: str, kind: str) -> PubAck:
        """JetStream publish that returns only once the broker has stored the message.

        `msg_id` goes in `Nats-Msg-Id`, so retrying a publish whose ack was lost stores it once (within the
        stream's duplicate window; the ack then says `duplicate=True`). Raises `PublishError` on timeout or refusal.
        """
        start = time.perf_counter()
        try:
            ack = await self.js.publish(
                subject, payload, timeout=self.settings.publish_timeout_s, headers={MSG_ID_HEADER: msg_id}
            )
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            self.metrics.publish_failures.labels(kind, "timeout").inc()
            raise PublishError(f"no ack for {msg_id} within {self.settings.publish_timeout_s}s") from exc
        except nats.js.errors.NoStreamResponseError as exc:
            self.metrics.publish_failures.labels(kind, "no_stream").inc()
            raise PublishError(f"no stream stores {subject}") from exc
        except nats.js.errors.APIError as exc:
            self.metrics.publish_failures.labels(kind, "refused").inc()
            raise PublishError(f"broker refused {msg_id}: {exc}") from exc
        except nats.errors.MaxPayloadError as exc:
            self.metrics.publish_failures.labels(kind, "too_large").inc()
            raise PublishError(f"{msg_id} is {len(payload)} bytes, over the broker's max_payload") from exc
        except nats.errors.OutboundBufferLimitError as exc:
            self.metrics.publish_failures.labels(kind, "buffer_full").inc()
            raise PublishError(f"client buffer full while publishing {msg_id}") from exc
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError,
        ) as exc:
            self.metrics.publish_failures.labels(kind, "disconnected").inc()
            raise PublishError(f"not connected while publishing {msg_id}") from exc
        self.metrics.published.labels(kind).inc()
        self.metrics.publish_seconds.labels(kind).observe(time.perf_counter() - start)
        return ack

    async def subscribe(self, subject: str, handler: Callable[[Msg], Awaitable[None]], queue: str = "") -> Subscription:
        """Core subscription; `queue` shares the messages among the members of a queue group."""
        return await self.nc.subscribe(subject, queue=queue, cb=handler)

    async def provision(self, max_payload_bytes: int | None = None) -> None:
        """Create or update every stream and bucket ALA uses; safe to call from every service at every start."""
        replicas = self.settings.replicas
        for spec in STREAMS:
            await ensure_stream(self.js, spec, max_msg_size=max_payload_bytes or -1, replicas=replicas)
        for bucket in OBJECT_BUCKETS:
            await self.js.create_object_store(
                bucket, config=ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas)
            )

    async def await_streams(self, log_every_s: float = 30.0) -> None:
        """Return once every stream and bucket ALA uses exists, asking only for stream info (all a service that does
        not own them may do); a service that starts before the learner waits here, not ready, and says so."""
        backoff, logged_at = 0.05, -log_every_s
        while True:
            missing = []
            for name in STREAM_NAMES:
                try:
                    await self.js.stream_info(name)
                except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, TimeoutError):
                    missing.append(name)
            if not missing:
                return
            if time.monotonic() - logged_at >= log_every_s:
                log.info("waiting for the learner to provision %s", ", ".join(missing))
                logged_at = time.monotonic()
            await asyncio.sleep(backoff)  # a poll with backoff: nothing announces a stream's creation
            backoff = min(backoff * 2, 2.0)

    async def drain(self) -> None:
        """Let subscriptions finish in-flight messages, flush publishes, then close."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                TimeoutError,
                nats.errors.TimeoutError,
            ):
                # Nothing to drain into while the broker is away; the socket may already be gone too.
                with contextlib.suppress(ConnectionError, OSError):
                    await self.nc.close()


def stream_config(spec: StreamSpec, max_msg_size: int = -1, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_age=spec.max_age_s,
        max_msg_size=max_msg_size,
        duplicate_window=spec.duplicate_window_s,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, max_msg_size: int = -1, replicas: int = 1) -> None:
    config = stream_config(spec, max_msg_size, replicas)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_CONFIG_CHANGED:
            raise
        log.info("stream %s exists with another configuration; updating it", spec.name)
        await js.update_stream(config)
