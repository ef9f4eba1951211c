"""`opencode-agent`: the standalone server command and `run`, remote and in-process.

These run the real command lines in child processes, as `python -m opencode_agent ...` does, but
on this checkout: the child loads the repository root as `opencode_agent` (as `conftest.py` does)
before it runs `__main__`, so an installed copy elsewhere (an editable install of another clone)
is never what is tested.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import aiohttp.client
import pytest

from opencode_agent.cli import run_remote
from opencode_agent.terminal import Printer
from opencode_agent.core.store import SqliteStore
from opencode_agent.tests.fakes.comfyui_http import FakeComfyUI
from opencode_agent.tests.fakes.llm_servers import FakeToolCall, Reply, fake_llm  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

# `python -m opencode_agent` on this checkout: the root's path is the first argument.
LAUNCH = """
import importlib.util, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal, even in a background job
root = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("opencode_agent", root + "/__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules["opencode_agent"] = module
spec.loader.exec_module(module)
runpy.run_module("opencode_agent", run_name="__main__", alter_sys=True)
"""


def command(*args: str) -> list[str]:
    """The command line of `opencode-agent ARGS` on this checkout."""
    return [sys.executable, "-c", LAUNCH, str(ROOT), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    proc, url = start_server(tmp_path / "data")
    yield url
    stop(proc)


def start_server(data: Path) -> tuple[subprocess.Popen[str], str]:
    """`opencode-agent serve` on a free port, once it answers."""
    port = free_port()
    proc = subprocess.Popen(command("serve", "--port", str(port), "--data-dir", str(data)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/opencode/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the server did not start: " + (proc.stdout.read() if proc.stdout else ""))
    return proc, url


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def send_json(method: str, url: str, body: Any) -> dict:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def test_serve_answers_and_run_streams_against_it(server: str) -> None:
    assert get(server + "/opencode/version")["protocol"] == 1
    with urllib.request.urlopen(server + "/opencode/", timeout=5) as page:
        assert b"<html" in page.read().lower()
    done = cli("run", "hello from the terminal", "--skill", "echo", "--server", server)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello from the terminal"
    sessions = get(server + "/opencode/sessions")["sessions"]
    assert len(sessions) == 1 and sessions[0]["title"] == "hello from the terminal"


def test_run_labels_several_roles_and_fails_on_an_error_run(server: str) -> None:
    # Without the seeded Ollama profile (a keyless local server) no provider can be chosen.
    urllib.request.urlopen(urllib.request.Request(server + "/opencode/providers/ollama", method="DELETE"), timeout=5)
    done = cli("run", "two voices", "--skill", "echo", "--skill", "assistant", "--server", server)
    assert done.returncode == 1  # the assistant has no provider configured: a clear error
    assert "[echo] two voices" in done.stdout
    assert "no provider is chosen" in done.stderr


async def test_run_asks_the_chosen_provider_and_model(server: str, fake_llm: Any) -> None:
    send_json("POST", server + "/opencode/providers", {"name": "fw", "kind": "openai", "base_url": fake_llm.url + "/v1",
                                                        "default_model": "not-this-one"})
    send_json("PUT", server + "/opencode/providers/fw/key", {"key": "sk-cli-test-0123456789abcdef"})
    fake_llm.push(Reply("Hello from the fake model."))
    proc = await asyncio.create_subprocess_exec(
        *command("run", "hello", "--skill", "assistant", "--provider", "fw", "--model", "gpt-cli", "--server", server),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "Hello from the fake model."
    assert [r.body["model"] for r in fake_llm.requests] == ["gpt-cli"]


@pytest.mark.parametrize("args, says", [
    (["--provider", "nope"], ["error: no provider profile nope", "(unknown_provider)"]),
    (["--skill", "Bad Skill!"], ["error: skills.0: String should match pattern", "(invalid)"]),
])
def test_run_in_process_reports_a_bad_request_without_a_traceback(tmp_path: Path, args: list[str],
                                                                     says: list[str]) -> None:
    done = cli("run", "hi", *args, "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert all(part in done.stderr for part in says), done.stderr


def test_run_in_process_on_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = cli("run", "first words", "--skill", "echo", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "first words"
    # The terminal shows the reply and where it went, not the service's log lines.
    assert re.fullmatch(r"\(session ses_\w+\)\n", first.stderr), first.stderr
    sid = first.stderr.strip().removeprefix("(session ").rstrip(")")
    again = cli("run", "second words", "--session", sid, "--data-dir", str(data))
    assert again.returncode == 0 and again.stdout.strip() == "second words"


def test_the_prompt_may_come_from_stdin(tmp_path: Path) -> None:
    done = subprocess.run(command("run", "-", "--skill", "echo", "--data-dir", str(tmp_path / "data")),
                          input="line one\nline two\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "line one\nline two\n"


def test_run_help_says_what_each_option_is_and_the_exit_statuses() -> None:
    done = cli("run", "--help")
    assert done.returncode == 0
    for said in ('"-" reads it from stdin', "--session ID ", "continue this session", "--provider NAME ",
                 "the provider profile", "--model MODEL ", "exit status: 0 done; 1 a run ended in error",
                 "130 Ctrl-C; 143 SIGTERM; 141 stdout was closed"):
        assert said in done.stdout, said
    assert cli("--version").stdout.startswith("opencode-agent ")


def test_a_stdout_that_cannot_encode_the_reply_gets_replacements(tmp_path: Path) -> None:
    """A Windows code page has no emoji: the reply still arrives whole, with `?` in their place."""
    done = subprocess.run(command("run", "party 🎉 time", "--skill", "echo", "--data-dir", str(tmp_path / "data")),
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"party ? time\n"


def test_unknown_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("run", "hi", "--server", url, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: cannot reach Opencode at {url}: ") and "ssl:default" not in done.stderr
    assert "is `opencode-agent serve` running there?" in done.stderr


def test_the_server_url_may_be_given_as_serve_prints_it(server: str) -> None:
    """`serve` says "Opencode on http://127.0.0.1:8189/opencode/": that URL, or a bare host:port,
    names the server as well as its root does."""
    for given in (server + "/opencode/", server.removeprefix("http://")):
        done = cli("run", "hi", "--skill", "echo", "--server", given)
        assert done.returncode == 0 and done.stdout == "hi\n", (given, done.stderr)
    done = cli("run", "hi", "--server", "ftp://127.0.0.1:21")
    assert done.returncode == 2 and "argument --server: not an http:// or https:// URL" in done.stderr


def remote_args(client: Any, prompt: str) -> argparse.Namespace:
    return argparse.Namespace(server=str(client.make_url("")).rstrip("/"), token="test-token", session=None,
                              skill=["echo"], provider=None, model=None, prompt=prompt)


async def test_a_remote_run_that_the_server_stops_streaming_is_an_error(aiohttp_client, make_app, config, capfd) -> None:
    """A reader that falls behind (a pager that stopped reading) is dropped by the server: the
    command says so and exits 2, rather than 0 with half a reply."""
    config.max_client_backlog = 300
    config.echo_delay = 0.0
    client = await aiohttp_client(make_app())
    assert await run_remote(remote_args(client, "word " * 400)) == 2
    assert "error: the server stopped streaming to us: stopped reading (slow consumer)" in capfd.readouterr().err


async def test_a_remote_run_may_stream_longer_than_aiohttps_default_timeout(aiohttp_client, make_app, config,
                                                                            monkeypatch, capfd) -> None:
    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=0.5))  # 300 s, scaled
    config.echo_delay = 0.05
    client = await aiohttp_client(make_app())
    assert await run_remote(remote_args(client, "word " * 20)) == 0
    assert capfd.readouterr().out.strip() == ("word " * 20).strip()


def provider_in(data: Path, url: str) -> dict[str, str]:
    """A data dir whose one provider profile, `fw`, is the fake LLM at `url`; the environment
    holding its key."""
    data.mkdir(parents=True)
    profile = {"name": "fw", "kind": "openai", "base_url": url + "/v1", "default_model": "gpt-cli",
               "key_env": "FW_TEST_KEY"}
    (data / "providers.json").write_text(json.dumps({"version": 1, "profiles": [profile]}))
    return {**os.environ, "FW_TEST_KEY": "sk-cli-test-0123456789abcdef"}


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal stands for the user's")
@pytest.mark.parametrize("typed", [b"y\n", b"n\n", None])
async def test_an_in_process_run_asks_the_terminal_for_permission(tmp_path: Path, fake_llm: Any, aiohttp_server: Any,
                                                                  typed: bytes | None) -> None:
    """An in-process run has no panel to answer a tool's permission request: it used to say
    "answer in the panel" and wait for the gate's two minutes. The terminal answers it now; with
    no terminal (stdin not a tty) it is denied at once."""
    data = tmp_path / "data"
    env = provider_in(data, fake_llm.url)
    comfy = FakeComfyUI()
    comfy.server = await aiohttp_server(comfy.app(), host="127.0.0.1")
    graph = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}
    fake_llm.push(Reply(tool_calls=[FakeToolCall("propose_workflow", {"graph": graph})]), Reply("done."))
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *command("run", "make a cat", "--skill", "assistant", "--skill", "comfyui", "--provider", "fw",
                 "--data-dir", str(data), "--comfyui-url", str(comfy.server.make_url("")).rstrip("/")),
        stdin=slave if typed else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        asked = b""
        if typed:
            asked = await asyncio.wait_for(proc.stderr.readuntil(b"[N]o: "), 30)
            assert b"[permission] propose_workflow {" in asked
            os.write(master, typed)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0 and out == b"done.\n", (asked + err).decode()
    tool_result = fake_llm.requests[1].body["messages"][-1]["content"]
    if typed == b"y\n":  # it ran: there is no panel to show the workflow in
        assert tool_result.startswith("No Opencode panel is open"), tool_result
    else:
        assert tool_result.startswith("not run: "), tool_result
    if typed is None:
        assert b"[propose_workflow denied: it needs permission (edit) and there is no terminal to ask" in err


# --------------------------------------------------------------------------- what `run` prints


def printed(run_ids: list[str], events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """What a printer for a send of `run_ids` writes on stdout after `events`, after each one."""
    out = io.StringIO()
    printer = Printer(out)
    printer.start(run_ids)
    after_each = []
    for ev in events:
        printer.event(ev)
        after_each.append(out.getvalue())
    printer.finish()
    return out.getvalue(), after_each


def delta(run_id: str, skill: str, text: str) -> dict[str, Any]:
    return {"type": "message.delta", "data": {"message_id": "m_" + run_id, "run_id": run_id, "skill": skill,
                                               "text": text}}


def status(run_id: str, skill: str, state: str) -> dict[str, Any]:
    return {"type": "run.status", "data": {"run": {"id": run_id, "session_id": "s", "message_id": "m_" + run_id,
                                                   "skill": skill, "status": state}}}


def test_one_role_streams_token_by_token_and_ends_its_line() -> None:
    out, after_each = printed(["r1"], [delta("r1", "echo", "two"), delta("r1", "echo", " words"),
                                       status("r1", "echo", "completed")])
    assert after_each[:2] == ["two", "two words"]  # live, not held until a line ends
    assert out == "two words\n"


def test_several_roles_print_whole_labelled_lines() -> None:
    out, _ = printed(["r1", "r2"], [
        delta("r1", "echo", "line"), delta("r2", "echo2", "line"), delta("r1", "echo", " one\nline"),
        delta("r2", "echo2", " one\nli"), delta("r2", "echo2", "ne two\n"), status("r2", "echo2", "completed"),
        delta("r1", "echo", " two\nlast"), delta("r1", "echo", " words"), status("r1", "echo", "completed"),
    ])
    assert out == ("[echo] line one\n[echo2] line one\n[echo2] line two\n"
                   "[echo] line two\n[echo] last words\n")


def started(run_id: str, call_id: str, name: str, state: str) -> dict[str, Any]:
    return {"type": "tool.started", "data": {"message_id": "m_" + run_id, "run_id": run_id, "call": {
        "type": "tool_call", "id": call_id, "name": name, "status": state}}}


def test_a_tool_call_is_noted_once_where_the_model_asked_for_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A call is announced as the model asks for it (`pending`, text may follow it) and again as
    it runs: the terminal notes it once, between the words it came between."""
    out, _ = printed(["r1"], [delta("r1", "echo", "Looking."), started("r1", "c1", "lookup", "pending"),
                              delta("r1", "echo", "Then."), started("r1", "c1", "lookup", "running"),
                              status("r1", "echo", "completed")])
    assert out == "Looking.Then.\n"
    assert capsys.readouterr().err == "\n[tool lookup]\n"


def test_only_the_sent_messages_runs_are_printed() -> None:
    """A busy session streams other sends' runs too: their text is not this reply, and their
    failure is not this command's."""
    out, _ = printed(["mine"], [delta("other", "echo", "not mine "), delta("mine", "echo", "mine"),
                                status("other", "echo", "aborted"), status("mine", "echo", "completed")])
    assert out == "mine\n"


def test_several_roles_in_process_print_labelled_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "skills" / "echo2").mkdir(parents=True)
    echo = (ROOT / "skills" / "echo" / "SKILL.md").read_text()
    (data / "skills" / "echo2" / "SKILL.md").write_text(echo.replace("name: echo\n", "name: echo2\n"))
    done = cli("run", "line one\nline two\nlast words", "--skill", "echo", "--skill", "echo2", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines.pop() == ""  # the output ends with a newline
    for role in ("echo", "echo2"):
        assert [line for line in lines if line.startswith(f"[{role}] ")] == [
            f"[{role}] line one", f"[{role}] line two", f"[{role}] last words"]
    assert len(lines) == 6, done.stdout


def test_run_on_a_busy_session_prints_its_own_reply_only(server: str) -> None:
    """Another send's run streams in the session meanwhile, and is aborted: neither its text nor
    its end is this command's."""
    sid = send_json("POST", server + "/opencode/sessions", {"skills": ["echo"]})["id"]
    other = send_json("POST", f"{server}/opencode/sessions/{sid}/messages", {"text": "other " * 1000})["run_id"]
    proc = subprocess.Popen(command("run", "mine", "--session", sid, "--server", server), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(m.get("role") == "user" and "mine" in json.dumps(m["parts"]) for m in
                      get(f"{server}/opencode/sessions/{sid}/messages")["messages"]):
            assert time.monotonic() < deadline and proc.poll() is None, "the command never sent its message"
            time.sleep(0.05)
        time.sleep(0.3)  # the other run streams to the command meanwhile
        send_json("POST", f"{server}/opencode/sessions/{sid}/abort", {"run_id": other})
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == "mine\n"


# --------------------------------------------------------------------------- clear failures


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is how a POSIX terminal sends Ctrl-C")
async def test_ctrl_c_stops_an_in_process_run_stores_it_and_names_the_session(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(*command("run", "word " * 1000, "--skill", "echo", "--data-dir",
                                                         str(data)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = await asyncio.wait_for(proc.stdout.readexactly(len("word word")), 30)  # the reply streams
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err.decode(), err.decode()
    assert rest.endswith(b"\n")
    said = re.search(r"^interrupted; the session is (\S+)$", err.decode(), re.MULTILINE)
    assert said, err.decode()
    store = SqliteStore(data / "opencode.sqlite3")  # read as it was left: no recovery on open
    await store.open()
    try:
        messages, _ = await store.get_messages(said.group(1))
    finally:
        await store.close()
    reply = [m for m in messages if m.role == "assistant"]
    assert [m.status for m in reply] == ["aborted"]  # the user stopped it, and it is stored
    assert reply[0].text().startswith((first + rest).decode().rstrip("\n"))  # all it printed, and maybe more


def wait_for_reply(server: str, sid: str) -> dict[str, Any]:
    """The session's last message once it is an assistant reply that has ended."""
    deadline = time.monotonic() + 30
    while True:
        messages = get(f"{server}/opencode/sessions/{sid}/messages")["messages"]
        if messages and messages[-1]["role"] == "assistant" and messages[-1]["status"] != "streaming":
            return messages[-1]
        assert time.monotonic() < deadline, messages
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals: SIGINT is how a terminal sends Ctrl-C")
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
async def test_ctrl_c_stops_a_remote_run_on_the_server(server: str, signum: int, code: int, word: str) -> None:
    """Nobody reads the reply once the user pressed Ctrl-C (or `timeout` sent SIGTERM): the server
    stops writing (and paying for) it, and it ends `aborted`, not streaming on to no one."""
    proc = await asyncio.create_subprocess_exec(*command("run", "word " * 1000, "--skill", "echo", "--server", server),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await asyncio.wait_for(proc.stdout.readexactly(len("word word")), 30)
        proc.send_signal(signum)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == code and "Traceback" not in err.decode(), err.decode()
    assert rest.endswith(b"\n")
    said = re.search(rf"^{word}; the session is (\S+)$", err.decode(), re.MULTILINE)
    assert said, err.decode()
    assert wait_for_reply(server, said.group(1))["status"] == "aborted"


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_a_closed_stdout_stops_the_reply_quietly(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`run ... | head -1`: the reader left, so the reply stops (`aborted`) and the command ends at
    once with 141, as a shell reports SIGPIPE: no traceback, no "cannot reach Opencode", no hang
    (an in-process run used to skip closing its service and never exit)."""
    data = tmp_path / "data"
    where_args = ["--data-dir", str(data)] if where == "in-process" else ["--server", request.getfixturevalue("server")]
    proc = subprocess.Popen(command("run", "word " * 1000, "--skill", "echo", *where_args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(len("word word")) == b"word word"
        proc.stdout.close()  # as `head` does once it has its line
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
    assert proc.returncode == 141 and err == "", err
    if where == "server":
        sid = get(where_args[1] + "/opencode/sessions")["sessions"][0]["id"]
        assert wait_for_reply(where_args[1], sid)["status"] == "aborted"
    else:
        assert stored_statuses(data) == ["aborted"]


def stored_statuses(data: Path) -> list[str]:
    """The statuses of the assistant messages stored in `data`'s only session."""
    async def read() -> list[str]:
        store = SqliteStore(data / "opencode.sqlite3")
        await store.open()
        try:
            (session,) = await store.list_sessions()
            messages, _ = await store.get_messages(session.id)
        finally:
            await store.close()
        return [m.status for m in messages if m.role == "assistant"]
    return asyncio.run(read())


async def test_a_server_that_is_not_opencode_is_named_so(aiohttp_server: Any) -> None:
    from aiohttp import web

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>a web page</html>", content_type="text/html")

    async def other_json(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/opencode/sessions", html)
    app.router.add_route("*", "/opencode/sessions/{tail:.*}", other_json)
    other = await aiohttp_server(app, host="127.0.0.1")
    url = str(other.make_url("")).rstrip("/")
    for args, status in ((["--skill", "echo"], 200), (["--session", "ses_x"], 404)):
        proc = await asyncio.create_subprocess_exec(*command("run", "hi", *args, "--server", url),
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and "Traceback" not in err.decode(), err.decode()
        assert f"error: {url} is not an Opencode server (HTTP {status})" in err.decode()


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_a_refused_first_message_leaves_no_empty_session(where: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    """A mistyped `@role` (or an empty prompt) is refused after `run` created the session for it:
    that session goes again, or every typo leaves an empty "New chat" in the panel."""
    data = tmp_path / "data"
    where_args = ["--data-dir", str(data)] if where == "in-process" else ["--server", request.getfixturevalue("server")]
    done = cli("run", "@asistant hi", "--skill", "assistant", "--skill", "echo", *where_args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error: no role @asistant; did you mean @assistant? (unknown_role)" in done.stderr
    if where == "server":
        assert get(where_args[1] + "/opencode/sessions")["sessions"] == []
    else:
        assert asyncio.run(session_count(data)) == 0


async def session_count(data: Path) -> int:
    store = SqliteStore(data / "opencode.sqlite3")
    await store.open()
    try:
        return len(await store.list_sessions())
    finally:
        await store.close()


def test_a_server_that_stops_says_the_reply_stopped_too(tmp_path: Path) -> None:
    """The server shutting down ends the stream and the reply (`interrupted`): the command says
    so, not that the reply goes on there."""
    proc, url = start_server(tmp_path / "data")
    try:
        run = subprocess.Popen(command("run", "word " * 1000, "--skill", "echo", "--server", url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stdout.read(len("word word")) == "word word"
        proc.terminate()
        _, err = run.communicate(timeout=30)
    finally:
        stop(proc)
    assert run.returncode == 2 and "Traceback" not in err, err
    assert "error: the server stopped streaming to us: server shutting down; the reply stops there" in err


def test_a_session_id_is_one_path_segment(server: str) -> None:
    """`../../x` is a session id that does not exist, not a way to another URL."""
    done = cli("run", "hi", "--session", "../../x", "--server", server)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "(not_found)" in done.stderr and "../../x" in done.stderr


@pytest.mark.parametrize("command_line", [["run", "hi", "--skill", "echo"], ["serve", "--port", "0"]])
def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path, command_line: list[str]) -> None:
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    if command_line[0] == "serve":
        command_line = ["serve", "--port", str(free_port())]
    done = cli(*command_line, "--data-dir", str(a_file), timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot use the data directory {a_file}: it is a file, not a directory" in done.stderr


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs a directory this user cannot write")
def test_an_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        done = cli("run", "hi", "--skill", "echo", "--data-dir", str(locked / "data"), timeout=30)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot use the data directory" in done.stderr


def test_serve_on_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Opencode on" not in done.stdout  # it never served


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_serve_wants_a_port_number(port: str) -> None:
    done = cli("serve", "--port", port, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --port:" in done.stderr


def test_an_in_process_run_leaves_a_serving_data_dir_alone(server: str, tmp_path: Path) -> None:
    """Opening the data dir recovers it, which would mark the server's live reply `interrupted`:
    the run is refused and pointed at the server instead."""
    sid = send_json("POST", server + "/opencode/sessions", {"skills": ["echo"]})["id"]
    send_json("POST", f"{server}/opencode/sessions/{sid}/messages", {"text": "word " * 100})  # 2 s of streaming
    done = cli("run", "hi", "--skill", "echo", "--data-dir", str(tmp_path / "data"), timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert re.search(r"the data directory .* is in use by another Opencode process \(pid \d+\)", done.stderr)
    assert "--server URL" in done.stderr
    deadline = time.monotonic() + 30
    while (reply := get(f"{server}/opencode/sessions/{sid}/messages")["messages"][-1])["status"] == "streaming":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert reply["role"] == "assistant" and reply["status"] == "completed"


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_in_process_run_has_the_comfyui_tools_given_a_comfyui_url(tmp_path: Path, how: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # never called: the echo role uses no tools
    args = ["run", "hi", "--skill", "echo", "--skill", "comfyui", "--data-dir", str(tmp_path / "data")]
    if how == "option":
        done = cli(*args, "--comfyui-url", url)
    else:
        done = subprocess.run(command(*args), capture_output=True, text=True, timeout=60,
                              env={**os.environ, "OPENCODE_COMFYUI_URL": url})
    assert done.returncode == 0, done.stderr  # without a ComfyUI: "unknown skill(s): comfyui"
    assert done.stdout == "hi\n"


def test_a_bug_is_not_reported_as_a_failed_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """Exit 1 says "a run ended in error": an unexpected failure exits 3, with its traceback."""
    from opencode_agent import cli as cli_module

    async def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_module, "run_in_process", broken)
    assert cli_module.main(["run", "hi", "--data-dir", str(tmp_path / "data")]) == 3
    err = capsys.readouterr().err
    assert "RuntimeError: a bug" in err and "error: an unexpected failure" in err
