"""A real standalone Opencode server in a subprocess, on a free loopback port, with its own data dir.

Faults that only a process can show (SIGKILL mid-stream, restart on the same data directory), the
schemathesis run and the load test talk to this server over real sockets. The child loads the
repository as the package `opencode_agent` (as `conftest.py` does), builds the app with
`routes.create_app`, binds `127.0.0.1:0` itself and prints the port it got, so there is no window
in which another process could take the port.

The child also measures its own event-loop lag (a 1 ms ticker; lag = how late each tick wakes)
and serves it on a test-only route `GET /_test/loop_lag` (never part of the product), so load
tests can read the lag where it matters: in the server process.

    with StandaloneServer(data_dir) as server:
        server.url  # "http://127.0.0.1:54321"
        server.kill()  # SIGKILL, no cleanup
        server.start()  # again, same data dir
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0

# The child: load the package, add the lag probe, bind, print the port, serve.
CHILD = r"""
import asyncio, importlib.util, json, logging, socket, sys, time
from pathlib import Path

root, data_dir, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

# Loopback only, as in the test process: whatever a fuzzer makes the server call (a provider's
# base URL, say), it can reach nothing beyond this machine, not even a DNS server.
import ipaddress
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _loopback(host):
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"

def _guarded_connect(self, address):
    if isinstance(address, tuple) and self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise OSError(f"test guard: connection to non-loopback address {address[0]} refused")
    return _connect(self, address)

def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host if isinstance(host, str) else host.decode()):
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no name lookups ({host!r})")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
spec = importlib.util.spec_from_file_location("opencode_agent", Path(root) / "__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules["opencode_agent"] = module
spec.loader.exec_module(module)

from aiohttp import web
from opencode_agent.core.config import Config
from opencode_agent.core.trust import TrustPolicy
from opencode_agent.routes import create_app

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
config = Config(data_dir=Path(data_dir), **options.get("config", {}))
trust = TrustPolicy(token=options["token"]) if options.get("token") else None
app = create_app(config, trust=trust)

lags: list = []

async def lag_probe(app):
    if options.get("diagnose"):
        # Name what holds the loop: callbacks over 20 ms, and garbage collections over 10 ms.
        import gc
        loop = asyncio.get_running_loop()
        if options["diagnose"] == "debug":  # asyncio's debug mode is slow itself: off by default
            loop.set_debug(True)
            loop.slow_callback_duration = 0.02
            logging.getLogger("asyncio").setLevel(logging.WARNING)
        started = {}
        def gc_timer(phase, info):
            if phase == "start":
                started["t"] = time.perf_counter()
            elif (time.perf_counter() - started.get("t", time.perf_counter())) > 0.01:
                print(f"GC gen{info['generation']} took {(time.perf_counter() - started['t']) * 1000:.0f} ms "
                      f"collected {info['collected']}; tracked objects {len(gc.get_objects())}",
                      file=sys.stderr, flush=True)
        gc.callbacks.append(gc_timer)
    async def tick():
        loop = asyncio.get_running_loop()
        interval = 0.001
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            lags.append(max(0.0, loop.time() - t0 - interval))
            if len(lags) > 200_000:
                del lags[:100_000]
    task = asyncio.get_running_loop().create_task(tick())
    yield
    task.cancel()

def schedstat():
    # (on-CPU ns, ns spent runnable but waiting for a CPU, now) of this (the loop's) thread.
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting, _ = (int(x) for x in f.read().split())
        return on_cpu, waiting, time.monotonic_ns()
    except (OSError, ValueError):
        return None

window = {"sched": schedstat()}

async def loop_lag(request):
    # The figures since the last reset; `?reset=1` starts a new window after answering.
    data = sorted(lags)
    now, then = schedstat(), window["sched"]
    if request.query.get("reset"):
        lags.clear()
        window["sched"] = now
    def pct(q):
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else 0.0
    out = {"samples": len(data), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": data[-1] * 1000 if data else 0.0}
    if now and then:
        wall = max(1, now[2] - then[2])
        # Busy: share of the window the loop thread ran; starved: share it was ready to run but
        # every CPU was taken (by other processes: then lag says more about the machine).
        out.update(busy=(now[0] - then[0]) / wall, starved=(now[1] - then[1]) / wall)
    return web.json_response(out)

app.cleanup_ctx.append(lag_probe)
app.router.add_get("/_test/loop_lag", loop_lag)

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", options.get("port", 0)))
print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
web.run_app(app, sock=sock, print=None, shutdown_timeout=2.0, backlog=1024)
"""


class StandaloneServer:
    """One Opencode server process; `start()` again after `kill()` reuses the data dir (and port)."""

    def __init__(self, data_dir: Path, *, token: str | None = None, config: dict[str, Any] | None = None,
                 log_path: Path | None = None, diagnose: bool | str = False) -> None:
        self.data_dir = Path(data_dir)
        self.token = token
        self.config = config or {}
        self.log_path = log_path or self.data_dir.parent / "server.log"
        self.diagnose = diagnose
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/opencode/ws"

    def start(self) -> "StandaloneServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        options = {"token": self.token, "config": self.config, "port": self.port, "diagnose": self.diagnose}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ROOT), str(self.data_dir), json.dumps(options)],
            stdout=subprocess.PIPE, stderr=log, cwd=str(ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server did not start; see {self.log_path}:\n{self.read_log()[-3000:]}")
        self.port = int(json.loads(line)["port"])
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.read_log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/opencode/health", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the server was not ready within {timeout}s:\n{self.read_log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGINT, the way a person stops it with Ctrl-C; SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "StandaloneServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
