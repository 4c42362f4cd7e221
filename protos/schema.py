"""JSON Schema of every message, so that a non-Python client (C++ on a Jetson) can implement the contract.

On the wire messages are MessagePack maps; the schemas describe the same maps, except that `bytes` fields
(`Array.data`) are MessagePack `bin` on the wire where JSON Schema says base64 string.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import msgspec

from protos.messages import MESSAGE_TYPES, Message

SCHEMA_DIR = Path(__file__).parent / "schema"


def json_schemas() -> dict[str, dict[str, object]]:
    """File name → schema: one per message type, and `Message.schema.json` for the tagged union of all."""
    schemas: dict[str, dict[str, object]] = {
        f"{message_type.__name__}.schema.json": msgspec.json.schema(message_type) for message_type in MESSAGE_TYPES
    }
    schemas["Message.schema.json"] = msgspec.json.schema(Message)
    for schema in schemas.values():
        _clean_descriptions(schema)
    return schemas


def _clean_descriptions(node: object) -> None:
    """Dedent and strip every `description` with `inspect.cleandoc`, explicitly: docstrings reach the schema raw or
    dedented depending on the Python and library versions, and the committed files must not depend on that."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = inspect.cleandoc(value)
            else:
                _clean_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _clean_descriptions(item)


def render(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_json_schemas(out_dir: Path = SCHEMA_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out_dir / name
        path.write_text(render(schema))
        written.append(path)
    return written
