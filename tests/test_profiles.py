"""ProviderProfiles: the seed of a fresh install, CRUD, persistence, caps and prices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fakes.llm_servers import FakeLLMServer, fake_llm  # noqa: F401 - fixture
from opencode_agent.core.errors import BadRequest, Conflict, NotFound
from opencode_agent.core.protocol import ModelCaps, ProviderCreate, ProviderPatch
from opencode_agent.core.providers.profiles import ProviderProfiles, cost_of, family_caps, presets
from opencode_agent.core.providers.registry import provider_for
from opencode_agent.core.secrets import SecretStore


async def open_profiles(data_dir: Path, env: dict[str, str] | None = None) -> ProviderProfiles:
    env = env or {}
    secrets = SecretStore(data_dir, env=env)
    await secrets.load()
    profiles = ProviderProfiles(data_dir, secrets, env=env)
    await profiles.load()
    return profiles


async def test_fresh_install_has_ollama_only(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    listed = await profiles.list()
    assert [(p.name, p.kind, p.base_url, p.has_key) for p in listed] == [
        ("ollama", "ollama", "http://127.0.0.1:11434", False)]
    assert listed[0].extra["keep_alive"] == "30m"
    saved = json.loads((data_dir / "providers.json").read_text())
    assert [p["name"] for p in saved["profiles"]] == ["ollama"]
    assert "has_key" not in saved["profiles"][0]


async def test_fresh_install_adds_profiles_for_keys_in_the_environment(data_dir: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-env-openai-0123456789abcd", "ANTHROPIC_API_KEY": "sk-ant-env-0123456789wxyz"}
    profiles = await open_profiles(data_dir, env)
    listed = {p.name: p for p in await profiles.list()}
    assert list(listed) == ["openai", "anthropic", "ollama"]
    assert (listed["openai"].has_key, listed["openai"].key_hint) == (True, "…abcd")
    assert (listed["anthropic"].has_key, listed["anthropic"].key_hint) == (True, "…wxyz")
    assert "sk-env" not in (data_dir / "providers.json").read_text()
    assert all("sk-env" not in p.model_dump_json() for p in listed.values())


async def test_a_deleted_seed_profile_stays_deleted(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    await profiles.delete("ollama")
    again = await open_profiles(data_dir)
    assert await again.list() == []


async def test_presets_are_templates(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    by_name = {p.name: p for p in profiles.presets()}
    assert {"openai", "anthropic", "ollama", "lmstudio", "vllm", "openrouter", "deepseek", "gemini"} <= set(by_name)
    assert by_name["lmstudio"].base_url == "http://127.0.0.1:1234/v1" and by_name["lmstudio"].kind == "openai"
    assert by_name["vllm"].base_url == "http://127.0.0.1:8000/v1"
    assert by_name["gemini"].base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    assert by_name["anthropic"].base_url == "https://api.anthropic.com"
    for preset in presets():
        if preset.models:
            assert preset.default_model in preset.models
    # Servers on this machine load the model before their first byte: 120 s would be a stall.
    local = {p.name: p.extra.get("read_timeout") for p in presets() if "127.0.0.1" in p.base_url}
    assert local == {"ollama": 600, "lmstudio": 600, "vllm": 600, "llamacpp": 600}
    assert by_name["openai"].extra.get("read_timeout") is None


async def test_create_fills_defaults_from_the_preset(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    work = await profiles.create(ProviderCreate(name="work", kind="openai"))
    assert (work.base_url, work.default_model, work.key_env) == ("https://api.openai.com/v1", "gpt-4.1-mini", "OPENAI_API_KEY")
    assert "gpt-4o" in work.models
    router = await profiles.create(ProviderCreate(name="openrouter", kind="openai"))
    assert router.base_url == "https://openrouter.ai/api/v1" and router.key_env == "OPENROUTER_API_KEY"
    # A custom server gets the URL it was given, and none of api.openai.com's models or key variable.
    box = await profiles.create(ProviderCreate(name="box", kind="openai", base_url="http://10.0.0.5:8000/v1"))
    assert (box.models, box.key_env, box.default_model) == ({}, None, "")
    remote = await profiles.create(ProviderCreate(name="gpu", kind="ollama", base_url="http://10.0.0.9:11434"))
    assert remote.extra == {"keep_alive": "30m", "options": {"num_ctx": 16384}, "read_timeout": 600}


async def test_names_and_urls_are_checked(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    with pytest.raises(Conflict):
        await profiles.create(ProviderCreate(name="ollama", kind="ollama"))
    with pytest.raises(BadRequest):
        await profiles.create(ProviderCreate(name="bad", kind="openai", base_url="ftp://x"))
    for call in (profiles.get("nope"), profiles.delete("nope"), profiles.patch("nope", ProviderPatch()),
                 profiles.caps("nope", "m")):
        with pytest.raises(NotFound):
            await call


async def test_patch_replaces_only_the_fields_it_sets(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    await profiles.create(ProviderCreate(name="work", kind="openai", key_env="WORK_KEY"))
    patched = await profiles.patch("work", ProviderPatch(default_model="gpt-4o", models={"gpt-4o": ModelCaps(vision=False)}))
    assert patched.default_model == "gpt-4o" and patched.models == {"gpt-4o": ModelCaps(vision=False)}
    assert patched.key_env == "WORK_KEY" and patched.base_url == "https://api.openai.com/v1"
    cleared = await profiles.patch("work", ProviderPatch.model_validate({"key_env": None}))
    assert cleared.key_env is None
    with pytest.raises(BadRequest):
        await profiles.patch("work", ProviderPatch(base_url="not a url"))
    reopened = await open_profiles(data_dir)
    assert (await reopened.get("work")).default_model == "gpt-4o"


async def test_a_revision_names_the_stored_content_and_is_not_stored(data_dir: Path) -> None:
    """Why a digest rather than a counter: a profile deleted and made again differently never
    matches a revision read before (a counter would be back at 1), while the same content has the
    same revision (a change made against it loses nothing). Nothing is added to providers.json."""
    profiles = await open_profiles(data_dir)
    made = await profiles.create(ProviderCreate(name="work", kind="openai", default_model="a"))
    assert made.revision and made.revision == (await profiles.get("work")).revision
    await profiles.delete("work", if_match={made.revision})
    again = await profiles.create(ProviderCreate(name="work", kind="openai", default_model="b"))
    with pytest.raises(Conflict) as refused:
        await profiles.patch("work", ProviderPatch(default_model="c"), if_match={made.revision})
    assert refused.value.code == "profile_changed" and refused.value.status == 409
    back = await profiles.patch("work", ProviderPatch(default_model="a"), if_match={again.revision})
    assert back.revision == made.revision
    assert "revision" not in (data_dir / "providers.json").read_text()


async def test_delete_forgets_the_stored_key(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    await profiles.create(ProviderCreate(name="work", kind="anthropic"))
    await profiles.secrets.set("work", "sk-ant-stored-key-0123456789")
    assert (await profiles.get("work")).key_hint == "…6789"
    await profiles.delete("work")
    await profiles.create(ProviderCreate(name="work", kind="anthropic"))
    assert (await profiles.get("work")).has_key is False


async def test_caps_and_prices(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    await profiles.create(ProviderCreate(name="claude", kind="anthropic"))
    assert await profiles.price("claude", "claude-sonnet-4-5") == (3.0, 15.0)
    assert (await profiles.caps("claude", "claude-sonnet-4-5")).vision is True
    # The ids a provider's model list gives: a dated snapshot, Gemini's "models/" prefix.
    assert await profiles.price("claude", "claude-sonnet-4-5-20250929") == (3.0, 15.0)
    await profiles.create(ProviderCreate(name="oai", kind="openai"))
    assert await profiles.price("oai", "gpt-4.1-mini-2025-04-14") == (0.4, 1.6)
    assert await profiles.price("oai", "gpt-4o-mini") == (0.15, 0.6)  # a name, not a snapshot of gpt-4o
    await profiles.create(ProviderCreate(name="gem", kind="openai", base_url="https://generativelanguage.googleapis.com/v1beta/openai"))
    assert await profiles.price("gem", "models/gemini-2.5-pro") == (1.25, 10.0)
    # Not declared: family defaults (vision for Claude), unknown price.
    new = await profiles.caps("claude", "claude-future-9")
    assert (new.vision, new.context_tokens, new.input_price) == (True, 200_000, 0.0)
    # Overridden in the profile.
    await profiles.patch("claude", ProviderPatch(models={"claude-sonnet-4-5": ModelCaps(input_price=2.0, output_price=10.0)}))
    assert await profiles.price("claude", "claude-sonnet-4-5") == (2.0, 10.0)
    # Emptied profile models fall back to the preset of the same service.
    await profiles.patch("claude", ProviderPatch(models={}))
    assert await profiles.price("claude", "claude-haiku-4-5") == (1.0, 5.0)
    # Ollama holds `options.num_ctx` tokens (the preset's 16,384), whatever the model could take.
    assert await profiles.caps("ollama", "some-new-model") == ModelCaps(context_tokens=16_384)
    assert family_caps("qwen2.5vl:7b").vision and family_caps("openrouter/google/gemini-2.5-pro").vision
    assert cost_of(ModelCaps(input_price=3.0, output_price=15.0), 1_000_000, 200_000) == pytest.approx(6.0)


async def test_ollama_history_is_trimmed_to_the_context_ollama_runs_with(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    assert (await profiles.caps("ollama", "llama3.1:8b")).context_tokens == 16_384  # declared 131,072
    await profiles.patch("ollama", ProviderPatch(extra={"options": {"num_ctx": 65_536}}))
    assert (await profiles.caps("ollama", "llama3.1:8b")).context_tokens == 65_536
    assert (await profiles.caps("ollama", "qwen3:8b")).context_tokens == 40_960  # the model's own is smaller
    # Without num_ctx the server's own setting applies, which Opencode cannot see: the declared size.
    await profiles.patch("ollama", ProviderPatch(extra={}))
    assert (await profiles.caps("ollama", "llama3.1:8b")).context_tokens == 131_072


async def test_a_corrupt_profiles_file_is_moved_aside(data_dir: Path, caplog: Any) -> None:
    (data_dir / "providers.json").write_text("{not json")
    profiles = await open_profiles(data_dir)
    assert [p.name for p in await profiles.list()] == ["ollama"]
    assert len(list(data_dir.glob("providers.json.corrupt-*"))) == 1
    assert "not a valid profiles file" in caplog.text


async def test_invalid_entries_are_skipped(data_dir: Path) -> None:
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "ok", "kind": "ollama", "base_url": "http://127.0.0.1:11434"},
        {"name": "bad name!", "kind": "openai", "base_url": "x"},
    ]}))
    profiles = await open_profiles(data_dir)
    assert [p.name for p in await profiles.list()] == ["ok"]


async def test_a_key_saved_in_extra_headers_before_they_were_checked_is_listed_as_a_hint(data_dir: Path) -> None:
    key = "0123456789abcdef0123456789abcdef"
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "azure", "kind": "openai", "base_url": "https://x.openai.azure.com/openai/v1",
         "extra": {"headers": {"api-key": key, "X-Title": "Opencode"}}},
    ]}))
    profiles = await open_profiles(data_dir)
    listed = (await profiles.list())[0]
    assert listed.extra["headers"] == {"api-key": "…cdef", "X-Title": "Opencode"}
    assert key not in (await profiles.get("azure")).model_dump_json()
    assert (await profiles.stored("azure")).extra["headers"]["api-key"] == key


async def test_a_provider_sends_a_legacy_credential_header_as_it_was_saved(data_dir: Path, fake_llm: FakeLLMServer) -> None:
    """Listing masks it; the provider must not be built from the listing (it sent the hint)."""
    key = "0123456789abcdef0123456789abcdef"
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "proxy", "kind": "openai", "base_url": fake_llm.url + "/v1",
         "extra": {"headers": {"Authorization": f"Bearer {key}"}}},
    ]}))
    profiles = await open_profiles(data_dir)
    async with aiohttp.ClientSession() as http:
        await (await provider_for("proxy", profiles, http)).list_models()
    assert fake_llm.last.headers["Authorization"] == f"Bearer {key}"


async def test_caps_saved_before_their_limits_load_clamped_and_stay(data_dir: Path) -> None:
    """A context or a price over today's ceiling (or an infinite price, which was accepted) made
    the profile fail to load; the next save then erased it."""
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "big", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": {
            "huge": {"context_tokens": 200_000_000, "input_price": float("inf"), "output_price": float("nan")}}},
    ]}))
    profiles = await open_profiles(data_dir)
    caps = (await profiles.get("big")).models["huge"]
    assert (caps.context_tokens, caps.input_price, caps.output_price) == (100_000_000, 100_000.0, 0.0)
    await profiles.create(ProviderCreate(name="another", kind="ollama"))
    assert [p["name"] for p in json.loads((data_dir / "providers.json").read_text())["profiles"]] == ["big", "another"]


def test_cost_prices_plain_input_cache_reads_and_cache_writes_apart() -> None:
    """`input_tokens` is all the prompt's: of them, cache reads and writes go at their own
    prices, the rest at `input_price`. Counted all at the input price, a long chat with a warm
    cache cost 10 times what Anthropic bills."""
    sonnet = ModelCaps(input_price=3.0, output_price=15.0, cache_read_price=0.3, cache_write_price=3.75)
    # 100k prompt tokens: 90k read from the cache, 8k written to it, 2k plain; 1k out.
    assert cost_of(sonnet, 100_000, 1_000, 90_000, 8_000) == pytest.approx(
        (2_000 * 3.0 + 90_000 * 0.3 + 8_000 * 3.75 + 1_000 * 15.0) / 1e6)
    assert cost_of(sonnet, 100_000, 1_000) == pytest.approx((100_000 * 3.0 + 1_000 * 15.0) / 1e6)
    # No cache price declared: the input price, never an undeclared discount.
    plain = ModelCaps(input_price=2.0, output_price=8.0)
    assert cost_of(plain, 10_000, 0, 6_000, 1_000) == pytest.approx(10_000 * 2.0 / 1e6)
    # Counts a provider got wrong (more cached than the prompt) never make the plain part negative.
    assert cost_of(sonnet, 100, 0, 300, 0) == pytest.approx(300 * 0.3 / 1e6)


async def test_cache_prices_are_the_presets_else_the_kinds_usual_share(data_dir: Path) -> None:
    profiles = await open_profiles(data_dir)
    await profiles.create(ProviderCreate(name="claude", kind="anthropic"))
    await profiles.create(ProviderCreate(name="oai", kind="openai"))
    await profiles.create(ProviderCreate(name="deepseek", kind="openai"))
    sonnet = await profiles.caps("claude", "claude-sonnet-4-5-20250929")
    assert (sonnet.cache_read_price, sonnet.cache_write_price) == (0.3, 3.75)  # Anthropic's published figures
    mini = await profiles.caps("oai", "gpt-4.1-mini")
    assert (mini.cache_read_price, mini.cache_write_price) == (0.1, 0.4)  # writes cost what input does
    assert (await profiles.caps("deepseek", "deepseek-chat")).cache_read_price == 0.028
    # A model the profile prices without cache prices: the kind's multipliers of its input price.
    await profiles.patch("claude", ProviderPatch(models={"claude-next": ModelCaps(input_price=4.0, output_price=20.0)}))
    caps = await profiles.caps("claude", "claude-next")
    assert (caps.cache_read_price, caps.cache_write_price) == (0.4, 5.0)
    await profiles.patch("oai", ProviderPatch(models={"gpt-next": ModelCaps(input_price=1.0)}))
    caps = await profiles.caps("oai", "gpt-next")
    assert (caps.cache_read_price, caps.cache_write_price) == (0.5, 1.0)
    # Ollama reports no cached tokens: nothing is filled in; what is listed is what was declared.
    assert (await profiles.caps("ollama", "qwen3:8b")).cache_read_price is None
    assert (await profiles.get("claude")).models["claude-next"].cache_read_price is None
    for preset in presets():
        for model, declared in preset.models.items():
            if declared.cache_read_price is not None:
                assert declared.cache_read_price < declared.input_price, (preset.name, model)


async def test_a_profile_saved_before_cache_prices_loads_and_cache_prices_are_checked(data_dir: Path) -> None:
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "old", "kind": "anthropic", "base_url": "https://api.anthropic.com", "models": {
            "claude-x": {"tools": True, "vision": True, "context_tokens": 200_000, "input_price": 3.0,
                         "output_price": 15.0}}},
        {"name": "over", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": {
            "m": {"cache_read_price": float("inf"), "cache_write_price": float("nan")}}},
    ]}))
    profiles = await open_profiles(data_dir)
    caps = await profiles.caps("old", "claude-x")
    assert (caps.input_price, caps.cache_read_price, caps.cache_write_price) == (3.0, 0.3, 3.75)
    over = (await profiles.get("over")).models["m"]
    assert (over.cache_read_price, over.cache_write_price) == (100_000.0, 0.0)
    for bad in ({"cache_read_price": -1.0}, {"cache_write_price": 1e9}):
        with pytest.raises(ValueError):
            ModelCaps.model_validate(bad)
