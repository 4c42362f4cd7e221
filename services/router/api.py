"""The router's control plane: thin typed endpoints over a `RouterControl`, the router service (FastAPI).

Mutating endpoints need `Authorization: Bearer <ALA_ROUTER_TOKEN>`; with no token configured they refuse
everyone, so an unconfigured router can be watched but not steered. Every request is rate-limited per client and
its body bounded (`Limits`), refusals counted in `ala_router_api_refused_total{reason}`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import generate_latest
from pydantic import BaseModel, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ala.ratelimit import TokenBucket
from services.router import metrics
from services.router.core import LiveConfig
from services.router.metrics import REGISTRY
from services.router.settings import RouterSettings

bearer = HTTPBearer(auto_error=False, description="ALA_ROUTER_TOKEN")


class RouterControl(Protocol):
    """What the API steers. `RouterService` is one; a protocol, so that this module imports nothing of the service
    that serves it (no import cycle), and a test can steer anything that has these."""

    settings: RouterSettings

    @property
    def config(self) -> LiveConfig: ...

    def status(self) -> Status: ...

    def set_config(self, config: LiveConfig) -> None: ...

    async def kill(self) -> list[str]: ...


def get_service(request: Request) -> RouterControl:
    return request.app.state.router  # type: ignore[no-any-return]


ServiceDep = Annotated[RouterControl, Depends(get_service)]


def require_admin(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token = service.settings.token.get_secret_value()
    if not token:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "control API is read-only: set ALA_ROUTER_TOKEN to enable it")
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


AdminDep = Annotated[None, Depends(require_admin)]


class Status(BaseModel):
    enabled: bool
    strength: float
    learner_version: int
    actors: dict[str, int]
    """Known actors and their action counts."""
    active_targets: int


ConfigUpdate: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ConfigUpdate",
    __doc__="Fields of `LiveConfig` to change; omitted ones keep their value. The result is validated as a whole.",
    **{
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in LiveConfig.model_fields.items()
    },
)


class KillResult(BaseModel):
    actors_cleared: list[str]


LIMITED = {
    400: {"description": "the body could not be parsed (not JSON)"},
    413: {"description": "request body over ALA_ROUTER_API_MAX_BODY_BYTES"},
    429: {"description": "over ALA_ROUTER_API_RATE_PER_S for this client; retry after the Retry-After seconds"},
}
"""Responses every endpoint may give (`Limits`), documented in the OpenAPI schema."""
ADMIN = {401: {"description": "no or wrong token"}, 403: {"description": "no token set"}}


class Limits:
    """ASGI middleware: a token bucket per client address (429) and a bound on request bodies (413), applied
    before FastAPI reads anything, so a flood or a huge body costs the router almost nothing."""

    MAX_CLIENTS = 1024
    """Buckets kept at once; the least recently seen client's is dropped beyond (it starts full again)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, rate_per_s: float, burst: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        bucket = self.buckets.pop(client, None) or TokenBucket(self.rate_per_s, self.burst)
        self.buckets[client] = bucket
        while len(self.buckets) > self.MAX_CLIENTS:
            self.buckets.popitem(last=False)
        if not bucket.take():
            metrics.API_REFUSED.labels("rate").inc()
            retry = str(max(1, round(1 / self.rate_per_s)))
            await JSONResponse({"detail": "too many requests"}, 429, {"Retry-After": retry})(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            metrics.API_REFUSED.labels("size").inc()
            await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # a chunked body that grows past the bound
                metrics.API_REFUSED.labels("size").inc()
                raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, bounded_receive, send)


def create_app(service: RouterControl) -> FastAPI:
    app = FastAPI(
        title="ALA router",
        description="Bounds, merges, expires and routes LLM advice as logit biases. Mutating endpoints need "
        "`Authorization: Bearer $ALA_ROUTER_TOKEN`. Every endpoint is rate-limited per client and bounds bodies.",
        responses=LIMITED,  # type: ignore[arg-type]
    )
    settings = service.settings
    app.add_middleware(
        Limits,
        max_body_bytes=settings.api_max_body_bytes,
        rate_per_s=settings.api_rate_per_s,
        burst=settings.api_burst,
    )
    app.state.router = service

    @app.get("/status")
    def get_status(service: ServiceDep) -> Status:
        return service.status()

    @app.get("/config")
    def get_config(service: ServiceDep) -> LiveConfig:
        return service.config

    @app.put("/config", responses={**ADMIN, 422: {"description": "the configuration would be invalid"}})
    def put_config(update: ConfigUpdate, service: ServiceDep, _: AdminDep) -> LiveConfig:  # type: ignore[valid-type]
        """Change the live configuration (validated as a whole; a bad value changes nothing)."""
        changes = update.model_dump(exclude_none=True)  # type: ignore[attr-defined]
        try:
            config = LiveConfig.model_validate(service.config.model_dump() | changes)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        service.set_config(config)
        return config

    @app.post("/kill", responses=ADMIN)
    async def kill(service: ServiceDep, _: AdminDep) -> KillResult:
        """Clear every bias on every actor now and disable the router until `PUT /config {"enabled": true}`."""
        return KillResult(actors_cleared=await service.kill())

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return generate_latest(REGISTRY).decode()

    return app
