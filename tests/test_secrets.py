"""SecretStore (file mode, lookup order, hints) and Redactor (known keys and key shapes)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import hypothesis
import hypothesis.strategies
import pytest

from opencode_agent.core.errors import BadRequest
from opencode_agent.core.secrets import REDACTED, RedactingFilter, Redactor, SecretStore, key_hint, usual_env_var

OPENAI_KEY = "sk-proj-envKEY0123456789abcdefghij"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_set_writes_a_private_file_and_survives_a_restart(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={})
    await store.load()
    await store.set("openai", "  sk-typed-by-user-1234567890abcd \n")
    path = tmp_path / "secrets.json"
    assert mode(path) == 0o600
    assert json.loads(path.read_text())["keys"] == {"openai": "sk-typed-by-user-1234567890abcd"}
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temp file left behind

    again = SecretStore(tmp_path, env={})
    await again.load()
    assert again.stored("openai") == "sk-typed-by-user-1234567890abcd"
    assert await again.delete("openai") is True
    assert await again.delete("openai") is False
    assert json.loads(path.read_text())["keys"] == {}


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
async def test_a_world_readable_file_is_tightened_on_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"version": 1, "keys": {"x": "secret-value-123"}}))
    path.chmod(0o644)
    store = SecretStore(tmp_path, env={})
    await store.load()
    assert mode(path) == 0o600 and store.stored("x") == "secret-value-123"
    assert "restricting it to 0600" in caplog.text


async def test_a_corrupt_file_is_ignored_without_echoing_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "secrets.json").write_text('{"keys": {"x": "sk-half-written-secret')
    (tmp_path / "secrets.json").chmod(0o600)
    store = SecretStore(tmp_path, env={})
    await store.load()
    assert store.stored("x") is None
    assert "half-written" not in caplog.text


async def test_lookup_order_stored_then_key_env_then_the_hosts_usual_variable(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "MY_KEY": "sk-from-my-env-var-0123456789"}
    store = SecretStore(tmp_path, env=env)
    await store.load()
    api = "https://api.openai.com/v1"
    assert store.lookup("openai", None, api) == OPENAI_KEY
    assert store.lookup("openai", "MY_KEY", api) == "sk-from-my-env-var-0123456789"
    await store.set("openai", "sk-stored-wins-0123456789abc")
    assert store.lookup("openai", "MY_KEY", api) == "sk-stored-wins-0123456789abc"
    # An OpenAI-compatible server elsewhere never gets the OpenAI key by accident.
    assert store.lookup("lmstudio", None, "http://127.0.0.1:1234/v1") is None
    assert store.lookup("proxy", None, "https://llm.example.com/v1") is None
    assert store.lookup("openrouter", None, "https://openrouter.ai/api/v1") is None
    assert usual_env_var("https://generativelanguage.googleapis.com/v1beta/openai") == "GEMINI_API_KEY"


async def test_hints_show_at_most_four_characters(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={})
    await store.load()
    await store.set("a", "sk-abcdefghijklmnopqrstuvwxyz9876")
    assert store.hint("a") == "…9876"
    assert store.hint("missing") is None
    assert key_hint("12345678") == "…78"  # short keys show less
    assert key_hint("abc") == "…"


async def test_set_rejects_multi_line_keys(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={})
    with pytest.raises(BadRequest):
        await store.set("a", "sk-one\nsk-two")
    with pytest.raises(BadRequest):
        await store.set("a", "   ")


async def test_the_store_redactor_knows_stored_and_environment_keys(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={"OPENAI_API_KEY": "plainenvvalue42"})
    await store.load()
    await store.set("x", "typedvalue99")
    text = "env plainenvvalue42 and typed typedvalue99"
    assert store.redactor(text) == f"env {REDACTED} and typed {REDACTED}"
    await store.delete("x")
    assert "typedvalue99" not in store.redactor(text)  # still redacted after deletion


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer abc.def-ghi_jkl", f"Authorization: Bearer {REDACTED}"),
    ("key sk-proj-abcdefghijklmnop0123 leaked", f"key {REDACTED} leaked"),
    ("sk-ant-api03-AbCdEf_123-xyz", REDACTED),
    ("https://x/v1?key=AIzaSyA-abcdefghijklmnopqrstu", f"https://x/v1?key={REDACTED}"),
    ("AIzaSyA-abcdefghijklmnopqrstu", REDACTED),
    ('{"api_key": "0123456789abcdef0123456789abcdef"}', f'{{"api_key": "{REDACTED}"}}'),
    ("token=dGhpcyBpcyBhIHNlY3JldCB0b2tlbg==", f"token={REDACTED}"),
    ("gsk_abcdefghijklmnopqrstuvwxyz", REDACTED),
    ("a normal sentence with sk- in it and key=short", "a normal sentence with sk- in it and key=short"),
    # Case-insensitive shapes in any case, even with characters that only case-fold to ASCII.
    ("AUTHORIZATION: BEARER abc.def-ghi_jkl", f"AUTHORIZATION: Bearer {REDACTED}"),
    ("\u017fecret=0123456789abcdef0123", f"\u017fecret={REDACTED}"),
    ("X-API-KEY: 0123456789abcdef0123456789", f"X-API-KEY: {REDACTED}"),
    # A word that is not followed by `=` or `:` is no assignment; a later one still is.
    ("turn 1: stop after 225 ms; tokens: 20 in, 2 out", "turn 1: stop after 225 ms; tokens: 20 in, 2 out"),
    ("tokens: 20 in; Token :  'abcdefghijklmnop1234'", f"tokens: 20 in; Token :  '{REDACTED}'"),
    ('password:"0123456789abcdef01"', f'password:"{REDACTED}"'),
    ("hf-abcdefghijklmnopqrstuvwxyz", REDACTED),
])
def test_redactor_key_shapes(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_redactor_known_values_longest_first_and_objects() -> None:
    r = Redactor(["supersecret", "supersecret-extended", None, "abc"])
    assert r("x supersecret-extended y supersecret z abc") == f"x {REDACTED} y {REDACTED} z abc"
    assert r.redact_obj({"k": ["supersecret", 1, ("supersecret",)], "supersecret": None}) == {
        "k": [REDACTED, 1, (REDACTED,)], REDACTED: None}


def test_redacting_filter_scrubs_formatted_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("opencode.test_secrets")
    filt = RedactingFilter(Redactor(["hunter2-secret"]))
    logger.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO, logger="opencode.test_secrets"):
            logger.info("calling with %s and %s", "hunter2-secret", "Bearer abcdefgh12345")
    finally:
        logger.removeFilter(filt)
    assert caplog.records[-1].getMessage() == f"calling with {REDACTED} and Bearer {REDACTED}"


def _reference_redact(text: str) -> str:
    """The redactor before its word-then-separator check: every shape whose word occurs runs."""
    from opencode_agent.core.secrets import _KEY_SHAPES

    lower = text.casefold()
    for pattern, replacement, words, _follows in _KEY_SHAPES:
        if any(w in lower for w in words):
            text = pattern.sub(replacement, text)
    return text


_PIECES = ["token", "tokens", "KEY", "api_key", "x-api-key", "secret", "Password", "authorization", "bearer ",
           "sk-", "sk-ant-", "hf", "_", "-", "gsk", "AIza", "=", ":", " ", "  ", '"', "'", "\n", "\u017f",
           "0123456789abcdef", "ABCDEFGHIJKLMNOP", "x", ".", "/"]


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(hypothesis.strategies.lists(hypothesis.strategies.sampled_from(_PIECES), max_size=14))
def test_the_redactors_checks_skip_only_text_no_shape_matches(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert Redactor().redact(text) == _reference_redact(text)
