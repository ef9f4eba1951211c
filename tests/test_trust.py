"""The trust boundary of `/opencode/*` against a real aiohttp server on 127.0.0.1.

The peer is always loopback here; a remote client is simulated the two ways one shows up in
front of a loopback server: a `Host` that is not loopback (DNS rebinding, or `--listen` reached by
name) and proxy headers (`Forwarded`, `X-Forwarded-*`). A truly remote peer address is covered by
calling `check_request` directly. Every refused request must write nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError

from opencode_agent.core.errors import Forbidden, Unauthorized
from opencode_agent.core.trust import TOKEN_FILE, TrustPolicy, check_request, host_name, is_local
from opencode_agent.routes import ROUTES

TOKEN = "test-token"  # the conftest's TrustPolicy
EVIL = "http://evil.example"


def row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
                for t in ("sessions", "messages", "events", "audit")}


async def state(service: Any) -> tuple[dict[str, int], dict[str, str]]:
    """Rows in every table and a hash of every file in the data dir: what a request may change."""
    await service.store.flush()
    files = {}
    for path in sorted(service.data_dir.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm", ".sqlite3")):
            files[str(path.relative_to(service.data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return row_counts(service.config.db_path), files


def origin_of(client: Any) -> str:
    return f"http://{client.server.host}:{client.server.port}"


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --------------------------------------------------------------------------- local, no token


async def test_plain_local_clients_need_no_token(client: Any) -> None:
    """curl and scripts send no Origin: on loopback they work with no setup."""
    r = await client.post("/opencode/sessions", json={"skills": ["echo"]})
    assert r.status == 201, await r.text()
    sid = (await r.json())["id"]
    assert (await client.get(f"/opencode/sessions/{sid}")).status == 200
    assert (await client.patch(f"/opencode/sessions/{sid}", json={"title": "x"})).status == 200
    assert (await client.delete(f"/opencode/sessions/{sid}")).status == 200


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "127.0.0.1", "[::1]:{port}"])
async def test_loopback_host_spellings_pass(client: Any, host: str) -> None:
    r = await client.post("/opencode/sessions", json={}, headers={"Host": host.format(port=client.server.port)})
    assert r.status == 201, await r.text()


async def test_same_origin_panel_passes(client: Any, service: Any) -> None:
    origin = origin_of(client)
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"}
    r = await client.post("/opencode/sessions", json={"title": "from the panel"}, headers=headers)
    assert r.status == 201, await r.text()
    ws = await client.ws_connect("/opencode/ws", headers=headers)
    await ws.send_json({"id": "1", "type": "ping"})
    assert (await ws.receive_json())["type"] == "ack"
    await ws.close()


# --------------------------------------------------------------------------- foreign pages


STATE_CHANGING = [
    ("POST", "/opencode/sessions", {"title": "csrf"}),
    ("POST", "/opencode/providers", {"name": "evil", "kind": "openai", "base_url": "http://127.0.0.1:9"}),
    ("PUT", "/opencode/providers/ollama/key", {"key": "sk-planted-by-an-attacker-000000"}),
    ("POST", "/opencode/skills/reload", {}),
]
FOREIGN = [
    {"Origin": EVIL},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # another port on this machine is another origin
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "http://["},  # an Origin urlsplit cannot read (it was a 500)
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": EVIL, "X-Opencode-Token": TOKEN},  # a token never makes a foreign page trusted
]


@pytest.mark.parametrize("headers", FOREIGN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("method,path,body", STATE_CHANGING, ids=lambda x: x if isinstance(x, str) else "")
async def test_foreign_pages_are_refused_and_write_nothing(client: Any, service: Any, method: str, path: str,
                                                           body: dict[str, Any], headers: dict[str, str]) -> None:
    before = await state(service)
    r = await client.request(method, path, json=body, headers=headers)
    assert r.status == 403, await r.text()
    assert (await error_of(r))["code"] == "forbidden_origin"
    assert await state(service) == before
    assert service.secrets.stored("ollama") is None


async def test_foreign_pages_cannot_change_or_delete_a_session(client: Any, service: Any) -> None:
    sid = (await (await client.post("/opencode/sessions", json={"title": "mine"})).json())["id"]
    before = await state(service)
    for method, path, body in [("PATCH", f"/opencode/sessions/{sid}", {"title": "pwned"}),
                               ("DELETE", f"/opencode/sessions/{sid}", None),
                               ("POST", f"/opencode/sessions/{sid}/messages", {"text": "spend money"}),
                               ("POST", f"/opencode/sessions/{sid}/abort", {})]:
        r = await client.request(method, path, json=body, headers={"Origin": "null"})
        assert r.status == 403, (method, path, await r.text())
    assert await state(service) == before
    assert (await (await client.get(f"/opencode/sessions/{sid}")).json())["title"] == "mine"


@pytest.mark.parametrize("headers", FOREIGN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
async def test_foreign_pages_cannot_open_the_websocket(client: Any, headers: dict[str, str]) -> None:
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/opencode/ws", headers=headers)
    assert info.value.status == 403


@pytest.mark.parametrize("headers", FOREIGN[:5], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
async def test_foreign_pages_cannot_read_either(client: Any, headers: dict[str, str]) -> None:
    """With ComfyUI's `--enable-cors-header` every response says `Access-Control-Allow-Origin: *`,
    so a foreign page that could GET would read every conversation: reads are refused too."""
    await client.post("/opencode/sessions", json={"title": "private"})
    for path in ("/opencode/sessions", "/opencode/providers"):
        r = await client.get(path, headers=headers)
        assert r.status == 403, (path, await r.text())


# --------------------------------------------------------------------------- remote: token needed


REMOTE = [
    {"Host": "evil.example"},  # DNS rebinding: the attacker's name resolves to 127.0.0.1
    {"Host": "127.0.0.1.nip.io:8188"},
    {"Host": "192.168.1.20:8188"},  # --listen, reached by address
    {"X-Forwarded-For": "203.0.113.9"},
    {"X-Forwarded-Host": "comfy.example.com"},
    {"X-Forwarded-Proto": "https"},
    {"Forwarded": "for=203.0.113.9;proto=https"},
    {"X-Real-IP": "203.0.113.9"},
]


@pytest.mark.parametrize("headers", REMOTE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
async def test_remote_requests_need_the_token(client: Any, service: Any, headers: dict[str, str]) -> None:
    before = await state(service)
    for method, path, body in [("GET", "/opencode/sessions", None), ("POST", "/opencode/sessions", {}),
                               ("GET", "/opencode/providers", None)]:
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status == 401, (method, path, await r.text())
        err = await error_of(r)
        assert err["code"] == "unauthorized"
        # The message says how to get a token, and never contains it.
        assert "X-Opencode-Token" in err["message"] and TOKEN_FILE in err["message"]
        assert TOKEN not in await r.text()
    assert await state(service) == before


@pytest.mark.parametrize("how", ["header", "bearer", "query"])
@pytest.mark.parametrize("headers", [REMOTE[0], REMOTE[3], REMOTE[6]], ids=["rebind", "xff", "forwarded"])
async def test_the_token_lets_remote_clients_in(client: Any, headers: dict[str, str], how: str) -> None:
    h = dict(headers)
    params = {}
    if how == "header":
        h["X-Opencode-Token"] = TOKEN
    elif how == "bearer":
        h["Authorization"] = f"Bearer {TOKEN}"
    else:
        params = {"token": TOKEN}
    r = await client.post("/opencode/sessions", json={}, headers=h, params=params)
    assert r.status == 201, await r.text()
    r = await client.get("/opencode/sessions", headers=h, params=params)
    assert r.status == 200


@pytest.mark.parametrize("bad", ["", "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
async def test_a_wrong_token_is_refused(client: Any, bad: str) -> None:
    h = {"Host": "evil.example", "X-Opencode-Token": bad, "Authorization": f"Bearer {bad}"}
    r = await client.post("/opencode/sessions", json={}, headers=h, params={"token": bad})
    assert r.status == 401


async def test_remote_websocket_needs_the_token(client: Any) -> None:
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/opencode/ws", headers={"Host": "evil.example"})
    assert info.value.status == 401
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/opencode/ws", headers={"X-Forwarded-For": "203.0.113.9"})
    assert info.value.status == 401
    # Browsers cannot set headers on a WebSocket: the panel passes `?token=`.
    ws = await client.ws_connect(f"/opencode/ws?token={TOKEN}", headers={"Host": "comfy.example.com:8188",
                                                                         "Origin": "http://comfy.example.com:8188"})
    await ws.send_json({"id": "1", "type": "ping"})
    assert (await ws.receive_json())["type"] == "ack"
    await ws.close()


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("ctype,data", [
    ("text/plain", b'{"title": "simple request"}'),  # what a cross-site <form> or sendBeacon can send
    ("application/x-www-form-urlencoded", b"title=x"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=title\r\n\r\nx\r\n--x--\r\n"),
    ("application/json-patch+json", b"{}"),
    ("", b"{}"),
])
async def test_non_json_bodies_are_415_and_write_nothing(client: Any, service: Any, ctype: str, data: bytes) -> None:
    sid = (await (await client.post("/opencode/sessions", json={})).json())["id"]
    before = await state(service)
    headers = {"Content-Type": ctype} if ctype else {}
    for method, path in [("POST", "/opencode/sessions"), ("PATCH", f"/opencode/sessions/{sid}"),
                         ("POST", f"/opencode/sessions/{sid}/messages"), ("PUT", "/opencode/providers/ollama/key"),
                         ("POST", "/opencode/providers")]:
        r = await client.request(method, path, data=data, headers=headers, skip_auto_headers=["Content-Type"])
        assert r.status == 415, (method, path, ctype, await r.text())
        assert (await error_of(r))["code"] == "unsupported_media_type"
    assert await state(service) == before


async def test_json_with_a_charset_is_json(client: Any) -> None:
    r = await client.post("/opencode/sessions", data=b'{"title": "ok"}',
                          headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 201


# --------------------------------------------------------------------------- GET changes nothing


def _fill(path: str, sid: str) -> str:
    return path.replace("{id}", sid).replace("{name}", "ollama")


async def test_no_get_route_changes_state(client: Any, service: Any) -> None:
    sid = (await (await client.post("/opencode/sessions", json={"skills": ["echo"]})).json())["id"]
    r = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "one two"},
                          headers={"Accept": "text/event-stream"})
    await r.read()
    before = await state(service)
    gets = [r for r in ROUTES if r.method == "GET" and not r.path.endswith(("/ws", "/events", "/models"))]
    assert len(gets) >= 10
    for route in gets:
        for query in ("", "?format=md", "?limit=1"):
            resp = await client.get(_fill(route.path, sid) + query)
            assert resp.status < 500, route.path
            await resp.read()
    assert await state(service) == before


# --------------------------------------------------------------------------- the policy itself


@pytest.mark.parametrize("remote,host,local", [
    ("127.0.0.1", "127.0.0.1:8188", True),
    ("::1", "[::1]:8188", True),
    ("127.0.0.5", "localhost", True),
    ("192.168.1.9", "127.0.0.1:8188", False),  # a real remote peer, even with a loopback Host
    ("10.0.0.2", "localhost:8188", False),
    (None, "127.0.0.1", False),
    ("127.0.0.1", None, False),
    ("127.0.0.1", "", False),
    ("127.0.0.1", "127.1", False),
    ("127.0.0.1", "0.0.0.0:8188", False),
    ("not an ip", "127.0.0.1", False),
])
def test_is_local(remote: str | None, host: str | None, local: bool) -> None:
    headers = {"Host": host} if host is not None else {}
    assert is_local(headers, remote) is local


def test_a_real_remote_peer_needs_the_token() -> None:
    policy = TrustPolicy(token=TOKEN)
    with pytest.raises(Unauthorized):
        check_request(policy, "GET", {"Host": "127.0.0.1:8188"}, "192.168.1.9", {})
    check_request(policy, "GET", {"Host": "127.0.0.1:8188"}, "192.168.1.9", {"token": TOKEN})
    with pytest.raises(Forbidden):
        check_request(policy, "POST", {"Host": "a:1", "Origin": "http://b:1"}, "192.168.1.9", {"token": TOKEN})


def test_host_name() -> None:
    assert host_name("127.0.0.1:8188") == "127.0.0.1"
    assert host_name("[::1]:8188") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("Example.COM") == "example.com"


async def test_token_file_is_private_stable_and_rotatable(tmp_path: Path, caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger="opencode"):
        policy = await TrustPolicy.load(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(policy.token) >= 32
    assert (await TrustPolicy.load(tmp_path)).token == policy.token  # same install, same token
    old = policy.token
    new = await policy.rotate()
    assert new != old and path.read_text().strip() == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(Unauthorized):
        check_request(policy, "GET", {"Host": "evil.example"}, "127.0.0.1", {"token": old})
    check_request(policy, "GET", {"Host": "evil.example"}, "127.0.0.1", {"token": new})
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_FILE]  # no temp file left behind
    # The console names the file but never shows a token: ComfyUI's log is pasted into bug reports.
    assert str(path) in caplog.text
    assert old not in caplog.text and new not in caplog.text


async def test_a_token_that_is_not_utf8_is_a_wrong_token_not_a_500(client: Any) -> None:
    """Raw header bytes that are not UTF-8 (aiohttp keeps them as surrogates) made the token
    comparison raise: anyone who could reach the port could log a traceback per request."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /opencode/sessions HTTP/1.1\r\nHost: evil.example\r\nX-Opencode-Token: \xff\xfe\r\n"
                     b"Connection: close\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"401", status_line
