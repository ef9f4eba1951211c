"""The composition root: opens everything in order, closes it in reverse, picks implementations.

`OpencodeService` owns the store, the bus, the shared HTTP client session, the provider profiles
and secrets, the skill registry, the permission gate, the UI broker and the session manager.
It is the only place that chooses SQLite, the in-process bus or aiohttp; everything above it
(routes, node, CLI) talks to `service.sessions` and friends. Skill factories registered before
`start()` add Python skills (the ComfyUI tools) without `core/` importing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from .agent import AgentDeps, ResolvedModel
from .bus import BusLogHandler, InProcessBus
from .config import Config
from .datadir import open_data_dir
from .errors import BadRequest, NotFound, OpencodeError
from .images import ImageLoader
from .permissions import PermissionGate
from .protocol import SESSIONS_ROOM, SessionList
from .providers.http import create_session
from .providers.profiles import ProviderProfiles
from .providers.registry import build_provider
from .secrets import SecretStore
from .sessions import SessionManager
from .skills import Skill, SkillRegistry
from .store import SqliteStore
from .trust import is_loopback_host
from .ui_requests import UiBroker

log = logging.getLogger("opencode.service")

SkillFactory = Callable[["OpencodeService"], Skill]


async def _local_server_answers(base_url: str, timeout: float = 0.25) -> bool:
    """Whether a server on this machine accepts a connection at `base_url` (a refused loopback
    connection answers at once; no request is sent)."""
    parts = urlsplit(base_url)
    if not is_loopback_host(parts.hostname):
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class ModelResolverImpl:
    """Picks the provider and model of a session from its profile name and model id.

    A resolution is reused while the profiles and the key are unchanged: every run asks, and
    building a provider and its capabilities each time would sit in front of every first token.
    """

    def __init__(self, service: "OpencodeService") -> None:
        self.service = service
        self._cache: dict[tuple[str, str | None], tuple[tuple[int, str | None], ResolvedModel]] = {}

    async def resolve(self, provider_name: str | None, model: str | None) -> ResolvedModel:
        profiles = self.service.profiles
        name = provider_name or await self.service.default_provider()
        if not name:
            raise BadRequest(
                "no provider is chosen for this chat, and no model server on this machine answers "
                "(Ollama, LM Studio): add a provider and its API key with the panel's gear button and "
                "pick it above the chat, or start your local server (over the API: PATCH the "
                "session's `provider`; from the terminal: `opencode-agent run --provider NAME`)",
                code="no_provider",
            )
        cached = self._cache.get((name, model))
        if cached is not None and cached[0][0] == profiles.revision:
            known = cached[1].provider.profile
            if self.service.secrets.lookup(known.name, known.key_env, known.base_url) == cached[0][1]:
                return cached[1]
        profile = await profiles.stored(name)
        key = self.service.secrets.lookup(profile.name, profile.key_env, profile.base_url)
        stamp = (profiles.revision, key)
        model_id = model or profile.default_model
        if not model_id:
            raise BadRequest(f"provider {name} has no default model: choose a model for this session",
                             code="no_model")
        provider = build_provider(profile, key, self.service.http, image_loader=self.service.load_image)
        resolved = ResolvedModel(provider=provider, model=model_id, caps=await profiles.caps(name, model_id))
        if len(self._cache) >= 256:
            self._cache.clear()
        self._cache[(name, model)] = (stamp, resolved)
        return resolved


@dataclass
class OpencodeService:
    config: Config = field(default_factory=Config)
    skill_factories: list[SkillFactory] = field(default_factory=list)
    image_loader: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        self.started_at = time.time()
        self._log_handler: BusLogHandler | None = None
        # Closed before the HTTP session (e.g. a ComfyUI adapter's own socket).
        self.close_hooks: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        # Before anything reads the directory: opening it recovers it, which would cut off the
        # live replies of another process using it (see `core/datadir.py`).
        self._data_lock = await asyncio.to_thread(open_data_dir, cfg)  # file I/O: off the loop
        try:
            await self._open()
        except BaseException:
            self._data_lock.release()
            raise

    async def _open(self) -> None:
        cfg = self.config
        if self.image_loader is None:
            self.image_loader = ImageLoader(cfg.data_dir)
        self.store = SqliteStore(cfg.db_path, max_rows=cfg.commit_max_rows, max_delay=cfg.commit_max_delay,
                                 event_delay=cfg.commit_event_delay)
        await self.store.open()
        await self.store.recover()
        self.secrets = SecretStore(cfg.data_dir)
        await self.secrets.load()
        self.profiles = ProviderProfiles(cfg.data_dir, self.secrets)
        await self.profiles.load()
        self.http: aiohttp.ClientSession = create_session(max_connections=cfg.max_concurrent_runs)
        self.skills = SkillRegistry(user_dir=cfg.data_dir / "skills")
        for factory in self.skill_factories:
            self.skills.register(factory(self), replace=True)
        await self.skills.reload()
        self.bus = InProcessBus(self.store, self._snapshot, ring_size=cfg.ring_size,
                                replay_max_events=cfg.replay_max_events, max_backlog=cfg.max_client_backlog)
        self.ui = UiBroker(self.bus, default_timeout=cfg.ui_request_timeout)
        self.gate = PermissionGate(self.bus, self.store, self._remember_permission, timeout=cfg.permission_timeout)
        await self.gate.load_rules(cfg.data_dir / "permissions.json")
        deps = AgentDeps(bus=self.bus, store=self.store, gate=self.gate, ui=self.ui,
                         models=ModelResolverImpl(self), checkpoint_interval=cfg.checkpoint_interval,
                         echo_delay=cfg.echo_delay, max_turns=cfg.max_turns,
                         extra_tools=[self.skills.reference_tool], redact=self.redact)
        self.sessions = SessionManager(self.store, self.bus, self.skills, deps,
                                       recent_limit=cfg.snapshot_messages,
                                       validate_provider=self._validate_provider)
        self._install_logging()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_rings(), name="opencode-ring-sweeper")
        log.info("Opencode started; data in %s", cfg.data_dir)

    async def _sweep_rings(self) -> None:
        """Give idle sessions' memory back now and then: replay rings (`InProcessBus.trim_idle`)
        and loaded sessions (`SessionManager.evict_idle`)."""
        while True:
            await asyncio.sleep(self.config.ring_sweep_interval)
            trimmed = self.bus.trim_idle(self.config.ring_idle_seconds)
            forgotten = self.sessions.evict_idle(self.config.ring_idle_seconds)
            if trimmed or forgotten:
                log.debug("idle sessions: %d replay ring(s) trimmed, %d session(s) unloaded", trimmed, forgotten)

    async def close(self) -> None:
        try:
            self._sweeper.cancel()
            await self.sessions.shutdown()
            await self.bus.close()
            for hook in reversed(self.close_hooks):
                try:
                    await hook()
                except Exception:  # noqa: BLE001 - closing must go on
                    log.exception("a close hook failed")
            await self.http.close()
            await self.store.close()
            self._uninstall_logging()
        finally:  # last, and whatever failed: the directory is free once everything is written
            self._data_lock.release()

    # ------------------------------------------------------------------ helpers

    def redact(self, text: str) -> str:
        return self.secrets.redactor.redact(text)

    async def default_provider(self) -> str | None:
        """The configured default, else the first profile that has a key, else the first that
        needs none and answers (a server on this machine such as Ollama or LM Studio): a fresh
        install with only Ollama running answers with it instead of asking the user to pick the
        only choice, and one with nothing running still gets "no provider is chosen"."""
        if self.config.default_provider:
            return self.config.default_provider
        profiles = await self.profiles.list()
        for profile in profiles:
            if profile.has_key:
                return profile.name
        for profile in profiles:
            if profile.key_env is None and await _local_server_answers(profile.base_url):
                return profile.name
        return None

    async def _validate_provider(self, name: str) -> None:
        try:
            await self.profiles.get(name)
        except NotFound:
            raise BadRequest(f"no provider profile {name}; list them with GET /opencode/providers",
                             code="unknown_provider") from None

    async def list_models(self, name: str) -> list[Any]:
        """The provider's own model list, each with the capabilities Opencode knows of it."""
        profile = await self.profiles.stored(name)
        key = self.secrets.lookup(profile.name, profile.key_env, profile.base_url)
        provider = build_provider(profile, key, self.http, image_loader=self.load_image)
        models = await provider.list_models()
        for m in models:
            if m.caps is None:
                m.caps = await self.profiles.caps(name, m.id)
        return models

    async def _snapshot(self, session_id: str) -> dict[str, Any]:
        if session_id == SESSIONS_ROOM:  # the list room's snapshot: what `GET /opencode/sessions` lists
            return SessionList(sessions=await self.sessions.list()).model_dump(mode="json")
        return await self.sessions.snapshot(session_id)

    async def _remember_permission(self, session_id: str, tool: str, policy: str) -> None:
        await self.sessions.remember_permission(session_id, tool, policy)

    async def load_image(self, part: Any) -> tuple[bytes, str]:
        if self.image_loader is None:
            raise OpencodeError("images cannot be read in this setup", code="image_unavailable", status=400)
        return await self.image_loader(part)

    def _install_logging(self) -> None:
        """`opencode.*` records feed the session's debug drawer at every level and reach the
        console (ComfyUI's root handlers) at INFO and up; both paths are redacted."""
        root = logging.getLogger("opencode")
        self._log_handler = BusLogHandler(self.bus, self.redact)
        self._console = _ConsoleForwarder(self.redact)
        root.addHandler(self._log_handler)
        root.addHandler(self._console)
        root.setLevel(logging.DEBUG)
        root.propagate = False

    def _uninstall_logging(self) -> None:
        root = logging.getLogger("opencode")
        if self._log_handler:
            root.removeHandler(self._log_handler)
            root.removeHandler(self._console)
        root.propagate = True

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


class _ConsoleForwarder(logging.Handler):
    """Hands INFO-and-up records, redacted, to the root logger's handlers (ComfyUI's console)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__(logging.INFO)
        self.redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = self.redact(record.getMessage()), None
        if record.exc_info:
            clean.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            clean.exc_info = None
        logging.getLogger().handle(clean)
