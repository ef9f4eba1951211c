"""Provider profiles: the presets Opencode knows, and the user's named profiles on disk.

A preset is a template (base URL, key variable, a few models' `ModelCaps` with prices in USD per
million tokens, cached input's and cache writes' included, as published in 2025; every value can
be overridden in the profile). Presets:
openai, anthropic, ollama, lmstudio, vllm, llamacpp, openrouter, deepseek, gemini, groq.

`ProviderProfiles` keeps the user's profiles in `<data_dir>/providers.json`, rewritten atomically
(temp file + `os.replace`, off the event loop). A fresh install (no file yet) is seeded with one
ready `ollama` profile (local, needs no key) plus one profile for each hosted preset whose key
variable is set in the environment (`OPENAI_API_KEY` → `openai`, `ANTHROPIC_API_KEY` →
`anthropic`, ...), and the seed is written at once, so a profile the user deletes stays deleted.
The other presets are offered as templates (`presets()`), never as live profiles.

Listings carry `has_key` and `key_hint` from the `SecretStore`, never a key, and each profile's
`revision` (`revision_of`). Unknown names raise `NotFound`, duplicates `Conflict`, a change made
against a revision that is no longer the stored one `Conflict` with code `profile_changed`.
Deleting a profile also forgets its stored key.
Imports protocol, errors and secrets only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Collection, Mapping
from urllib.parse import urlsplit

from pydantic import ValidationError

from ..errors import BadRequest, Conflict, NotFound
from ..protocol import MAX_CONTEXT_TOKENS, MAX_PRICE, ModelCaps, ProviderCreate, ProviderPatch, ProviderProfile
from ..secrets import SecretStore, atomic_write_text, key_hint, usual_env_var

log = logging.getLogger("opencode.providers.profiles")

PROFILES_FILE = "providers.json"
# What a listing adds to a stored profile; never written to the file, never part of a revision.
_NOT_STORED = frozenset({"has_key", "key_hint", "revision"})


def _caps(vision: bool, context: int, input_price: float = 0.0, output_price: float = 0.0, tools: bool = True,
          cached: float | None = None, cache_write: float | None = None) -> ModelCaps:
    return ModelCaps(tools=tools, vision=vision, context_tokens=context, input_price=input_price,
                     output_price=output_price, cache_read_price=cached, cache_write_price=cache_write)


def _preset(name: str, kind: str, base_url: str, default_model: str = "", key_env: str | None = None,
            models: dict[str, ModelCaps] | None = None, extra: dict[str, Any] | None = None) -> ProviderProfile:
    return ProviderProfile(
        name=name, kind=kind, base_url=base_url, default_model=default_model,  # type: ignore[arg-type]
        key_env=key_env, models=models or {}, extra=dict(extra or {}),
    )


# A server on this machine loads the model before its first byte: minutes for a large one from
# disk, more while ComfyUI holds the GPU's memory. The default 120 s without data would call that
# a stall.
LOCAL_SERVER_EXTRA: dict[str, Any] = {"read_timeout": 600}


def presets() -> list[ProviderProfile]:
    """Fresh copies of every preset, in display order."""
    return [
        _preset("openai", "openai", "https://api.openai.com/v1", "gpt-4.1-mini", "OPENAI_API_KEY", {
            "gpt-4.1": _caps(True, 1_047_576, 2.0, 8.0, cached=0.5),
            "gpt-4.1-mini": _caps(True, 1_047_576, 0.4, 1.6, cached=0.1),
            "gpt-4o": _caps(True, 128_000, 2.5, 10.0, cached=1.25),
            "gpt-4o-mini": _caps(True, 128_000, 0.15, 0.6, cached=0.075),
            "o4-mini": _caps(True, 200_000, 1.1, 4.4, cached=0.275),
        }),
        _preset("anthropic", "anthropic", "https://api.anthropic.com", "claude-sonnet-4-5", "ANTHROPIC_API_KEY", {
            "claude-sonnet-4-5": _caps(True, 200_000, 3.0, 15.0, cached=0.3, cache_write=3.75),
            "claude-opus-4-1": _caps(True, 200_000, 15.0, 75.0, cached=1.5, cache_write=18.75),
            "claude-haiku-4-5": _caps(True, 200_000, 1.0, 5.0, cached=0.1, cache_write=1.25),
            "claude-3-5-haiku-latest": _caps(False, 200_000, 0.8, 4.0, cached=0.08, cache_write=1.0),
        }),
        _preset("ollama", "ollama", "http://127.0.0.1:11434", "qwen3:8b", None, {
            "qwen3:8b": _caps(False, 40_960),
            "llama3.1:8b": _caps(False, 131_072),
            "qwen2.5vl:7b": _caps(True, 125_000, tools=False),
            "gemma3:12b": _caps(True, 131_072, tools=False),
        }, {"keep_alive": "30m", "options": {"num_ctx": 16_384}, **LOCAL_SERVER_EXTRA}),
        _preset("lmstudio", "openai", "http://127.0.0.1:1234/v1", extra=LOCAL_SERVER_EXTRA),
        _preset("vllm", "openai", "http://127.0.0.1:8000/v1", extra=LOCAL_SERVER_EXTRA),
        _preset("llamacpp", "openai", "http://127.0.0.1:8080/v1", extra=LOCAL_SERVER_EXTRA),
        _preset("openrouter", "openai", "https://openrouter.ai/api/v1", "openai/gpt-4.1-mini", "OPENROUTER_API_KEY", {
            "openai/gpt-4.1-mini": _caps(True, 1_047_576, 0.4, 1.6, cached=0.1),
            "anthropic/claude-sonnet-4.5": _caps(True, 1_000_000, 3.0, 15.0, cached=0.3, cache_write=3.75),
            "google/gemini-2.5-flash": _caps(True, 1_048_576, 0.3, 2.5, cached=0.03),
        }, {"headers": {"X-Title": "Opencode"}}),
        _preset("deepseek", "openai", "https://api.deepseek.com/v1", "deepseek-chat", "DEEPSEEK_API_KEY", {
            "deepseek-chat": _caps(False, 128_000, 0.28, 0.42, cached=0.028),
            "deepseek-reasoner": _caps(False, 128_000, 0.28, 0.42, cached=0.028),
        }),
        _preset("gemini", "openai", "https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash",
                "GEMINI_API_KEY", {
            "gemini-2.5-flash": _caps(True, 1_048_576, 0.3, 2.5, cached=0.03),
            "gemini-2.5-pro": _caps(True, 1_048_576, 1.25, 10.0, cached=0.125),
            "gemini-2.5-flash-lite": _caps(True, 1_048_576, 0.1, 0.4, cached=0.01),
        }),
        _preset("groq", "openai", "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile", "GROQ_API_KEY", {
            "llama-3.3-70b-versatile": _caps(False, 131_072, 0.59, 0.79),
        }),
    ]


# Caps by model family, for models no preset or profile declares (prices unknown: 0).
_FAMILIES: tuple[tuple[tuple[str, ...], ModelCaps], ...] = (
    (("claude",), _caps(True, 200_000)),
    (("gpt-4.1",), _caps(True, 1_047_576)),
    (("gpt-4o", "gpt-5", "o3", "o4"), _caps(True, 128_000)),
    (("gemini",), _caps(True, 1_048_576)),
    (("deepseek",), _caps(False, 128_000)),
    (("llava", "gemma3", "minicpm-v", "llama3.2-vision"), _caps(True, 32_000, tools=False)),
)
# Local vision models are named "<family>-vl…" or "<family>vl:…" (qwen2.5vl:7b, qwen3-vl).
_VISION_MARKERS = ("-vl", "vl:", "vision")


def family_caps(model: str) -> ModelCaps:
    """Sensible caps for an undeclared model, from its family name; else the plain defaults."""
    bare = model.lower().rsplit("/", 1)[-1]  # OpenRouter's "vendor/model"
    for prefixes, caps in _FAMILIES:
        if bare.startswith(prefixes):
            return caps.model_copy()
    if any(marker in bare for marker in _VISION_MARKERS):
        return _caps(True, 32_000)
    return ModelCaps()


# A pinned snapshot of a model: "claude-sonnet-4-5-20250929", "gpt-4.1-mini-2025-04-14".
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


def declared_model(models: dict[str, ModelCaps], model: str) -> ModelCaps | None:
    """The caps declared for `model`, or for the id it is a spelling of: providers list pinned
    snapshots (a date after the name) and Gemini lists "models/<id>", while a preset declares
    the plain id once; without this such a model would run at a price of $0."""
    if model in models:
        return models[model]
    plain = _SNAPSHOT_SUFFIX.sub("", model.removeprefix("models/"))
    return models.get(plain)


def _context_in_effect(profile: ProviderProfile, caps: ModelCaps) -> ModelCaps:
    """Ollama runs a model with `options.num_ctx` tokens of context whatever the model could
    take, and cuts a longer prompt silently: the history is trimmed to that many instead."""
    options = profile.extra.get("options") if profile.kind == "ollama" else None
    num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
    if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and 512 <= num_ctx < caps.context_tokens:
        caps.context_tokens = num_ctx
    return caps


# What a provider kind charges for prompt tokens read from its cache and written to it, as a share
# of the input price, when a model declares no price of its own: Anthropic's published multipliers
# (reads 0.1x, five-minute writes 1.25x); OpenAI's cached input is half price on its older models
# and less on newer ones (0.5x is the safe side), and its writes cost what input does.
_CACHE_SHARES: Mapping[str, tuple[float, float]] = {"anthropic": (0.1, 1.25), "openai": (0.5, 1.0)}


def cache_prices_in_effect(kind: str, caps: ModelCaps) -> ModelCaps:
    """`caps` with the cache prices it leaves unset filled from its provider kind's `_CACHE_SHARES`
    (other kinds report no cached tokens, and an unset price is the input price in `cost_of`)."""
    shares = _CACHE_SHARES.get(kind)
    if shares is None:
        return caps
    if caps.cache_read_price is None:
        caps.cache_read_price = min(round(caps.input_price * shares[0], 9), MAX_PRICE)
    if caps.cache_write_price is None:
        caps.cache_write_price = min(round(caps.input_price * shares[1], 9), MAX_PRICE)
    return caps


def cost_of(caps: ModelCaps, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
            cache_write_tokens: int = 0) -> float:
    """USD for a turn's tokens at the model's prices per million: of `input_tokens` (all the
    prompt's), those read from the cache and those written to it at their own prices, the rest at
    `input_price`. An unset cache price is `input_price`: never a discount that was not declared."""
    read_price = caps.input_price if caps.cache_read_price is None else caps.cache_read_price
    write_price = caps.input_price if caps.cache_write_price is None else caps.cache_write_price
    plain = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
    return (plain * caps.input_price + cache_read_tokens * read_price + cache_write_tokens * write_price
            + output_tokens * caps.output_price) / 1_000_000


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


class ProviderProfiles:
    """The user's provider profiles; call `await load()` once before use (or let any call do it)."""

    def __init__(self, data_dir: Path, secrets: SecretStore, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(data_dir) / PROFILES_FILE
        self.secrets = secrets
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._profiles: dict[str, ProviderProfile] = {}
        self._loaded = False
        # Bumped whenever the profiles change, so what was built from them can be reused until then.
        self.revision = 0
        self._lock = asyncio.Lock()
        # Read-only reference for `caps()`, which runs at every run's start: building the presets
        # costs ~0.1 ms. Whatever leaves this object is a copy.
        self._preset_refs: tuple[ProviderProfile, ...] = tuple(presets())

    # ------------------------------------------------------------------ loading

    async def load(self) -> None:
        async with self._lock:
            if self._loaded:
                return
            found = await asyncio.to_thread(self._read)
            if found is None:
                found = self._seed()
                await self._save(found)
                log.info("created provider profiles: %s", ", ".join(found) or "(none)")
            self._replace(found)
            self._loaded = True

    def _replace(self, profiles: dict[str, ProviderProfile]) -> None:
        self._profiles = profiles
        self.revision += 1

    def _read(self) -> dict[str, ProviderProfile] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            items = data["profiles"]
        except (ValueError, KeyError, TypeError):
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("%s is not a valid profiles file; moved it to %s and started afresh", self.path, aside.name)
            return None
        profiles: dict[str, ProviderProfile] = {}
        for item in items:
            try:
                profile = ProviderProfile.model_validate(_within_limits(item))
            except ValidationError as exc:
                log.warning("skipping an invalid provider profile in %s: %s", self.path, exc.errors()[0]["msg"])
                continue
            profiles[profile.name] = profile
        return profiles

    def _seed(self) -> dict[str, ProviderProfile]:
        seeded = {}
        for preset in presets():
            if preset.name == "ollama" or (preset.key_env and self._env.get(preset.key_env)):
                seeded[preset.name] = preset
        return seeded

    async def _save(self, profiles: dict[str, ProviderProfile]) -> None:
        data = {
            "version": 1,
            "profiles": [p.model_dump(mode="json", exclude=_NOT_STORED) for p in profiles.values()],
        }
        await asyncio.to_thread(atomic_write_text, self.path, json.dumps(data, indent=2) + "\n")

    # ------------------------------------------------------------------ reads

    def presets(self) -> list[ProviderProfile]:
        return presets()

    async def list(self) -> list[ProviderProfile]:
        await self.load()
        return [self._public(p) for p in self._profiles.values()]

    async def get(self, name: str) -> ProviderProfile:
        """The profile as it is listed: a key's last characters at most (see `_public`)."""
        await self.load()
        return self._public(self._find(name))

    async def stored(self, name: str) -> ProviderProfile:
        """The profile as stored, what a provider is built from: a header saved with a credential
        (before they were refused) is sent as it was saved. Never for a client's eyes."""
        await self.load()
        return self._find(name).model_copy(deep=True)

    def api_key(self, profile: ProviderProfile) -> str | None:
        """The key to send for `profile` (stored, `key_env`, or the host's usual variable)."""
        return self.secrets.lookup(profile.name, profile.key_env, profile.base_url)

    async def caps(self, name: str, model: str) -> ModelCaps:
        """Declared (or overridden) caps of `model` on profile `name`, else family defaults; the
        context is what the server will actually hold (`_context_in_effect`), and cache prices
        left unset are the provider kind's usual ones (`cache_prices_in_effect`)."""
        await self.load()
        profile = self._find(name)
        return cache_prices_in_effect(profile.kind, _context_in_effect(profile, self._declared_caps(profile, model)))

    def _declared_caps(self, profile: ProviderProfile, model: str) -> ModelCaps:
        declared = declared_model(profile.models, model)
        if declared is not None:
            return declared.model_copy()
        for preset in self._preset_refs:
            if preset.kind == profile.kind and _host(preset.base_url) == _host(profile.base_url):
                declared = declared_model(preset.models, model)
                if declared is not None:
                    return declared.model_copy()
        return family_caps(model)

    async def price(self, name: str, model: str) -> tuple[float, float]:
        """(input, output) USD per million tokens; (0, 0) when unknown."""
        caps = await self.caps(name, model)
        return caps.input_price, caps.output_price

    # ------------------------------------------------------------------ writes

    async def create(self, body: ProviderCreate) -> ProviderProfile:
        await self.load()
        template = self._template(body.name, body.kind)
        base_url = body.base_url or (template.base_url if template else "")
        _check_url(base_url, body.kind)
        _check_extra(body.extra)
        same_service = template is not None and _host(template.base_url) == _host(base_url)
        profile = ProviderProfile(
            name=body.name,
            kind=body.kind,
            base_url=base_url,
            default_model=body.default_model or (template.default_model if template and same_service else ""),
            key_env=body.key_env or (template.key_env if template and same_service else None),
            models=body.models or (dict(template.models) if template and same_service else {}),
            extra=body.extra or (dict(template.extra) if template else {}),
        )
        async with self._lock:
            if profile.name in self._profiles:
                raise Conflict(f"a provider named {profile.name!r} already exists")
            updated = {**self._profiles, profile.name: profile}
            await self._save(updated)
            self._replace(updated)
        log.info("created provider profile %s (%s, %s)", profile.name, profile.kind, profile.base_url)
        return self._public(profile)

    async def patch(self, name: str, body: ProviderPatch, if_match: Collection[str] | None = None) -> ProviderProfile:
        """Replace the fields the patch sets (`models` and `extra` are replaced whole). With
        `if_match` (revisions), only if the stored profile is still at one of them: checked and
        written under the lock, so of two changes made against one revision one passes."""
        await self.load()
        async with self._lock:
            current = self._find(name)
            _check_revision(name, current, if_match)
            changes = {k: getattr(body, k) for k in body.model_fields_set}
            for required in ("base_url", "default_model", "models", "extra"):
                if required in changes and changes[required] is None:
                    del changes[required]
            if "base_url" in changes:
                _check_url(changes["base_url"], current.kind)
            if "extra" in changes:
                _check_extra(changes["extra"])
            if _leaves_its_service(current, changes):
                # The old service's key variable (OPENAI_API_KEY for api.openai.com) is not for
                # the new host, as `create` decides too: a patch that wants it says so.
                changes["key_env"] = None
            profile = current.model_copy(update=changes)
            _check_url(profile.base_url, profile.kind)
            profile = ProviderProfile.model_validate(profile.model_dump())
            updated = {**self._profiles, name: profile}
            await self._save(updated)
            self._replace(updated)
        log.info("updated provider profile %s (%s)", name, ", ".join(sorted(changes)) or "no change")
        return self._public(profile)

    async def delete(self, name: str, if_match: Collection[str] | None = None) -> None:
        """Remove the profile and its stored key; with `if_match`, only at one of those revisions."""
        await self.load()
        async with self._lock:
            _check_revision(name, self._find(name), if_match)
            updated = {k: v for k, v in self._profiles.items() if k != name}
            await self._save(updated)
            self._replace(updated)
        await self.secrets.delete(name)
        log.info("deleted provider profile %s", name)

    # ------------------------------------------------------------------ helpers

    def _find(self, name: str) -> ProviderProfile:
        profile = self._profiles.get(name)
        if profile is None:
            raise NotFound(f"no provider named {name!r}", details={"provider": name})
        return profile

    def _template(self, name: str, kind: str) -> ProviderProfile | None:
        """The preset of the same name and kind, else the kind's own preset."""
        by_name = {p.name: p for p in presets() if p.kind == kind}
        return by_name.get(name) or by_name.get(kind)

    def _public(self, profile: ProviderProfile) -> ProviderProfile:
        key = self.secrets.lookup(profile.name, profile.key_env, profile.base_url)
        hint = self.secrets.hint(profile.name, profile.key_env, profile.base_url) if key else None
        update: dict[str, Any] = {"has_key": key is not None, "key_hint": hint, "revision": revision_of(profile)}
        headers = profile.extra.get("headers")
        if isinstance(headers, dict) and any(str(n).lower() in _CREDENTIAL_HEADERS for n in headers):
            # Saved before such headers were refused: listed as a hint, like a stored key.
            masked = {n: key_hint(str(v)) if str(n).lower() in _CREDENTIAL_HEADERS else v for n, v in headers.items()}
            update["extra"] = {**profile.extra, "headers": masked}
        return profile.model_copy(update=update, deep=True)


def revision_of(profile: ProviderProfile) -> str:
    """The profile's revision: a digest of what is stored for it (what `_save` writes).

    A digest rather than a counter bumped on each change: it needs nothing stored beside the
    profile (no migration of providers.json, and it survives a restart as the profile does), and it
    names the content itself, so a profile deleted and made again under its name, or the file
    edited while the server was stopped, never matches a revision read before, where a counter
    could start again at one it had. Two states with the same content share a revision, which is
    what it guards: a change made against that content loses nothing. The key is not part of it:
    stored apart, write-only and never merged, it cannot be lost to a race, and storing one does
    not make an edit of the models pending in another panel stale."""
    text = json.dumps(profile.model_dump(mode="json", exclude=_NOT_STORED), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _check_revision(name: str, current: ProviderProfile, if_match: Collection[str] | None) -> None:
    """Refuse a change made against a revision that is no longer the stored one (None: no check)."""
    if if_match is None:
        return
    revision = revision_of(current)
    if revision not in if_match:
        raise Conflict(f"provider {name!r} was changed elsewhere since you loaded it; reload it and apply your "
                       "change again", code="profile_changed", details={"provider": name, "revision": revision})


def _within_limits(item: Any) -> Any:
    """A stored profile's model caps brought within today's limits (a context or a price saved
    before they had a ceiling, an infinite price): it loads, clamped, rather than being skipped
    and then erased by the next save."""
    models = item.get("models") if isinstance(item, dict) else None
    if not isinstance(models, dict):
        return item
    fixed = {}
    for model_id, caps in models.items():
        if isinstance(caps, dict):
            caps = dict(caps)
            context = caps.get("context_tokens")
            if isinstance(context, (int, float)) and context > MAX_CONTEXT_TOKENS:
                caps["context_tokens"] = MAX_CONTEXT_TOKENS
            for price in ("input_price", "output_price", "cache_read_price", "cache_write_price"):
                value = caps.get(price)
                if isinstance(value, float) and math.isnan(value):
                    caps[price] = 0.0
                elif isinstance(value, (int, float)) and value > MAX_PRICE:
                    caps[price] = MAX_PRICE
        fixed[model_id] = caps
    if fixed != models:
        log.warning("provider profile %s: model caps above today's limits were clamped", item.get("name"))
    return {**item, "models": fixed}


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an HTTP token (RFC 9110)
# Headers that carry a credential: a key goes through the write-only key route, never in a
# profile that is listed back (set `extra.key_header` to send the stored key under another name).
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "x-goog-api-key",
                                 "cookie"})


def _check_extra(extra: Mapping[str, Any]) -> None:
    """`extra.headers` must be names and one-line values that aiohttp can send, and no credential;
    `extra.key_header` must be a header name."""
    headers = extra.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise _bad_extra("extra.headers must be an object of header names to values")
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.match(name):
            raise _bad_extra(f"extra.headers: {name[:100]!r} is not a valid header name")
        if not isinstance(value, str) or len(value) > 4000 or any(c in value for c in "\r\n\0"):
            raise _bad_extra(f"extra.headers: the value of {name} must be one line of text (at most 4,000 characters)")
        if name.lower() in _CREDENTIAL_HEADERS:
            raise _bad_extra(f"extra.headers: {name} carries a key, and a profile is listed back: store the key "
                             f"with PUT /opencode/providers/<profile>/key, and set extra.key_header to {name!r} "
                             "to send it under that name")
    key_header = extra.get("key_header")
    if key_header is not None and not (isinstance(key_header, str) and _HEADER_NAME.match(key_header)):
        raise _bad_extra("extra.key_header must be a header name, e.g. api-key")


def _bad_extra(message: str) -> BadRequest:
    return BadRequest(message, details={"field": "extra"})


def _leaves_its_service(current: ProviderProfile, changes: Mapping[str, Any]) -> bool:
    """Whether a patch moves a profile to another host while keeping the old host's usual key
    variable, which would then send that service's key to the new host."""
    url = changes.get("base_url")
    if url is None or "key_env" in changes or current.key_env is None:
        return False
    return _host(url) != _host(current.base_url) and current.key_env == usual_env_var(current.base_url)


def _check_url(url: str, kind: str) -> None:
    if kind == "echo" and not url:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:  # "http://[" (an unclosed IPv6 host), "http://host:99999"
        raise BadRequest(f"base_url is not a valid URL ({exc}): {url!r}", details={"field": "base_url"}) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"base_url must be an http(s) URL, got {url!r}", details={"field": "base_url"})
