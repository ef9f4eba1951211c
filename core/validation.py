"""Parsing untrusted JSON into protocol models, with every failure as a clear `BadRequest`.

Shared by the REST routes and the WebSocket commands, so a malformed body and a malformed frame
get the same codes (`bad_json`, `validation_error`) and never an internal error. Imports errors.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def validation_details(exc: ValidationError) -> dict[str, Any]:
    """Pydantic's errors without the offending input (it may be huge, or a secret)."""
    return {"errors": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()[:20]]}


def parse_model(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise BadRequest(f"invalid {where}: {first['msg']}", code="validation_error",
                         details=validation_details(exc)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def parse_json(text: str, what: str) -> Any:
    """`json.loads` with every failure (syntax, absurd nesting) as a `bad_json` error. Python's
    `NaN`/`Infinity` are refused: JSON has no such numbers, and an infinite price or budget would
    be stored as `null` and break every read of what it touched."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise BadRequest(f"the {what} is not valid JSON: {exc}", code="bad_json") from None
    except RecursionError:
        raise BadRequest(f"the {what} is nested too deeply", code="bad_json") from None


async def read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of a body (an aiohttp `StreamReader`), read to its end or the cap. Why
    a loop: one `read(n)` returns what has arrived so far, which for a body sent in several
    pieces (a large message, a slow peer) is only the first of them."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await stream.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
