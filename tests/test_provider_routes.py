"""Provider routes and a real provider through the whole stack: profile → key → session → stream.

The upstream is a loopback server speaking OpenAI's and Anthropic's exact wire formats.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fakes.llm_servers import FakeLLMServer, FakeToolCall, Reply, fake_llm  # noqa: F401 - fixture
from wsclient import WsClient, run_final

KEY = "sk-test-SECRETSECRETSECRET1234"


async def j(resp: Any, status: int) -> Any:
    body = await resp.text()
    assert resp.status == status, body
    return json.loads(body) if body else None


async def add_provider(client: Any, fake_llm: FakeLLMServer, name: str, model: str, *, key: str | None = None) -> None:
    """An OpenAI-format profile on the fake server, with `key` stored if given."""
    await j(await client.post("/opencode/providers", json={
        "name": name, "kind": "openai", "base_url": fake_llm.url + "/v1", "default_model": model}), 201)
    if key is not None:
        await j(await client.put(f"/opencode/providers/{name}/key", json={"key": key}), 200)


async def session_socket(client: Any, sid: str, **join: Any) -> WsClient:
    """A WebSocket joined to session `sid`."""
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid, **join)
    return ws


async def reply_to(ws: WsClient, sid: str, text: str) -> dict[str, Any]:
    """Send `text` and wait for its run's final `run.status` event."""
    sent = await ws.command("send", session_id=sid, text=text)
    return await ws.until(run_final(sent["data"]["run_id"]))


async def test_profile_crud_and_write_only_key(client: Any, fake_llm: FakeLLMServer) -> None:
    body = {"name": "fake", "kind": "openai", "base_url": fake_llm.url + "/v1", "default_model": "gpt-a"}
    created = await j(await client.post("/opencode/providers", json=body), 201)
    assert created["has_key"] is False and created["key_hint"] is None
    after_key = await j(await client.put("/opencode/providers/fake/key", json={"key": KEY}), 200)
    assert after_key["has_key"] is True and after_key["key_hint"].endswith("1234")
    listing = await client.get("/opencode/providers")
    text = await listing.text()
    assert listing.status == 200 and KEY not in text and "fake" in text
    models = await j(await client.get("/opencode/providers/fake/models"), 200)
    assert {m["id"] for m in models["models"]} == {"gpt-a", "gpt-b"}
    assert fake_llm.last.headers["Authorization"] == f"Bearer {KEY}"
    patched = await j(await client.patch("/opencode/providers/fake", json={"default_model": "gpt-b"}), 200)
    assert patched["default_model"] == "gpt-b"
    cleared = await j(await client.delete("/opencode/providers/fake/key"), 200)
    assert cleared["has_key"] is False
    await j(await client.delete("/opencode/providers/fake"), 200)
    await j(await client.get("/opencode/providers/fake"), 404)


async def test_openai_stream_with_tool_call_through_the_service(client: Any, fake_llm: FakeLLMServer) -> None:
    await add_provider(client, fake_llm, "fake", "gpt-a", key=KEY)
    # A role with reference files: the model is offered `read_skill_reference`.
    sid = (await j(await client.post("/opencode/sessions", json={
        "skills": ["prompt-engineer"], "provider": "fake", "model": "gpt-a"}), 201))["id"]
    fake_llm.push(
        Reply(tool_calls=[FakeToolCall("read_skill_reference", {"skill": "prompt-engineer", "path": "nope.md"}, id="c1")]),
        Reply(text="Here is your answer.", input_tokens=120, output_tokens=30),
    )
    ws = await session_socket(client, sid, panel=True)
    final = await reply_to(ws, sid, "help me")
    assert final["data"]["run"]["status"] == "completed", final
    text = "".join(e["data"]["text"] for e in ws.of_type("message.delta"))
    assert text == "Here is your answer."
    assert len(fake_llm.requests) == 2
    second = fake_llm.requests[1].body
    assert second["messages"][0]["role"] == "system"
    assert [t["function"]["name"] for t in second["tools"]] == ["read_skill_reference"]
    assert any(m["role"] == "tool" and m["tool_call_id"] == "c1" for m in second["messages"])
    usage = (await ws.until(lambda e: e["type"] == "usage.updated"))["data"]["usage"]
    assert usage["input_tokens"] >= 120
    everything = json.dumps(ws.events)
    assert KEY not in everything


async def test_upstream_error_surfaces_as_run_error_without_the_key(client: Any, fake_llm: FakeLLMServer) -> None:
    from fakes.llm_servers import Fail

    await add_provider(client, fake_llm, "fake", "gpt-a", key=KEY)
    sid = (await j(await client.post("/opencode/sessions", json={
        "skills": ["assistant"], "provider": "fake"}), 201))["id"]
    fake_llm.push(Fail(401, {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}))
    ws = await session_socket(client, sid)
    final = await reply_to(ws, sid, "hi")
    assert final["data"]["run"]["status"] == "error"
    assert "Incorrect API key" in final["data"]["run"]["error"]
    assert KEY not in json.dumps(ws.events)
    export = await (await client.get(f"/opencode/sessions/{sid}/export")).text()
    assert KEY not in export


async def test_no_provider_is_a_clear_run_error(client: Any) -> None:
    from fakes.llm_servers import closed_port

    # The seeded Ollama profile needs no key, but nothing answers where it points.
    await j(await client.patch("/opencode/providers/ollama", json={"base_url": f"http://127.0.0.1:{closed_port()}"}), 200)
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["assistant"]}), 201))["id"]
    ws = await session_socket(client, sid)
    final = await reply_to(ws, sid, "hi")
    assert final["data"]["run"]["status"] == "error"
    assert "no provider is chosen" in final["data"]["run"]["error"]
    assert "start your local server" in final["data"]["run"]["error"]
    assert "opencode-agent run --provider NAME" in final["data"]["run"]["error"]  # the CLI's way
    assert final["data"]["run"]["error_code"] == "no_provider"


async def test_a_changed_key_or_profile_applies_to_the_next_run(client: Any, fake_llm: FakeLLMServer) -> None:
    """Runs reuse a resolved provider; a new key or an edited profile must still take effect."""
    await add_provider(client, fake_llm, "fake", "gpt-a", key=KEY)
    sid = (await j(await client.post("/opencode/sessions", json={
        "skills": ["assistant"], "provider": "fake"}), 201))["id"]
    ws = await session_socket(client, sid)

    async def one_reply() -> Any:
        fake_llm.push(Reply(text="ok"))
        final = await reply_to(ws, sid, "hi")
        assert final["data"]["run"]["status"] == "completed", final
        return fake_llm.last

    first, again = await one_reply(), await one_reply()
    assert first.headers["Authorization"] == again.headers["Authorization"] == f"Bearer {KEY}"
    assert first.body["model"] == again.body["model"] == "gpt-a"
    other = KEY.replace("1234", "9876")
    await j(await client.put("/opencode/providers/fake/key", json={"key": other}), 200)
    assert (await one_reply()).headers["Authorization"] == f"Bearer {other}"
    await j(await client.patch("/opencode/providers/fake", json={"default_model": "gpt-b"}), 200)
    assert (await one_reply()).body["model"] == "gpt-b"
    await j(await client.delete("/opencode/providers/fake/key"), 200)
    assert "Authorization" not in (await one_reply()).headers


async def test_with_no_key_anywhere_a_server_on_this_machine_answers(client: Any, fake_llm: FakeLLMServer) -> None:
    """A fresh install with only a local server (Ollama, LM Studio) needs no provider chosen:
    a profile that has a key comes first, else the first that needs none."""
    await j(await client.delete("/opencode/providers/ollama"), 200)
    await add_provider(client, fake_llm, "studio", "local-model")
    fake_llm.push(Reply(text="from the local server"))
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["assistant"]}), 201))["id"]
    ws = await session_socket(client, sid)
    final = await reply_to(ws, sid, "hi")
    assert final["data"]["run"]["status"] == "completed"
    assert fake_llm.last.body["model"] == "local-model"
    # A profile with a key is preferred to it.
    await add_provider(client, fake_llm, "keyed", "keyed-model", key=KEY)
    fake_llm.push(Reply(text="from the keyed one"))
    await reply_to(ws, sid, "again")
    assert fake_llm.last.body["model"] == "keyed-model"


async def test_a_malformed_base_url_is_a_clear_400_and_nothing_is_stored(client: Any) -> None:
    # "http://[" made urlsplit raise, which was a 500; a port out of range was stored and failed
    # only when the model list was asked for.
    for url in ("http://[", "http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:port/v1", "ftp://x", "x"):
        body = await j(await client.post("/opencode/providers", json={"name": "bad", "kind": "openai", "base_url": url}), 400)
        assert body["error"]["details"] == {"field": "base_url"} and "base_url" in body["error"]["message"], body
        await j(await client.patch("/opencode/providers/ollama", json={"base_url": url}), 400)
    await j(await client.get("/opencode/providers/bad"), 404)
    assert (await j(await client.get("/opencode/providers/ollama"), 200))["base_url"] == "http://127.0.0.1:11434"


async def test_a_profile_moved_to_another_host_does_not_take_the_old_services_key(
        client: Any, fake_llm: FakeLLMServer, monkeypatch: Any) -> None:
    """OPENAI_API_KEY is for api.openai.com: a profile patched to point elsewhere stops using it
    (as a profile created there never does), unless the patch names the variable itself."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    made = await j(await client.post("/opencode/providers", json={"name": "openai", "kind": "openai"}), 201)
    assert (made["key_env"], made["has_key"]) == ("OPENAI_API_KEY", True)
    moved = await j(await client.patch("/opencode/providers/openai", json={"base_url": fake_llm.url + "/v1"}), 200)
    assert (moved["key_env"], moved["has_key"]) == (None, False)
    await j(await client.get("/opencode/providers/openai/models"), 200)
    assert "Authorization" not in fake_llm.last.headers
    kept = await j(await client.patch("/opencode/providers/openai", json={"base_url": fake_llm.url + "/v1",
                                                                             "key_env": "OPENAI_API_KEY"}), 200)
    assert kept["key_env"] == "OPENAI_API_KEY"
    await j(await client.get("/opencode/providers/openai/models"), 200)
    assert fake_llm.last.headers["Authorization"] == f"Bearer {KEY}"


async def test_prices_and_budgets_must_be_finite_and_sane(client: Any) -> None:
    """An infinite price made a reply's cost infinite, stored as null: the session could not be
    read again after a restart. JSON has no NaN or Infinity; a price has a ceiling."""
    for raw in ('{"models": {"m": {"input_price": 1e308}}}', '{"models": {"m": {"output_price": Infinity}}}',
                '{"models": {"m": {"input_price": NaN}}}', '{"models": {"m": {"context_tokens": 1e400}}}'):
        r = await client.patch("/opencode/providers/ollama", data=raw, headers={"Content-Type": "application/json"})
        body = await j(r, 400)
        assert body["error"]["code"] in ("bad_json", "validation_error"), body
    sid = (await j(await client.post("/opencode/sessions", json={}), 201))["id"]
    r = await client.patch(f"/opencode/sessions/{sid}", data='{"budget": {"max_cost": Infinity}}',
                           headers={"Content-Type": "application/json"})
    assert (await j(r, 400))["error"]["code"] == "bad_json"
    ok = await j(await client.patch("/opencode/providers/ollama", json={"models": {"m": {"input_price": 75.0}}}), 200)
    assert ok["models"]["m"]["input_price"] == 75.0


async def test_extra_headers_are_checked_and_a_key_goes_through_the_key_route(
        client: Any, fake_llm: FakeLLMServer) -> None:
    """A CRLF in a header value was stored and made every request to the provider a 500; a key put
    in `extra.headers` was listed back in full. Azure's `api-key` header is `extra.key_header`."""
    base = {"kind": "openai", "base_url": fake_llm.url + "/v1"}
    for headers in ({"X-A": "a\r\nX-Injected: 1"}, {"bad name": "x"}, {"X-A": 5}, {"api-key": KEY},
                    {"Authorization": f"Bearer {KEY}"}):
        body = await j(await client.post("/opencode/providers", json={"name": "h", **base, "extra": {"headers": headers}}), 400)
        assert body["error"]["details"] == {"field": "extra"} and KEY not in json.dumps(body), body
    await j(await client.get("/opencode/providers/h"), 404)
    await j(await client.post("/opencode/providers", json={
        "name": "azure", **base, "extra": {"headers": {"X-Title": "Opencode"}, "key_header": "api-key"}}), 201)
    await j(await client.patch("/opencode/providers/azure", json={"extra": {"headers": {"x-api-key": KEY}}}), 400)
    await j(await client.put("/opencode/providers/azure/key", json={"key": KEY}), 200)
    await j(await client.get("/opencode/providers/azure/models"), 200)
    sent = fake_llm.last.headers
    assert (sent["api-key"], sent["X-Title"]) == (KEY, "Opencode") and "Authorization" not in sent
    assert KEY not in await (await client.get("/opencode/providers")).text()


async def test_cached_tokens_are_counted_priced_and_budgeted_through_the_service(client: Any,
                                                                                 fake_llm: FakeLLMServer) -> None:
    """An Anthropic profile with a warm prompt cache: each reply's usage and the session's totals
    carry the cached counts, the cost prices reads at 0.1x and writes at 1.25x the input price (the
    kind's default: the profile sets no cache prices), and the money budget follows that cost.
    Counted at the full input price the same chat costs $0.63 and its $0.50 budget would refuse
    the third message; priced right it costs $0.44, and the third reply is capped at what is
    left. Each request marks the cache where it ends, and no earlier turn keeps a mark."""
    await j(await client.post("/opencode/providers", json={
        "name": "claude", "kind": "anthropic", "base_url": fake_llm.url + "/anthropic", "default_model": "claude-test",
        "models": {"claude-test": {"input_price": 3.0, "output_price": 15.0}}}), 201)
    await j(await client.put("/opencode/providers/claude/key", json={"key": KEY}), 200)
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["assistant"], "provider": "claude"}),
                   201))["id"]
    await j(await client.patch(f"/opencode/sessions/{sid}", json={"budget": {"max_cost": 0.5}}), 200)
    ws = await session_socket(client, sid, panel=True)
    fake_llm.push(Reply(text="one", input_tokens=100_000, cache_write_tokens=99_000, output_tokens=1000),
                  Reply(text="two", input_tokens=101_000, cache_read_tokens=99_000, cache_write_tokens=1500,
                        output_tokens=1000),
                  Reply(text="three", input_tokens=102_000, cache_read_tokens=100_500, cache_write_tokens=1000,
                        output_tokens=500))
    for text in ("first", "second"):
        run = (await reply_to(ws, sid, text))["data"]["run"]
        assert run["status"] == "completed"
        counted = await ws.until(lambda e: e["type"] == "usage.updated" and e["data"]["message_id"] == run["message_id"])
    totals = (await j(await client.get(f"/opencode/sessions/{sid}"), 200))["usage"]
    first_cost = (1000 * 3.0 + 99_000 * 3.75 + 1000 * 15.0) / 1e6
    second_cost = (500 * 3.0 + 99_000 * 0.3 + 1500 * 3.75 + 1000 * 15.0) / 1e6
    assert totals == {"input_tokens": 201_000, "output_tokens": 2000, "cache_read_tokens": 99_000,
                      "cache_write_tokens": 100_500, "cost": pytest.approx(first_cost + second_cost)}
    assert counted["data"]["usage"] == totals
    replies = [e["data"]["message"] for e in ws.of_type("message.completed") if e["data"]["message"]["role"] == "assistant"]
    assert replies[0]["usage"]["cache_write_tokens"] == 99_000 and replies[1]["usage"]["cache_read_tokens"] == 99_000
    lines = [e["data"]["message"] for e in ws.of_type("log")]
    assert any("tokens: 101000 in (99000 cached, 1500 written to the cache), 1000 out" in line for line in lines), lines
    final = await reply_to(ws, sid, "third")
    assert final["data"]["run"]["status"] == "completed", final
    left = 0.5 - first_cost - second_cost
    assert fake_llm.last.body["max_tokens"] == int(left / 15.0 * 1_000_000)  # under 4,096: capped
    for request in fake_llm.requests[-3:]:
        marks = json.dumps(request.body).count("cache_control")
        last = request.body["messages"][-1]["content"][-1]
        # The system prompt, the last turn, and (from the second send on) where the send before ended.
        expected = 2 if len(request.body["messages"]) == 1 else 3
        assert marks == expected and "cache_control" in last and "cache_control" in request.body["system"][0]
    assert KEY not in json.dumps(ws.events)


async def test_a_patch_of_models_replaces_the_declared_models_whole(client: Any, fake_llm: FakeLLMServer) -> None:
    """What the panel's Models section relies on: `models` in a PATCH is the profile's whole table
    (a model left out is no longer declared, and gets the caps an undeclared model gets), each
    model's caps are taken whole (a field left out is `ModelCaps`' default, not the old value), a
    patch without `models` (or with `null`) keeps them, and a refused value names its field and
    changes nothing. The model list reads the new table at once."""
    full = {"tools": True, "vision": False, "context_tokens": 8192, "input_price": 1.0, "output_price": 2.0,
            "cache_read_price": None, "cache_write_price": None}
    await j(await client.post("/opencode/providers", json={
        "name": "lm", "kind": "openai", "base_url": fake_llm.url + "/v1", "default_model": "gpt-a",
        "models": {"gpt-a": full, "gpt-b": {**full, "vision": True}}}), 201)
    patched = await j(await client.patch("/opencode/providers/lm", json={"models": {"gpt-a": {"context_tokens": 16384}}}), 200)
    assert patched["models"] == {"gpt-a": {**full, "context_tokens": 16384, "input_price": 0.0, "output_price": 0.0}}
    for keeps in ({"default_model": "gpt-b"}, {"models": None}):
        assert (await j(await client.patch("/opencode/providers/lm", json=keeps), 200))["models"] == patched["models"]
    listed = {m["id"]: m["caps"] for m in (await j(await client.get("/opencode/providers/lm/models"), 200))["models"]}
    assert listed["gpt-a"]["context_tokens"] == 16384
    # No longer declared: what the server uses for a model it knows nothing of (openai's cache shares filled in).
    assert listed["gpt-b"] == {**full, "context_tokens": 32_000, "input_price": 0.0, "output_price": 0.0,
                               "cache_read_price": 0.0, "cache_write_price": 0.0}
    refused = await j(await client.patch("/opencode/providers/lm", json={"models": {"gpt-a": {"context_tokens": 100}}}), 400)
    assert refused["error"]["code"] == "validation_error"
    assert refused["error"]["details"]["errors"][0]["loc"] == ["models", "gpt-a", "context_tokens"]
    assert (await j(await client.get("/opencode/providers/lm"), 200))["models"] == patched["models"]
    assert (await j(await client.patch("/opencode/providers/lm", json={"models": {}}), 200))["models"] == {}


@pytest.mark.parametrize("models", [{"": {}}, {"m" * 201: {}}, {f"m{i}": {} for i in range(1001)}])
async def test_a_declared_model_needs_an_id_and_the_table_a_bound(client: Any, models: dict[str, Any]) -> None:
    """An empty id declared caps no model can have (the panel refuses one; the route did not), a
    10 kB id or a table of thousands made every listing and every run's model lookup carry it."""
    for request in (client.post("/opencode/providers", json={"name": "lm2", "kind": "openai", "models": models}),
                    client.patch("/opencode/providers/openai", json={"models": models})):
        refused = await j(await request, 400)
        assert refused["error"]["code"] == "validation_error"
        assert refused["error"]["details"]["errors"][0]["loc"][0] == "models"
    assert (await client.get("/opencode/providers/lm2")).status == 404


# --------------------------------------------------------------------------- revisions (If-Match)


async def loaded(client: Any, name: str) -> tuple[dict[str, Any], str]:
    """A profile as a panel loads it, and the ETag it came with (its revision, quoted)."""
    r = await client.get(f"/opencode/providers/{name}")
    profile = await j(r, 200)
    assert r.headers["ETag"] == f'"{profile["revision"]}"'
    return profile, r.headers["ETag"]


async def test_a_change_against_a_stale_revision_is_a_409_and_nothing_is_written(client: Any, data_dir: Any) -> None:
    """Two panels loaded the profile; the first saves, then the second: its save would have
    replaced the first one's models with its own table. With the revision it loaded it is refused,
    saying what to do, and the stored profile (and the file) stay as the first left them."""
    first, etag = await loaded(client, "ollama")
    saved = await client.patch("/opencode/providers/ollama", json={"models": {"a": {"context_tokens": 4096}}},
                               headers={"If-Match": etag})
    body = await j(saved, 200)
    assert body["revision"] != first["revision"] and saved.headers["ETag"] == f'"{body["revision"]}"'
    on_disk = (data_dir / "providers.json").read_bytes()
    for stale in (client.patch("/opencode/providers/ollama", json={"models": {"b": {}}}, headers={"If-Match": etag}),
                  client.delete("/opencode/providers/ollama", headers={"If-Match": etag})):
        refused = (await j(await stale, 409))["error"]
        assert refused["code"] == "profile_changed"
        assert "changed elsewhere since you loaded it; reload it and apply your change again" in refused["message"]
        assert refused["details"] == {"provider": "ollama", "revision": body["revision"]}
    assert (data_dir / "providers.json").read_bytes() == on_disk
    now, _ = await loaded(client, "ollama")
    assert now == body and list(now["models"]) == ["a"]
    # Reloaded, the change applies; a delete at the revision it read, too.
    again = await j(await client.patch("/opencode/providers/ollama", json={"models": {**now["models"], "b": {}}},
                                       headers={"If-Match": f'"{now["revision"]}"'}), 200)
    assert list(again["models"]) == ["a", "b"]
    await j(await client.delete("/opencode/providers/ollama", headers={"If-Match": f'"{again["revision"]}"'}), 200)
    await j(await client.get("/opencode/providers/ollama"), 404)


async def test_without_if_match_a_change_applies_as_before(client: Any) -> None:
    """curl scripts written before revisions: no header (or `*`) is no check. A header listing
    several tags passes if one is the revision, and a weak one (a compressing proxy's) matches."""
    first, etag = await loaded(client, "ollama")
    await j(await client.patch("/opencode/providers/ollama", json={"default_model": "x"}), 200)
    await j(await client.patch("/opencode/providers/ollama", json={"default_model": "y"},
                               headers={"If-Match": "*"}), 200)
    now, current = await loaded(client, "ollama")
    assert now["default_model"] == "y" and current != etag
    for header in (f"{etag}, {current}", f"W/{current}", now["revision"]):
        await j(await client.patch("/opencode/providers/ollama", json={"default_model": "y"},
                                   headers={"If-Match": header}), 200)
    refused = await j(await client.patch("/opencode/providers/ollama", json={"default_model": "z"},
                                         headers={"If-Match": " , "}), 400)
    assert refused["error"]["code"] == "validation_error"
    assert (await loaded(client, "ollama"))[0]["default_model"] == "y"


async def test_the_listing_and_every_answer_of_one_profile_carry_its_revision(client: Any) -> None:
    """The listing's `revision` is what If-Match sends back (presets, never stored, have none);
    storing or removing a key leaves it: the key is not what a form's pending edit could lose."""
    listing = await j(await client.get("/opencode/providers"), 200)
    profile, etag = await loaded(client, "ollama")
    assert [p["revision"] for p in listing["providers"]] == [profile["revision"]]
    assert {p["revision"] for p in listing["presets"]} == {None}
    created = await client.post("/opencode/providers", json={"name": "lm", "kind": "openai",
                                                               "base_url": "http://127.0.0.1:1/v1"})
    assert created.headers["ETag"] == f'"{(await j(created, 201))["revision"]}"'
    before, lm_etag = await loaded(client, "lm")
    keyed = await client.put("/opencode/providers/lm/key", json={"key": KEY})
    assert (await j(keyed, 200))["revision"] == before["revision"] and keyed.headers["ETag"] == lm_etag
    await j(await client.delete("/opencode/providers/lm/key"), 200)
    await j(await client.patch("/opencode/providers/lm", json={"default_model": "m"},
                               headers={"If-Match": lm_etag}), 200)


async def test_two_changes_against_one_revision_racing_in_the_server_one_passes(client: Any, service: Any) -> None:
    """Each waits on the disk (the write slowed down here so that they overlap): the check and the
    write are one step under the profiles' lock, so the second sees the first's change."""
    _, etag = await loaded(client, "ollama")
    save = service.profiles._save

    async def slow_save(profiles: Any) -> None:
        await asyncio.sleep(0.05)
        await save(profiles)

    service.profiles._save = slow_save
    answers = await asyncio.gather(*(
        client.patch("/opencode/providers/ollama", json={"models": {model: {}}}, headers={"If-Match": etag})
        for model in ("from-tab-1", "from-tab-2")))
    statuses = sorted(r.status for r in answers)
    assert statuses == [200, 409], [await r.text() for r in answers]
    winner = await next(r for r in answers if r.status == 200).json()
    assert (await loaded(client, "ollama"))[0]["models"] == winner["models"]


async def test_a_revision_survives_a_restart(aiohttp_client: Any, make_app: Any) -> None:
    """A panel left open across a server restart still saves with the revision it loaded, and one
    that loaded before a change made before the restart is still refused."""
    first = await aiohttp_client(make_app())
    old, old_etag = await loaded(first, "ollama")
    await j(await first.patch("/opencode/providers/ollama", json={"default_model": "a"},
                              headers={"If-Match": old_etag}), 200)
    profile, etag = await loaded(first, "ollama")
    await first.close()
    second = await aiohttp_client(make_app())
    assert await loaded(second, "ollama") == (profile, etag)
    for header, status in ((old_etag, 409), (etag, 200)):
        await j(await second.patch("/opencode/providers/ollama", json={"default_model": "b"},
                                   headers={"If-Match": header}), status)


async def test_openapi_describes_if_match_the_409_and_the_etag(client: Any) -> None:
    doc = await j(await client.get("/opencode/openapi.json"), 200)
    one = doc["paths"]["/opencode/providers/{name}"]
    for method in ("patch", "delete"):
        assert [p["name"] for p in one[method]["parameters"] if p["in"] == "header"] == ["If-Match"]
        assert one[method]["responses"]["409"]["description"].startswith("profile_changed")
    assert "ETag" in one["get"]["responses"]["200"]["headers"]
    assert "revision" in doc["components"]["schemas"]["ProviderProfile"]["properties"]
    assert "providers.if_match" in (await j(await client.get("/opencode/version"), 200))["capabilities"]
