"""schemathesis against `/opencode/openapi.json` on a live standalone server.

The server is a real process (`helpers_server.StandaloneServer`, loopback only, even for the URLs
a fuzzer makes it call); its `ollama` profile points at a loopback fake so routes that reach a
provider answer instead of reporting it unreachable. schemathesis' CLI runs its coverage, fuzzing
and stateful phases (positive and negative data, links inferred between operations) with two
checks: `not_a_server_error` (no 5xx) and `response_schema_conformance` (every answer matches the
document). The two streaming endpoints (`/events` SSE and `/ws`) are left out: they never end. The one
exception to "no 5xx" is the model list of a profile whose upstream is down: a 502, by design.

CI runs a bounded pass (`-n 8`); `OPENCODE_SCHEMATHESIS_FULL=1` runs `-n 100`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers_server import StandaloneServer
from opencode_agent.tests.fakes.llm_servers import FakeLLMServer, fake_llm  # noqa: F401

FULL = bool(os.environ.get("OPENCODE_SCHEMATHESIS_FULL"))
EXAMPLES = 100 if FULL else 8
PHASES = "examples,coverage,fuzzing,stateful"
TIMEOUT = 900 if FULL else 120
# One route is a gateway by design: the model list comes from the provider, and the profiles
# schemathesis creates point at ports where nothing listens. Its 502 (`provider_unreachable`, in
# the documented error envelope, checked by response_schema_conformance) is the right answer,
# not a server error; every other operation must stay below 500.
CONFIG = """
[[operations]]
include-path = "/opencode/providers/{name}/models"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502"]
"""


@pytest.mark.timeout(TIMEOUT + 60)  # the suite's 120 s is too short for the full form
async def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(tmp_path: Path,
                                                                         fake_llm: FakeLLMServer) -> None:
    server = StandaloneServer(tmp_path / "data", config={"echo_delay": 0.001, "commit_max_delay": 0.005},
                              log_path=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.patch(server.url + "/opencode/providers/ollama",
                                  json={"base_url": fake_llm.url, "extra": {"max_attempts": 1}}) as r:
                assert r.status == 200, await r.text()
        report = tmp_path / "report.json"
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
            "run", server.url + "/opencode/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", PHASES, "--max-examples", str(EXAMPLES), "--seed", "20261124",
            "--exclude-path-regex", r"(/events|/ws)$",
            "--request-timeout", "10", "--workers", "1", "--generation-database", "none",
            "--no-color", "--output-sanitize", "false", "--report", "json", "--report-json-path", str(report),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-8000:]
        assert server.alive, "the server died under schemathesis"
        log = server.read_log()
        assert "unexpected error in" not in log, log[log.find("unexpected error in") - 200:][:3000]
        print("\n" + _summary(text, report))
    finally:
        await asyncio.to_thread(server.stop)


def _summary(text: str, report: Path) -> str:
    """The lines worth keeping (operations, phases, test cases) for RELIABILITY.md."""
    keep = [line.strip() for line in text.splitlines()
            if any(w in line for w in ("Operations:", "generated", "passed", "API Links", "Scenarios"))]
    extra: dict[str, Any] = {}
    if report.exists():
        try:
            extra = {k: v for k, v in json.loads(report.read_text()).items() if isinstance(v, (int, str))}
        except ValueError:
            pass
    return "schemathesis: " + " | ".join(keep) + (f" | {extra}" if extra else "")
