"""The wire contract: round trips, plain-msgpack compatibility, schema evolution, and one error type for bad bytes."""

from __future__ import annotations

import contextlib
import json

import jsonschema
import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import (
    MESSAGE_TYPES,
    Advice,
    Array,
    BiasUpdate,
    Heartbeat,
    MessageBase,
    StateDigest,
    WeightsAnnouncement,
    WireError,
    decode,
    decode_any,
    encode,
)
from protos.schema import SCHEMA_DIR, json_schemas, render
from tests.support import sample_messages

MESSAGES = sample_messages()


def _builtins(message: MessageBase) -> object:
    """The message as plain dicts and lists (what a MessagePack library returns), bytes kept as bytes."""

    def lists(value: object) -> object:
        if isinstance(value, dict):
            return {key: lists(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [lists(item) for item in value]
        return value

    return lists(msgspec.to_builtins(message, builtin_types=(bytes,)))


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in MESSAGES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: MessageBase) -> None:
    data = encode(message)
    assert decode(data, type(message)) == message
    assert decode_any(data) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_plain_msgpack_reads_every_message(message: MessageBase) -> None:
    """A client with only a MessagePack library (C++ on a Jetson) sees a map tagged with the type name."""
    plain = msgpack.unpackb(encode(message), raw=False)
    assert plain["type"] == type(message).__name__
    assert plain["schema_version"] == 1
    assert plain == _builtins(message)


def test_plain_msgpack_reconstructs_arrays() -> None:
    chunk = next(m for m in MESSAGES if type(m).__name__ == "TrajectoryChunk")
    plain = msgpack.unpackb(encode(chunk), raw=False)
    field = plain["observations"]
    rebuilt = np.frombuffer(field["data"], dtype=np.dtype(field["dtype"])).reshape(field["shape"])
    np.testing.assert_array_equal(rebuilt, chunk.observations.to_numpy())


def test_a_plain_msgpack_producer_is_understood() -> None:
    """The reverse direction: a map written by another language decodes, with defaults for omitted fields."""
    scores = np.array([0.1, -0.2, 0.3], dtype="<f4")
    payload = msgpack.packb(
        {
            "type": "Advice",
            "advice_id": "cpp-1",
            "advisor": "cpp",
            "priority": 1.0,
            "target": {"bot": 2},
            "ttl_s": 3.0,
            "created_at": 1.0,
            "scores": {"dtype": "<f4", "shape": [3], "data": scores.tobytes()},
        }
    )
    advice = decode(payload, Advice)
    assert advice.target.bot == 2 and advice.target.actor == ""
    assert advice.confidence == 1.0 and advice.schema_version == 1
    assert advice.scores is not None
    np.testing.assert_array_equal(advice.scores.to_numpy(), scores)


def test_old_decoder_reads_newer_message_with_extra_fields() -> None:
    class HeartbeatV2(MessageBase, tag="Heartbeat"):
        run: str
        service: str
        instance: str
        software_version: str
        seq: int
        started_at: float
        created_at: float
        gpu_temperature_c: float = 0.0  # a field this build does not know

    newer = HeartbeatV2(
        schema_version=2,
        run="r",
        service="actor",
        instance="i",
        software_version="9.9",
        seq=1,
        started_at=0.0,
        created_at=1.0,
        gpu_temperature_c=61.5,
    )
    old = decode(msgspec.msgpack.encode(newer), Heartbeat)
    assert old.schema_version == 2
    assert (old.instance, old.seq, old.action_space) == ("i", 1, None)


def test_an_announcement_from_a_learner_without_onnx_still_decodes() -> None:
    """`WeightsAnnouncement.onnx` is new: an older learner's announcement (no such key) decodes with None, and the
    fields it did send are all there."""
    announcement = next(m for m in MESSAGES if isinstance(m, WeightsAnnouncement))
    assert announcement.onnx is not None
    older = msgpack.unpackb(encode(announcement), raw=False)
    del older["onnx"]
    decoded = decode(msgpack.packb(older), WeightsAnnouncement)
    assert decoded.onnx is None
    assert decoded == msgspec.structs.replace(announcement, onnx=None)


def test_wrong_type_is_a_wire_error() -> None:
    advice = next(m for m in MESSAGES if isinstance(m, Advice))
    with pytest.raises(WireError, match="BiasUpdate"):
        decode(encode(advice), BiasUpdate)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"not msgpack at all",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"type": "NoSuchMessage"}),
        msgpack.packb({"type": "Advice"}),  # required fields missing
    ],
)
def test_bad_bytes_are_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_any(payload)


def _digest_with_array(array: dict[str, object]) -> bytes:
    digest = _builtins(MESSAGES[0])
    assert isinstance(digest, dict)
    digest["observation"] = array
    return msgpack.packb(digest)


@pytest.mark.parametrize(
    "array",
    [
        {"dtype": "<f4", "shape": [2, 2], "data": b"\x00" * 15},  # one byte short
        {"dtype": "<f4", "shape": [-1], "data": b""},
        {"dtype": "object", "shape": [1], "data": b"\x00" * 8},
        {"dtype": ">f4", "shape": [1], "data": b"\x00" * 4},  # big-endian is not on the wire
        {"dtype": "<f4", "shape": [1] * 9, "data": b"\x00" * 4},
    ],
)
def test_inconsistent_arrays_are_a_wire_error(array: dict[str, object]) -> None:
    with pytest.raises(WireError):
        decode(_digest_with_array(array), StateDigest)


def test_out_of_range_field_is_a_wire_error() -> None:
    digest = _builtins(MESSAGES[0])
    assert isinstance(digest, dict)
    digest["bot"] = -1
    with pytest.raises(WireError, match="bot"):
        decode(msgpack.packb(digest), StateDigest)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_wire_error(payload: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_any(payload)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_corrupted_messages_never_raise_anything_but_wire_error(message: MessageBase, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    with contextlib.suppress(WireError):
        decode(bytes(encoded[:cut]), type(message))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "uint8", "bool", "float16"])
def test_array_round_trips_dtype_and_shape(dtype: str) -> None:
    values = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    restored = Array.from_numpy(values).to_numpy()
    assert restored.dtype == values.dtype and restored.shape == values.shape
    np.testing.assert_array_equal(restored, values)


def test_array_normalises_byte_order_and_layout() -> None:
    big_endian_transposed = np.arange(12, dtype=">f8").reshape(3, 4).T
    array = Array.from_numpy(big_endian_transposed)
    assert array.dtype == "<f8"
    np.testing.assert_array_equal(array.to_numpy(), big_endian_transposed)


def test_committed_json_schemas_are_current() -> None:
    """protos/schema/*.json is what other languages build against; `ala protos export` regenerates it."""
    for name, schema in json_schemas().items():
        assert (SCHEMA_DIR / name).read_text() == render(schema), f"{name} is stale: run `ala protos export`"


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_json_schema_accepts_every_message(message: MessageBase) -> None:
    schema = json.loads((SCHEMA_DIR / "Message.schema.json").read_text())
    jsonschema.validate(json.loads(msgspec.json.encode(message)), schema)
