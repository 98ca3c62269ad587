"""Protobuf OTLP messages -> OTLP/JSON (the format :mod:`telemetry.otlp_json` describes and
reads).

Kept apart from the reader because it needs protobuf, and the reader must stay importable
without it by the trace analyser (:mod:`traceattr`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

#: Keys holding trace/span ids (bytes in protobuf) anywhere in an OTLP request.
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _fix_ids(node: Any) -> None:
    """Rewrite base64 ids to lowercase hex in place (protobuf JSON -> OTLP/JSON)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = _b64_to_hex(value)
            elif isinstance(value, dict | list):
                _fix_ids(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _fix_ids(item)


def message_to_otlp_json(message: Message) -> dict[str, Any]:
    """Convert an OTLP protobuf message (e.g. ``ExportTraceServiceRequest``) to an OTLP/JSON dict.

    Ids come out as lowercase hex, enums as integers, keys in lowerCamelCase.
    """
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        use_integers_for_enums=True,
    )
    _fix_ids(data)
    return data


def otlp_json_line(message: Message) -> str:
    """Serialise ``message`` as one compact OTLP/JSON line (with trailing newline)."""
    return json.dumps(message_to_otlp_json(message), separators=(",", ":")) + "\n"
