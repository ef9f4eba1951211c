"""Shared fixtures: data dir → config → app (real SQLite, real aiohttp on loopback) → client → ws.

A guard fails any connection to a non-loopback address, so no test can reach the internet.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from opencode_agent.core.config import Config
from opencode_agent.routes import SERVICE, create_app
from opencode_agent.core.trust import TrustPolicy

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if isinstance(address, tuple) and self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            ok = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise OSError(f"test guard: connection to non-loopback address {host} refused")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, echo_delay=0.001, commit_max_delay=0.01, checkpoint_interval=0.05,
                  permission_timeout=5.0, ui_request_timeout=2.0)


@pytest.fixture
def make_app(config: Config) -> Callable[..., web.Application]:
    def factory(**kwargs: Any) -> web.Application:
        kwargs.setdefault("trust", TrustPolicy(token="test-token"))
        return create_app(config, **kwargs)

    return factory


@pytest.fixture
async def client(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> AsyncIterator[TestClient]:
    c = await aiohttp_client(make_app())
    yield c


@pytest.fixture
def service(client: TestClient) -> Any:
    return client.app[SERVICE]


@pytest.fixture
async def adapter(comfy: Any) -> AsyncIterator[Any]:
    """An `HttpComfyAdapter` on the module's `comfy` fixture (a loopback fake ComfyUI)."""
    import aiohttp

    from opencode_agent.skills.comfyui import HttpComfyAdapter

    async with aiohttp.ClientSession() as http:
        a = HttpComfyAdapter(str(comfy.server.make_url("")), http)
        yield a
        await a.close()
