"""Property tests on the REST bodies, paths and queries: never a 5xx, never a half-write.

For every route that takes a body, hypothesis sends random JSON, mutated valid bodies (keys
dropped, values of the wrong type, huge strings, deep nesting, unpaired surrogates), raw bytes
labelled as JSON and oversized bodies. Every answer is below 500 and is JSON (a 4xx is the error
envelope); a refused request leaves every table and every file of the data dir as it was.
Examples per property: `OPENCODE_FUZZ_EXAMPLES` (default 120 in CI).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_fuzz_ws import deep, json_values
from test_trust import state

EXAMPLES = int(os.environ.get("OPENCODE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("OPENCODE_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SID = "ses_rest_fuzz"

# (method, path template, a valid body) for every route that reads a body.
BODY_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/opencode/sessions", {"title": "t", "skills": ["echo"]}),
    ("PATCH", "/opencode/sessions/{id}", {"title": "renamed", "budget": {"max_tokens": 1000}}),
    ("POST", "/opencode/sessions/{id}/messages", {"text": "hello there", "mode": "queue"}),
    ("POST", "/opencode/sessions/{id}/abort", {}),
    ("POST", "/opencode/sessions/{id}/permissions", {"request_id": "perm_1", "decision": "allow"}),
    ("POST", "/opencode/providers", {"name": "fz", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
    ("PATCH", "/opencode/providers/{name}", {"default_model": "m", "extra": {"max_attempts": 1}}),
    ("PUT", "/opencode/providers/{name}/key", {"key": "sk-fuzz-0123456789abcdef"}),
    ("POST", "/opencode/skills/reload", {}),
]
GET_ROUTES = ["/opencode/sessions/{id}/messages", "/opencode/sessions/{id}/export", "/opencode/sessions/{id}",
              "/opencode/sessions/{id}/audit", "/opencode/providers/{name}", "/opencode/sessions"]
path_ids = st.one_of(st.sampled_from([SID, "ses_nope", "ollama", "a" * 64, "a" * 65, "..", "%2e%2e", "x y", "é"]),
                     st.text(min_size=1, max_size=70).filter(lambda s: "/" not in s and "?" not in s and "#" not in s))


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    body: Any = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "retype", "extra", "huge", "deep", "surrogate", "nested"]))
        keys = sorted(body) if isinstance(body, dict) else []
        if action == "drop" and keys:
            body.pop(draw(st.sampled_from(keys)))
        elif action == "retype" and keys:
            body[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "extra" and isinstance(body, dict):
            body[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "huge" and keys:
            body[draw(st.sampled_from(keys))] = "y" * draw(st.sampled_from([201, 1001, 100_001, 400_000]))
        elif action == "deep" and keys:
            body[draw(st.sampled_from(keys))] = draw(deep)
        elif action == "surrogate" and keys:
            body[draw(st.sampled_from(keys))] = draw(st.sampled_from(["\ud800", "a\udfffb", "\udbff"]))
        elif action == "nested":
            body = draw(st.sampled_from([[body], {"body": body}, None, 0, "x"]))
    return body


def fill(template: str, sid: str, name: str) -> str:
    return template.replace("{id}", sid).replace("{name}", name)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def rest(client: Any, service: Any) -> tuple[Any, Any]:
    r = await client.post("/opencode/sessions", json={"id": SID, "skills": ["echo"]})
    assert r.status == 201
    r = await client.post("/opencode/providers", json={"name": "fzp", "kind": "openai",
                                                      "base_url": "http://127.0.0.1:9/v1", "extra": {"max_attempts": 1}})
    assert r.status == 201, await r.text()
    return client, service


async def settle(service: Any) -> None:
    for live_id in list(service.sessions._live):  # noqa: SLF001 - every session a request may have started
        await service.sessions.wait_idle(live_id)
    await service.store.flush()


async def check(client: Any, service: Any, method: str, path: str, *, data: bytes | None = None,
                json_body: Any = None, raw: bool = False) -> int:
    await settle(service)
    before = await state(service)
    if raw or data is not None:
        resp = await client.request(method, path, data=data, headers={"Content-Type": "application/json"})
    else:
        body = json.dumps(json_body).encode("utf-8", "surrogatepass")
        resp = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
    text = await resp.text()
    assert resp.status < 500, (method, path, resp.status, text[:500])
    payload = json.loads(text) if resp.content_type == "application/json" else None
    if resp.status >= 400 and not (resp.status in (404, 405) and resp.content_type == "text/plain"):
        # (a path no route matches gets aiohttp's own plain 404/405 before any handler runs)
        assert payload is not None and set(payload) == {"error"}, text[:300]
        assert payload["error"]["code"] != "internal_error", text[:300]
        assert len(text) < 20_000, "an error must not echo a huge input"
        await settle(service)
        assert await state(service) == before, f"{method} {path} -> {resp.status} wrote something"
    return resp.status


# --------------------------------------------------------------------------- properties


route_index = st.integers(0, len(BODY_ROUTES) - 1)


@FUZZ
@given(i=route_index, body=json_values)
async def test_random_json_bodies(rest: Any, i: int, body: Any) -> None:
    client, service = rest
    method, template, _ = BODY_ROUTES[i]
    await check(client, service, method, fill(template, SID, "fzp"), json_body=body)


@FUZZ
@given(data=st.data())
async def test_mutated_valid_bodies(rest: Any, data: st.DataObject) -> None:
    client, service = rest
    method, template, valid = BODY_ROUTES[data.draw(route_index)]
    body = data.draw(mutated(valid))
    await check(client, service, method, fill(template, SID, "fzp"), json_body=body)


@FUZZ
@given(i=route_index, data=st.binary(max_size=500))
async def test_raw_bytes_labelled_json(rest: Any, i: int, data: bytes) -> None:
    client, service = rest
    method, template, _ = BODY_ROUTES[i]
    await check(client, service, method, fill(template, SID, "fzp"), data=data)


@FUZZ
@given(i=route_index, sid=path_ids, name=path_ids)
async def test_random_path_ids(rest: Any, i: int, sid: str, name: str) -> None:
    client, service = rest
    method, template, valid = BODY_ROUTES[i]
    status = await check(client, service, method, fill(template, sid, name), json_body=valid)
    if "{id}" in template and sid != SID:
        assert status in (400, 404, 405), status


@FUZZ
@given(template=st.sampled_from(GET_ROUTES), sid=path_ids,
       query=st.dictionaries(st.sampled_from(["limit", "before", "format", "after_seq", "token", "x"]),
                             st.one_of(st.text(max_size=30), st.integers(-10**20, 10**20).map(str)), max_size=3))
async def test_random_reads(rest: Any, template: str, sid: str, query: dict[str, str]) -> None:
    client, service = rest
    before = await state(service)
    resp = await client.get(fill(template, sid, sid), params=query)
    text = await resp.text()
    assert resp.status < 500, (template, sid, query, text[:300])
    assert await state(service) == before


@pytest.mark.parametrize("method,template,_valid", BODY_ROUTES)
async def test_oversized_bodies_are_413(rest: Any, method: str, template: str, _valid: Any) -> None:
    client, service = rest
    big = json.dumps({"text": "z" * (3 << 20)}).encode()
    assert await check(client, service, method, fill(template, SID, "fzp"), data=big) == 413


@pytest.mark.parametrize("body", [
    b"[" * 200_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"title": "\\ud800"}',
    b'{"title": "a\\udfffb", "skills": ["echo"]}',
    b'{"text": "\\udbff"}',
    b'{"title": NaN}',
    b'{"budget": {"max_cost": Infinity, "max_tokens": 1e400}}',
    b'{"budget": {"max_tokens": 100000000000000000000000000000000}}',
    b'{"title": "dup", "title": "dup2"}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{}",
    b"\x00",
    b"null",
    b'"a string"',
])
async def test_nasty_bodies_everywhere(rest: Any, body: bytes) -> None:
    client, service = rest
    for method, template, _ in BODY_ROUTES:
        await check(client, service, method, fill(template, SID, "fzp"), data=body)
    # The session still reads back and exports after whatever was accepted.
    for fmt in ("json", "md"):
        r = await client.get(f"/opencode/sessions/{SID}/export", params={"format": fmt})
        assert r.status == 200


def _null_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    """Every field of every body model set to null, one at a time and all at once."""
    from opencode_agent.routes import ROUTES

    out = []
    for r in ROUTES:
        if r.body is None or not r.body.model_fields:
            continue
        fields = list(r.body.model_fields)
        for f in fields:
            out.append((r.method, r.path, {f: None}))
        out.append((r.method, r.path, {f: None for f in fields}))
    return out


@pytest.mark.parametrize("method,template,body", _null_bodies(),
                         ids=lambda x: x if isinstance(x, str) else ",".join(x) if isinstance(x, dict) else "")
async def test_explicit_nulls(rest: Any, method: str, template: str, body: dict[str, Any]) -> None:
    """`{"field": null}` is what a JS client sends for "unset": never a 500, never a half-write."""
    client, service = rest
    await check(client, service, method, fill(template, SID, "fzp"), json_body=body)
    r = await client.get(f"/opencode/sessions/{SID}")
    assert r.status == 200
