"""`opencode-agent`: run the standalone server, or chat from the terminal.

    opencode-agent serve [--host 127.0.0.1] [--port 8189] [--data-dir DIR] [--comfyui-url URL]
    opencode-agent run "prompt" [--session ID] [--skill ID ...] [--provider NAME] [--model M]
                                [--server URL | --data-dir DIR [--comfyui-url URL]]

`run` streams the reply (one role: as it comes; several: whole lines, each labelled `[role] `)
and exits 1 when a run ends in error or aborted, 2 when the request could not be made, 130 on
Ctrl-C, 143 on SIGTERM, 141 when stdout is closed (each stops the reply, on the server too).
With `--server` (or `$OPENCODE_SERVER`) it talks to a running Opencode over HTTP + SSE; otherwise
it opens the data directory in-process, which one process at a time may do (a `serve` or ComfyUI
using it: send through that one with `--server`). `-` as the prompt reads it from stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Coroutine, Sequence
from urllib.parse import quote

from .core.config import Config
from .terminal import Answer, PermissionAsker, Printer, ReaderGone, replace_unencodable
from .version import __version__

log = logging.getLogger("opencode.cli")

# Exit codes: 0 done, 1 a run ended in error (or was aborted), 2 the request could not be made
# (a bad argument, session or skill, an unreachable server, a data dir in use or unusable).
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a command that SIGINT ended
EXIT_TERMINATED = 143  # SIGTERM, likewise
EXIT_READER_GONE = 141  # stdout's reader went away (`| head -1`), as a shell reports SIGPIPE
EXIT_BUG = 3


RUN_EPILOG = """\
A message starting with @role goes to that role only.
With --server (or $OPENCODE_SERVER) it sends through a running Opencode; otherwise it opens the
data directory itself.

exit status: 0 done; 1 a run ended in error or was aborted; 2 the request could not be made;
130 Ctrl-C; 143 SIGTERM; 141 stdout was closed (all three stop the reply); 3 an unexpected failure (a bug)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opencode-agent", description="Opencode for ComfyUI")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,run}")
    serve = sub.add_parser("serve", help="run the standalone server", description="Run the standalone server.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=8189, help="port to listen on (default: %(default)s)")
    _data_dir_option(serve)
    _comfyui_url_option(serve)
    serve.add_argument("--echo-delay", type=float, default=None, help=argparse.SUPPRESS)
    run = sub.add_parser("run", help="send one message and stream the reply", epilog=RUN_EPILOG,
                         description="Send one message and stream the reply (several roles: lines labelled [role]).",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("prompt", help='the message; "-" reads it from stdin')
    run.add_argument("--session", metavar="ID", help="continue this session (else a new one)")
    run.add_argument("--skill", metavar="ID", action="append", default=[],
                     help="a role or tool skill for the session (repeatable)")
    run.add_argument("--provider", metavar="NAME", help="the provider profile to use")
    run.add_argument("--model", metavar="MODEL", help="the model to ask (else the profile's default)")
    run.add_argument("--server", metavar="URL", type=server_url, default=os.environ.get("OPENCODE_SERVER"),
                     help="a running Opencode, e.g. http://127.0.0.1:8189 (default: $OPENCODE_SERVER; else in-process)")
    run.add_argument("--token", default=os.environ.get("OPENCODE_TOKEN"),
                     help="the server's access token, for a server not on this machine (default: $OPENCODE_TOKEN)")
    _data_dir_option(run, " (in-process only)")
    _comfyui_url_option(run, " (in-process only)")
    return parser.parse_args(argv)


def _data_dir_option(parser: argparse.ArgumentParser, where: str = "") -> None:
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help=f"where sessions, profiles and keys live (default: $OPENCODE_DATA_DIR, "
                             f"else the platform's data folder){where}")


def _comfyui_url_option(parser: argparse.ArgumentParser, where: str = "") -> None:
    """`serve` and an in-process `run` both open the service: both may drive a ComfyUI."""
    parser.add_argument("--comfyui-url", metavar="URL", default=os.environ.get("OPENCODE_COMFYUI_URL"),
                        help=f"a ComfyUI to drive with the ComfyUI tools, e.g. http://127.0.0.1:8188 "
                             f"(default: $OPENCODE_COMFYUI_URL){where}")


def port_number(text: str) -> int:
    """A TCP port to listen on: an argparse error for anything else, not a traceback from the bind."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {port}")
    return port


def server_url(text: str) -> str:
    """The server's base URL, from what a user pastes: `serve`'s banner (`http://host:port/opencode/`),
    a ComfyUI's `/api/opencode`, or a bare `host:port`. Empty (an unset variable): in-process."""
    url = text.strip().rstrip("/")
    if not url:
        return ""
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return url.removesuffix("/opencode")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(handlers=[_log_handler(args.command)], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(args) if args.command == "serve" else run(args)
    except (KeyboardInterrupt, Terminated) as exc:  # in `run` (`serve` stops on its own): the reply stopped
        session = f"; the session is {args.session}" if args.session else ""
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        print(f"{'interrupted' if ctrl_c else 'terminated'}{session}", file=sys.stderr)
        return EXIT_INTERRUPTED if ctrl_c else EXIT_TERMINATED
    except (ReaderGone, BrokenPipeError):  # the reply was stopped; nobody is left to tell
        _discard_output()
        return EXIT_READER_GONE
    except Exception:  # a bug: its traceback for the report, and not the exit code of a failed run
        traceback.print_exc()
        print("error: an unexpected failure (a bug: the traceback above helps to report it)", file=sys.stderr)
        return EXIT_BUG


def _log_handler(command: str) -> logging.Handler:
    """A server's log is its output. A `run` shares the terminal with the reply, and prints each
    run's outcome itself: only failures that are not a run's (a bug) are logged there. The level
    is the handler's: the service hands its records to the root's handlers directly."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if command == "serve" else logging.ERROR)
    return handler


def _discard_output() -> None:
    """Point stdout and stderr at the null device: Python flushes them at exit, and a flush into a
    closed pipe would print "Exception ignored ... BrokenPipeError" after all."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):  # not a real file (a test's capture)
            pass


class Terminated(Exception):
    """SIGTERM (`timeout 60 opencode-agent run ...`, `kill`): the run is stopped as Ctrl-C stops it."""


def run_until_ctrl_c(coro: Coroutine[Any, Any, int]) -> int:
    """`asyncio.run`, where Ctrl-C (SIGTERM) cancels the command's task and then raises
    KeyboardInterrupt (Terminated).

    Why: Python 3.11's runner does this for Ctrl-C itself, but on 3.10 the interrupt lands
    wherever the loop is, the task's `finally` (stopping the reply, closing the service) never
    runs, and the store's threads keep the process from exiting; and SIGTERM would end the
    process on the spot, leaving a remote reply streaming to nobody.
    """
    async def guarded() -> int:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        stopped_by: list[int] = []

        def on_signal(signum: int) -> None:
            stopped_by.append(signum)
            task.cancel()  # type: ignore[union-attr]

        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # Windows: Python's own handling
            return await coro
        try:
            return await coro
        except asyncio.CancelledError:
            if stopped_by:
                raise (KeyboardInterrupt if stopped_by[0] == signal.SIGINT else Terminated)() from None
            raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return asyncio.run(guarded())


def run(args: argparse.Namespace) -> int:
    """`run`, its failures as one line each: 2 for a request that could not be made at all."""
    replace_unencodable(sys.stdout)
    if args.prompt == "-":  # `git diff | opencode-agent run -`, or a prompt kept in a file
        args.prompt = sys.stdin.read().rstrip("\n")
    if not args.server:
        from pydantic import ValidationError

        from .core.datadir import DataDirInUse
        from .core.errors import OpencodeError

        try:
            return run_until_ctrl_c(run_in_process(args))
        except DataDirInUse as exc:
            print(f"error: {exc.message} ({exc.code}): send through it with --server URL instead", file=sys.stderr)
            return 2
        except OpencodeError as exc:  # a bad session, skill or provider: the same answer a server gives
            print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
            return 2
        except ValidationError as exc:  # a malformed skill id, an over-long prompt
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "input"
            print(f"error: {where}: {first['msg']} (invalid)", file=sys.stderr)
            return 2
    import aiohttp

    try:
        return run_until_ctrl_c(run_remote(args))
    except BrokenPipeError:  # our own stderr closed: not a network failure
        raise
    except NotOpencode as exc:
        print(f"error: {args.server} is not an Opencode server (HTTP {exc.status})", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        why = getattr(exc, "os_error", None) or exc  # "Connection refused", without aiohttp's "ssl:default"
        print(f"error: cannot reach Opencode at {args.server}: {why} (is `opencode-agent serve` running there?)",
              file=sys.stderr)
        return 2


def config_from(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.data_dir is not None:
        cfg.data_dir = args.data_dir
    if getattr(args, "comfyui_url", None):
        cfg.comfyui_url = args.comfyui_url
    if getattr(args, "echo_delay", None) is not None:
        cfg.echo_delay = args.echo_delay
    return cfg


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .core.errors import OpencodeError
    from .routes import create_app
    from .wiring import standalone

    cfg = config_from(args)
    wiring = standalone(cfg)
    app = create_app(cfg, wiring.skill_factories(), wiring.image_loader())
    app.on_startup.append(freeze_startup_objects)

    def listening(_: str) -> None:  # aiohttp's "Running on" line: said once the port is ours
        print(f"Opencode on http://{args.host}:{args.port}/opencode/ (data in {cfg.data_dir})", flush=True)

    try:
        web.run_app(app, host=args.host, port=args.port, access_log=None, print=listening)
    except OpencodeError as exc:  # the data dir is in use, or cannot be used
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return 2
    except OSError as exc:  # the service is open by then (its data dir checked): the bind failed
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


async def freeze_startup_objects(app: Any) -> None:
    """Move everything alive after start-up out of the collector's reach: full collections then
    walk only what requests create, which keeps their pauses short under load."""
    import gc

    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- run


async def run_in_process(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .core.bus import QueueSubscriber
    from .core.errors import OpencodeError
    from .core.protocol import SendBody
    from .core.service import OpencodeService
    from .wiring import standalone

    cfg = config_from(args)
    wiring = standalone(cfg)
    svc = OpencodeService(cfg, skill_factories=wiring.skill_factories(), image_loader=wiring.image_loader())
    await svc.start()
    printer = Printer()
    try:
        sid, created = await _session_in_process(svc, args)
        sub = QueueSubscriber()
        await svc.bus.subscribe(sid, sub, svc.bus.last_seq(sid) if svc.bus.last_seq(sid) else None)
        try:
            result = await svc.sessions.send(sid, SendBody(text=args.prompt))
        except (OpencodeError, ValidationError):
            if created:  # a refused first message (a mistyped @role) leaves no empty chat behind
                await svc.sessions.delete(sid)
            raise
        printer.start(result.run_ids)
        try:
            await _print_until_done(sub, printer, PermissionAsker(printer, _gate_answer(svc, sid), panel=False))
        except (asyncio.CancelledError, ReaderGone):
            await _stop_in_process(svc, sid, printer.unfinished)
            raise
        printer.finish()
        print(f"(session {sid})", file=sys.stderr)
        return 1 if printer.failed else 0
    finally:
        printer.finish()  # cut short (Ctrl-C): the reply's line still ends
        await svc.close()  # stores the stopped runs (and stops any other as `interrupted`)


def _session_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The session settings given on the command line."""
    return {k: v for k, v in (("skills", args.skill), ("provider", args.provider), ("model", args.model)) if v}


async def _session_in_process(svc: Any, args: argparse.Namespace) -> tuple[str, bool]:
    """The session to send to (`--session`, changed as the options say, or a new one), and
    whether this command created it."""
    from .core.protocol import SessionCreate, SessionPatch

    if args.session is not None:
        if changes := _session_changes(args):
            await svc.sessions.patch(args.session, SessionPatch(**changes))
        return args.session, False
    created = await svc.sessions.create(SessionCreate(skills=args.skill, provider=args.provider, model=args.model))
    args.session = created.id  # for `main` to name on Ctrl-C
    return created.id, True


async def _print_until_done(sub: Any, printer: Printer, asker: PermissionAsker) -> None:
    while printer.unfinished:
        ev = await sub.queue.get()
        if ev is None:
            return
        data = ev.model_dump(mode="json")
        printer.event(data)
        await asker.event(data)


def _gate_answer(svc: Any, sid: str) -> Answer:
    from .core.errors import OpencodeError

    async def answer(request_id: str, decision: str, remember: bool) -> bool:
        try:
            svc.gate.reply(sid, request_id, decision, remember)
        except OpencodeError:  # answered or expired meanwhile
            return False
        return True
    return answer


async def _stop_in_process(svc: Any, sid: str, run_ids: set[str]) -> None:
    """Ctrl-C or a closed stdout: the user stopped the reply, so it ends `aborted` (as the
    panel's stop button ends it), not `interrupted` as a service going away leaves it."""
    from .core.errors import OpencodeError

    for run_id in sorted(run_ids):
        try:
            await svc.sessions.abort(sid, run_id)
        except OpencodeError:  # it ended meanwhile
            pass


async def run_remote(args: argparse.Namespace) -> int:
    printer = Printer()
    try:
        return await _run_remote(args, printer)
    finally:
        printer.finish()  # cut short (Ctrl-C): the reply's line still ends


async def _run_remote(args: argparse.Namespace, printer: Printer) -> int:
    import aiohttp

    base = args.server
    headers = {"X-Opencode-Token": args.token} if args.token else {}
    # No total timeout: a reply may stream for longer than aiohttp's default five minutes.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        sid, created = await _session_remote(http, base, args)
        session_url = f"{base}/opencode/sessions/{quote(sid, safe='')}"
        async with http.post(f"{session_url}/messages", json={"text": args.prompt},
                             headers={"Accept": "text/event-stream"}) as resp:
            if resp.status >= 400:
                try:
                    await _json(resp)
                finally:
                    if created:  # a refused first message (a mistyped @role) leaves no empty chat behind
                        await http.delete(session_url)
            if resp.content_type != "text/event-stream":
                raise NotOpencode(resp.status)
            try:
                asker = PermissionAsker(printer, _http_answer(http, session_url), panel=True)
                if (reason := await _print_stream(resp, printer, asker)) is not None:
                    return _cut_short(printer, sid, f"the server stopped streaming to us: {reason}", _AFTER_DROP.get(
                        reason, "the reply goes on on the server"))
            except (asyncio.CancelledError, ReaderGone):
                await _stop_remote(http, base, sid, printer.unfinished)
                raise
        printer.finish()
        if printer.unfinished:
            return _cut_short(printer, sid, "the stream ended before the reply did",
                              "the reply may go on on the server")
        print(f"(session {sid})", file=sys.stderr)
        return 1 if printer.failed else 0


async def _session_remote(http: Any, base: str, args: argparse.Namespace) -> tuple[str, bool]:
    """As `_session_in_process`, over HTTP."""
    if args.session is not None:
        if changes := _session_changes(args):
            await _json(await http.patch(f"{base}/opencode/sessions/{quote(args.session, safe='')}", json=changes))
        return args.session, False
    body = {"skills": args.skill, "provider": args.provider, "model": args.model}
    resp = await http.post(f"{base}/opencode/sessions", json=body)
    args.session = _session_id(await _json(resp), resp.status)  # for `main` to name on Ctrl-C
    return args.session, True


async def _print_stream(resp: Any, printer: Printer, asker: PermissionAsker) -> str | None:
    """Print the send's SSE stream; the reason the server gave if it stopped streaming to us."""
    async for event, data in _sse(resp):
        if event == "accepted":
            printer.start(json.loads(data)["run_ids"])
        elif event == "dropped":  # we read too slowly (a pager that stopped reading)
            return str(json.loads(data).get("reason"))
        else:
            printer.event(ev := json.loads(data))
            await asker.event(ev)
    return None


def _http_answer(http: Any, session_url: str) -> Answer:
    async def answer(request_id: str, decision: str, remember: bool) -> bool:
        body = {"request_id": request_id, "decision": decision, "remember": remember}
        async with http.post(f"{session_url}/permissions", json=body) as resp:
            return resp.status < 400  # a 404: answered in the panel, or expired
    return answer


async def _stop_remote(http: Any, base: str, sid: str, run_ids: set[str]) -> None:
    """Ctrl-C or a closed stdout: nobody reads the reply any more, so the server stops writing
    (and paying for) it; it ends `aborted`, as the panel's stop button ends it."""
    import aiohttp

    url = f"{base}/opencode/sessions/{quote(sid, safe='')}/abort"
    for run_id in sorted(run_ids):
        try:
            async with http.post(url, json={"run_id": run_id}, timeout=aiohttp.ClientTimeout(total=5)):
                pass  # a 404: it ended meanwhile
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            print(f"error: could not stop the reply on the server ({exc or type(exc).__name__}): "
                  f"it goes on in session {sid}", file=sys.stderr)
            return


# What became of the reply when the server stopped streaming it to us, by the reason it gave.
_AFTER_DROP = {"server shutting down": "the reply stops there, as `interrupted`"}


def _cut_short(printer: Printer, sid: str, why: str, after: str) -> int:
    printer.finish()
    print(f"error: {why}; {after}: see session {sid} in the panel", file=sys.stderr)
    return 2


class NotOpencode(Exception):
    """Something answered at `--server`, but not as Opencode does (another program on that port)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def _json(resp: Any) -> Any:
    """The JSON body of an Opencode answer; an Opencode error is printed (exit 2), anything else
    is `NotOpencode` rather than a traceback from deep inside a decoder."""
    try:
        data = await resp.json(content_type=None)
    except ValueError:  # not JSON (an HTML page), or not text at all
        raise NotOpencode(resp.status) from None
    if resp.status >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict) or "code" not in err:
            raise NotOpencode(resp.status)
        print(f"error: {err.get('message', resp.status)} ({err['code']})", file=sys.stderr)
        raise SystemExit(2)
    return data


def _session_id(created: Any, status: int) -> str:
    if not isinstance(created, dict) or not isinstance(created.get("id"), str):
        raise NotOpencode(status)  # some other JSON API
    return created["id"]


async def _sse(resp: Any) -> Any:
    event, data = "message", []
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


if __name__ == "__main__":
    raise SystemExit(main())
