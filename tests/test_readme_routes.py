"""The README's route examples, run: every `curl` line in its "Routes" block is sent to a real
server on loopback (the test app, a SQLite file in a temporary folder), and every route in the
route table must have an example. An example that no longer matches the server fails here
rather than in a user's terminal.

The curl lines are parsed (method, headers, body, URL), not run with curl, so the test needs no
curl binary. Examples that name ids a fresh server cannot have (`msg_abc`, `perm_1`) or that
need ComfyUI (its output folder) must still get a clear error, never a 5xx; the providers the
examples name answer from a fake on loopback.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path
from typing import Any

from fakes.llm_servers import FakeLLMServer, Reply, fake_llm  # noqa: F401 - fixture
from opencode_agent.routes import ROUTES

README = Path(__file__).resolve().parent.parent / "README.md"
# Examples whose ids (or revision) a fresh server does not have, or that need ComfyUI: a 4xx is right.
CLEAR_ERRORS = ("before=msg_abc", "perm_1", "source=comfyui", "msg_456", "9f86d081884c7d659a2f")


def curl_lines() -> list[str]:
    """The `curl` commands of the README's "Routes" block, continuation lines joined."""
    block = README.read_text(encoding="utf-8").split("## Routes", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip().startswith("curl"):
            lines.append(current.strip())
        current = ""
    return lines


def parse_curl(line: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, URL, headers, body) of one curl line; a trailing `# comment` is dropped."""
    args = shlex.split(line, comments=True)
    method, headers, body, url = "GET", {}, None, ""
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-X":
            method, i = args[i + 1], i + 1
        elif arg == "-H":
            name, _, value = args[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 1
        elif arg == "-d":
            body, i = args[i + 1], i + 1
            method = "POST" if method == "GET" else method
        elif arg in ("-o", "-m"):
            i += 1
        elif not arg.startswith("-"):
            url = arg
        i += 1
    return method, url, headers, body


def template_of(path: str) -> str:
    """`/opencode/sessions/{session_id}/abort` → a regex matching the README's concrete paths."""
    return "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"


def test_every_route_has_an_example() -> None:
    examples = [parse_curl(line) for line in curl_lines()]
    paths = {(m, re.sub(r"^https?://[^/]+", "", u.replace("$O", "/opencode")).split("?", 1)[0])
             for m, u, _, _ in examples}
    missing = [f"{r.method} {r.path}" for r in ROUTES
               if not any(m == r.method and re.match(template_of(r.path), p) for m, p in paths)]
    assert not missing, f"routes without a curl example in the README: {missing}"


async def test_every_example_works_against_a_fresh_server(client: Any, fake_llm: FakeLLMServer) -> None:
    # The seeded Ollama profile (the examples' provider) answers from a fake on loopback.
    assert (await client.patch("/opencode/providers/ollama", json={"base_url": fake_llm.url})).status == 200
    fake_llm.push(*(Reply(text="fine") for _ in range(8)))
    created = await client.post("/opencode/sessions", json={"skills": ["echo"]})
    sid = (await created.json())["id"]
    failures = []
    for line in curl_lines():
        method, url, headers, body = parse_curl(line)
        path = re.sub(r"^https?://[^/]+", "", url.replace("$O", "/opencode").replace("ses_123", sid))
        if path.endswith("/ws"):
            headers = {}  # the upgrade itself is the WebSocket tests' business
        response = await client.request(method, path, headers=headers, data=body)
        try:
            if headers.get("Accept") == "text/event-stream" or "/events" in path:
                # A live stream: it may end (a reply finished) or go on; either is fine.
                if response.status < 300:
                    assert response.content_type == "text/event-stream", line
                try:
                    await asyncio.wait_for(response.content.read(), 0.3)
                except asyncio.TimeoutError:
                    pass
            else:
                await response.read()
        finally:
            response.close()
        expected_error = any(marker in line for marker in CLEAR_ERRORS) or path.endswith("/ws")
        ok = 400 <= response.status < 500 if expected_error else response.status < 300
        if not ok:
            failures.append(f"{response.status} {line}")
        if '"name":"openai"' in line:  # the profile made from its preset: its models from the fake
            await client.patch("/opencode/providers/openai", json={"base_url": fake_llm.url + "/v1"})
    assert not failures, "README examples that fail:\n" + "\n".join(failures)
