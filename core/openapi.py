"""The OpenAPI 3.1 document of `/opencode/*`, built from the route table and the protocol models.

The routes pass their table (method, path, summary, body and response models); this module turns
it into a document that schemathesis and API clients can read. Imports protocol only.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .protocol import ErrorEnvelope, ProviderProfile

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class RouteLike(Protocol):
    method: str
    path: str
    summary: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int


_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/opencode/sessions/{id}/messages"): [
        {"name": "before", "in": "query", "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    ],
    ("GET", "/opencode/files"): [
        {"name": "filename", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 255}},
        {"name": "subfolder", "in": "query", "schema": {"type": "string", "maxLength": 255}},
        {"name": "type", "in": "query", "schema": {"type": "string", "enum": ["input", "output", "temp"]}},
        {"name": "source", "in": "query", "schema": {"type": "string", "enum": ["upload", "comfyui"]}},
    ],
    ("GET", "/opencode/sessions/{id}/export"): [
        {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "md"]}},
    ],
}


# A change of a provider profile made against the revision it was loaded at (routes.if_match).
_IF_MATCH: dict[str, Any] = {
    "name": "If-Match", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 1000},
    "description": 'The profile\'s revision as loaded, "<revision>" (its ETag), or *. Without it the change '
                   "applies to whatever is stored, as before; with a revision that is no longer the stored one "
                   "it is refused with 409 profile_changed and nothing changes.",
}
_CONDITIONAL = {("PATCH", "/opencode/providers/{name}"), ("DELETE", "/opencode/providers/{name}")}
_PROFILE_CHANGED = ("profile_changed: the profile changed since the revision in If-Match; reload it and apply the "
                    "change again")
_ETAG = {"ETag": {"description": "The profile's revision, quoted: what If-Match sends back",
                  "schema": {"type": "string"}}}


def build_openapi(routes: Sequence[RouteLike], version: str) -> dict[str, Any]:
    models = {m for r in routes for m in (r.body, r.response) if m is not None} | {ErrorEnvelope}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for r in routes:
        path = _PARAM.sub(r"{\1}", r.path)
        op: dict[str, Any] = {"summary": r.summary, "operationId": f"{r.method.lower()}_{_op_name(path)}"}
        params = [{"name": n, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}}
                  for n in _PARAM.findall(r.path)]
        params += _QUERY.get((r.method, r.path), [])
        if (r.method, r.path) in _CONDITIONAL:
            params.append(_IF_MATCH)
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
        ok: dict[str, Any] = {"description": "OK"}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.response.__name__}"}}}
        if r.response is ProviderProfile:
            ok["headers"] = _ETAG
        error = {"description": "Error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
        op["responses"] = {str(r.status): ok, "4XX": error, "5XX": error}
        if (r.method, r.path) in _CONDITIONAL:
            op["responses"]["409"] = {**error, "description": _PROFILE_CHANGED}
        paths.setdefault(path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Opencode for ComfyUI", "version": version},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def _op_name(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.replace("/opencode/", "").lower()).strip("_") or "root"
