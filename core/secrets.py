"""API keys: where they are kept, how they are found, and how they are kept out of text.

`SecretStore` keeps keys the user typed into `<data_dir>/secrets.json`, a file created with mode
0600 and rewritten atomically (temp file + `os.replace`, off the event loop). A profile's key is
looked up in this order:

1. the key stored under the profile's name;
2. the environment variable named by the profile's `key_env`;
3. the usual variable of the service the profile's `base_url` points at (`OPENAI_API_KEY` for
   api.openai.com, `ANTHROPIC_API_KEY` for api.anthropic.com, `OPENROUTER_API_KEY`, ...). This
   fallback is keyed on the host, not on the wire dialect, so a local LM Studio or a third-party
   OpenAI-compatible server never receives the user's OpenAI key by accident.

`Redactor` replaces every known key value, and anything shaped like a key (`sk-…`, `sk-ant-…`,
`AIza…`, `Bearer …`, long tokens after `key=`), with `[REDACTED]`; logs, events, errors and exports
go through it. Keys never enter a protocol model: listings get `has_key` and a hint of at most the
last four characters.

Imports only the standard library (and `errors`); `atomic_write_text` is shared with the provider
profiles store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from .errors import BadRequest

log = logging.getLogger("opencode.secrets")

REDACTED = "[REDACTED]"
SECRETS_FILE = "secrets.json"
# Known keys shorter than this are not replaced verbatim: no real key is that short, and
# replacing a three-letter string everywhere would mangle every log line.
MIN_KNOWN_SECRET = 6

# The usual environment variable of each hosted service, by API host.
HOST_ENV_VARS: Mapping[str, str] = {
    "api.openai.com": "OPENAI_API_KEY",
    "api.anthropic.com": "ANTHROPIC_API_KEY",
    "openrouter.ai": "OPENROUTER_API_KEY",
    "api.deepseek.com": "DEEPSEEK_API_KEY",
    "generativelanguage.googleapis.com": "GEMINI_API_KEY",
    "api.groq.com": "GROQ_API_KEY",
    "api.mistral.ai": "MISTRAL_API_KEY",
    "api.x.ai": "XAI_API_KEY",
    "api.together.xyz": "TOGETHER_API_KEY",
}

# Shapes of keys and credentials, redacted even when the key itself is unknown:
# (what a key looks like, its replacement, lowercase words one of which any match contains,
# and what must follow such a word for a match to be possible, or None). A pattern only runs on
# text that passes those checks, so a plain log line costs a few `in` tests. "tokens: 20" has
# the word "token" but no `=` or `:` right after it; without the second check every such line
# paid a case-insensitive scan (about 12 us, more than the rest of writing the line).
_KEY_SHAPES: tuple[tuple[re.Pattern[str], str, tuple[str, ...], re.Pattern[str] | None], ...] = (
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), f"Bearer {REDACTED}", ("bearer",), None),
    (re.compile(r"\bsk-ant-[A-Za-z0-9_-]{8,}"), REDACTED, ("sk-ant-",), None),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED, ("sk-",), None),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), REDACTED, ("aiza",), None),
    (re.compile(r"\b(?:gsk|xai|hf|pplx|ghp|github_pat)[_-][A-Za-z0-9_]{20,}"), REDACTED,
     ("gsk", "xai", "hf", "pplx", "ghp", "github_pat"), re.compile(r"[_-]")),
    # key=…, api_key: "…", "x-api-key": "…", token=… (query strings, headers, JSON, repr)
    (
        re.compile(
            r"""(?i)\b((?:x-)?(?:api[_-]?)?key|token|secret|password|authorization)(["']?\s*[=:]\s*["']?)"""
            r"""[A-Za-z0-9+/_.~-]{16,}={0,2}"""
        ),
        r"\1\2" + REDACTED,
        ("key", "token", "secret", "password", "authorization"),
        re.compile(r"""["']?\s*[=:]"""),
    ),
)


def _may_match(lower: str, words: tuple[str, ...], follows: re.Pattern[str] | None) -> bool:
    """Whether `lower` holds one of `words` (followed by what `follows` matches, if given):
    a necessary condition for its pattern to match, checked without scanning with the pattern."""
    for word in words:
        at = lower.find(word)
        while at >= 0:
            if follows is None or follows.match(lower, at + len(word)):
                return True
            at = lower.find(word, at + 1)
    return False


class Redactor:
    """Removes secrets from text: every known key value and anything shaped like a key."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember a key value; it is redacted from then on (also after it is deleted)."""
        if not secret or len(secret) < MIN_KNOWN_SECRET or secret in self._known:
            return
        self._known.add(secret)
        # Longest first so a key that contains another is replaced whole.
        ordered = sorted(self._known, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        lower = text.casefold()
        for pattern, replacement, words, follows in _KEY_SHAPES:
            if _may_match(lower, words, follows):
                text = pattern.sub(replacement, text)
        return text

    __call__ = redact

    def redact_obj(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (dicts, lists, tuples), keys included."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact_obj(v) for v in value)
        return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message (after formatting its arguments)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def key_hint(key: str | None) -> str | None:
    """`…abcd`: at most the last four characters, fewer for short keys, never more than a quarter."""
    if not key:
        return None
    shown = min(4, len(key) // 4)
    return "…" + (key[-shown:] if shown else "")


def usual_env_var(base_url: str) -> str | None:
    """The conventional key variable of the hosted service `base_url` points at, if any."""
    host = (urlsplit(base_url).hostname or "").lower()
    return HOST_ENV_VARS.get(host)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so a reader sees the old or the new file, never half of one.

    `mkstemp` creates the temp file with `os.open(..., 0o600)`, so a secret is never readable by
    others, not even for a moment; it is then set to `mode`, fsynced and moved over `path`.
    Blocking: call it through `asyncio.to_thread`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SecretStore:
    """API keys by profile name, persisted in `<data_dir>/secrets.json` (mode 0600).

    Call `await load()` once at start. Reads are synchronous and in memory; writes are serialised
    and go to disk off the event loop. `redactor` knows every key the store has seen, including
    environment keys it looked up, so it can scrub them from any text.
    """

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(data_dir) / SECRETS_FILE
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._keys: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self.redactor = Redactor()
        for var in HOST_ENV_VARS.values():
            self.redactor.add(self._env.get(var))

    async def load(self) -> None:
        self._keys = await asyncio.to_thread(self._read)
        for key in self._keys.values():
            self.redactor.add(key)

    def _read(self) -> dict[str, str]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        _ensure_private(self.path)
        try:
            data = json.loads(raw)
            keys = data.get("keys", {}) if isinstance(data, dict) else {}
        except ValueError:
            # Never echo the file's content: it is the secret.
            log.error("secrets file %s is not valid JSON; ignoring it", self.path)
            return {}
        return {str(k): str(v) for k, v in keys.items() if isinstance(v, str) and v}

    def _write(self, keys: dict[str, str]) -> None:
        text = json.dumps({"version": 1, "keys": keys}, indent=2, sort_keys=True)
        atomic_write_text(self.path, text + "\n", mode=0o600)
        _ensure_private(self.path)

    # ------------------------------------------------------------------ reads

    def stored(self, name: str) -> str | None:
        """The key stored for profile `name`, ignoring the environment."""
        return self._keys.get(name)

    def lookup(self, name: str, key_env: str | None = None, base_url: str | None = None) -> str | None:
        """The key for a profile: stored, then `key_env`, then the host's usual variable."""
        key = self._keys.get(name)
        if not key and key_env:
            key = self._env.get(key_env) or None
        if not key and base_url:
            var = usual_env_var(base_url)
            key = self._env.get(var) or None if var else None
        if key:
            self.redactor.add(key)
        return key

    def hint(self, name: str, key_env: str | None = None, base_url: str | None = None) -> str | None:
        """`…abcd` for the key `lookup` would return, or None when there is none."""
        return key_hint(self.lookup(name, key_env, base_url))

    # ------------------------------------------------------------------ writes

    async def set(self, name: str, key: str) -> None:
        key = key.strip()
        if not key or any(c in key for c in "\r\n\0"):
            raise BadRequest("an API key must be one non-empty line")
        async with self._lock:
            keys = {**self._keys, name: key}
            await asyncio.to_thread(self._write, keys)
            self._keys = keys
            self.redactor.add(key)
        log.info("stored API key for provider %s (%s)", name, key_hint(key))

    async def delete(self, name: str) -> bool:
        """Forget the stored key of `name`; True if there was one. Environment keys stay."""
        async with self._lock:
            if name not in self._keys:
                return False
            keys = {k: v for k, v in self._keys.items() if k != name}
            await asyncio.to_thread(self._write, keys)
            self._keys = keys
        log.info("deleted stored API key for provider %s", name)
        return True


def _ensure_private(path: Path) -> None:
    """Make sure only the owner can read the secrets file (POSIX); fix and warn otherwise."""
    if os.name == "nt":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("secrets file %s had mode %o; restricting it to 0600", path, mode)
        os.chmod(path, 0o600)
