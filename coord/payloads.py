"""Validation of caller-supplied JSON payloads: one limit, one message, before anything is written."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from coord.errors import InvalidInput


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def check_payload(value: Any, *, what: str, max_bytes: int, required: bool = True) -> tuple[dict[str, Any], str]:
    """Returns the payload (a JSON object) and its hash; raises InvalidInput naming what is wrong."""
    if value is None and not required:
        return {}, hashlib.sha256(b"{}").hexdigest()
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object (a dict), not {type(value).__name__}")
    if required and not value:
        raise InvalidInput(f"{what} is empty: say what needs doing, e.g. {{'title': ..., 'description': ...}}")
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable ({exc}); send strings, numbers, lists and dicts") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidInput(
            f"{what} is {size} bytes, over the limit of {max_bytes} bytes (setting max_payload_bytes); "
            "store large content in a file and send its path"
        )
    return json.loads(text), hashlib.sha256(text.encode("utf-8")).hexdigest()
