"""What `opencode-agent run` shows on the terminal: the replies to the message it sent.

`Printer` writes one send's runs (one role as it streams, several as labelled lines) and their
outcome; a stdout that was closed (`| head -1`) becomes `ReaderGone`, which stops the reply.
`PermissionAsker` puts their tools' permission requests to the person at the terminal.
Imports protocol only; `cli` drives both.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Awaitable, Callable, Sequence

from .core.protocol import FINAL_RUN_STATUSES


class ReaderGone(Exception):
    """stdout's reader went away (`| head -1`, a pager that quit): nobody reads the reply any more."""


def replace_unencodable(stream: Any) -> None:
    """A reply may hold any character (an emoji); a stdout whose encoding lacks one (a Windows
    console's or file's code page, `PYTHONIOENCODING=ascii`) shows `?` for it, not a crash mid-reply."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


class Printer:
    """Writes the replies to one sent message, and nothing else of the session.

    A session may be busy with other sends (a panel, another terminal): only events of this
    send's runs are printed, or `run` would print another run's text as its reply. One role
    streams straight through, token by token. Several roles stream at once, their tokens
    interleaved, so each run's text is held until a line is complete and printed as `[role] line`
    (a run's last, unfinished line when the run ends): lines never split mid-word.
    """

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout  # looked up now: the stdout of the moment, not of the import
        self.run_ids: set[str] = set()
        self.unfinished: set[str] = set()  # run ids without a final status yet
        self.partial: dict[str, tuple[str, str]] = {}  # run id -> (role, its line not ended yet)
        self.calls: set[tuple[str, str]] = set()  # (run id, call id) of the tool calls noted
        self.failed = False
        self.mid_line = False  # stdout's last character is not a newline
        self.reader_gone = False  # stdout was closed: nothing more is written

    def start(self, run_ids: Sequence[str]) -> None:
        """The runs of the message sent: one is unlabelled; each is unfinished until its final status."""
        self.run_ids = set(run_ids)
        self.unfinished = set(run_ids)

    def _write(self, text: str) -> None:
        """Write now; a closed stdout is `ReaderGone`, which stops the reply."""
        if not text or self.reader_gone:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.reader_gone = True
            raise ReaderGone from None
        self.mid_line = not text.endswith("\n")

    def delta(self, run_id: str, skill: str, text: str) -> None:
        if len(self.run_ids) <= 1:
            self._write(text)
            return
        *lines, rest = (self.partial.get(run_id, (skill, ""))[1] + text).split("\n")
        self.partial[run_id] = (skill, rest)
        self._write("".join(f"[{skill}] {line}\n" for line in lines))

    def end_run(self, run_id: str) -> None:
        """A labelled run's last line, ended: a reply need not end with a newline of its own."""
        skill, rest = self.partial.pop(run_id, ("", ""))
        if rest:
            self._write(f"[{skill}] {rest}\n")

    def finish(self) -> None:
        """Print what is held, and end stdout with a newline so that the shell's prompt (or the
        next output) starts a line of its own. Called on the way out too, so it never raises."""
        try:
            for run_id in list(self.partial):
                self.end_run(run_id)
            if self.mid_line:
                self._write("\n")
        except ReaderGone:
            pass

    def note(self, text: str, end: str = "\n") -> None:
        """A line on stderr; on a line of its own on a terminal, even in the middle of a reply."""
        try:
            print(("\n" if self.mid_line else "") + text, end=end, file=sys.stderr, flush=True)
        except BrokenPipeError:
            pass  # stderr closed too (`2>&1 | head`): the note has no one to go to

    def event(self, ev: dict[str, Any]) -> None:
        t, data = ev.get("type"), ev.get("data", {})
        run_id = data["run"]["id"] if t == "run.status" else data.get("run_id")
        if run_id not in self.run_ids:
            return  # another send's run in the same session (or no run at all)
        if t == "message.delta":
            self.delta(run_id, data.get("skill") or "assistant", data["text"])
        elif t == "tool.started":
            self._call(run_id, data["call"])
        elif t == "run.status":
            self._run_status(data["run"])

    def _call(self, run_id: str, call: dict[str, Any]) -> None:
        """Note a tool call once, as first announced: where the model asked for it in the reply
        (`pending`, text may follow it), not again as it starts running."""
        key = (run_id, str(call.get("id")))
        if key not in self.calls:
            self.calls.add(key)
            self.note(f"[tool {call['name']}]")

    def _run_status(self, run: dict[str, Any]) -> None:
        if run["status"] not in FINAL_RUN_STATUSES:
            return
        self.unfinished.discard(run["id"])
        self.end_run(run["id"])
        if run["status"] == "error":
            self.failed = True
            self.note(f"[{run['skill']}] error: {run.get('error')}")
        elif run["status"] in ("aborted", "interrupted"):
            self.failed = True
            self.note(f"[{run['skill']}] {run['status']}")


# Answers a permission request (request id, "allow" or "deny", remember): False if it was no
# longer open (answered in the panel, or expired).
Answer = Callable[[str, str, bool], Awaitable[bool]]
YES, ALWAYS = ("y", "yes"), ("a", "always")


class PermissionAsker:
    """Asks the person at the terminal whether a tool of this send's runs may run.

    Why: a tool that needs permission (`queue_workflow` runs a graph) waits for a person. An
    in-process run has no panel that could answer, and a terminal user should not need one. With
    no terminal to ask (stdin is piped or a file), an in-process run's request is denied at once,
    since waiting would only hold the command for the gate's timeout; a remote one is left to the
    panel. Printing waits while the question is open: the other roles' lines follow the answer.
    """

    def __init__(self, printer: Printer, answer: Answer, *, panel: bool, stdin: Any = None) -> None:
        self.printer = printer
        self.answer = answer
        self.panel = panel  # a panel on the server may answer instead
        self.stdin = stdin or sys.stdin

    async def event(self, ev: dict[str, Any]) -> None:
        data = ev.get("data", {})
        if ev.get("type") != "permission.requested" or data.get("run_id") not in self.printer.run_ids:
            return
        said = await self._ask(f"[permission] {data['tool']} {data['summary']}: allow? "
                               "[y]es, [a]lways in this session, [N]o: ")
        if said is None and self.panel:
            self.printer.note(f"[permission needed for {data['tool']}: answer in the panel]")
            return
        if said is None:
            self.printer.note(f"[{data['tool']} denied: it needs permission ({data['permission_class']}) and there "
                              "is no terminal to ask; allow it in the permission rules to run it unattended]")
        decision = "allow" if said in YES + ALWAYS else "deny"
        if not await self.answer(data["request_id"], decision, said in ALWAYS):
            self.printer.note(f"[{data['tool']}: the request was answered elsewhere, or expired]")

    async def _ask(self, question: str) -> str | None:
        """The answer typed at the terminal, lower case; None if stdin is no terminal."""
        if sys.platform == "win32" or not self.stdin.isatty():
            return None
        self.printer.note(question, end="")
        loop = asyncio.get_running_loop()
        fd = self.stdin.fileno()
        line: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(fd, lambda: line.done() or line.set_result(os.read(fd, 4096)))
        try:
            return (await line).decode(errors="replace").strip().lower()  # b"": Ctrl-D, a no
        except asyncio.CancelledError:  # Ctrl-C: what is said next starts a line of its own
            print(file=sys.stderr, flush=True)
            raise
        finally:
            loop.remove_reader(fd)
