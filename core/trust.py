"""The trust boundary of `/opencode/*`: who may call routes that spend money and queue work.

ComfyUI has no authentication, and its own origin check covers only loopback hosts and vanishes
with `--enable-cors-header`; so Opencode checks every request itself, modelled on comfy-agent:
- requests with a foreign `Origin`, `Origin: null` or `Sec-Fetch-Site: cross-site` are refused,
  reads included: with ComfyUI's `--enable-cors-header` every response allows any origin, so a
  foreign page that may GET reads every conversation;
- the no-token path is for this machine only: the peer address and the `Host` header must both be
  loopback (so DNS rebinding can't pass) and no `Forwarded`/`X-Forwarded-*` header may be present;
- anything else needs the per-install token (header `X-Opencode-Token`, `Authorization: Bearer`,
  or `?token=` for WebSocket and EventSource), created on first start and stored 0600.
Imports errors only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from .errors import Forbidden, Unauthorized
from .secrets import atomic_write_text

log = logging.getLogger("opencode.trust")

TOKEN_FILE = "token"
TOKEN_HEADER = "X-Opencode-Token"
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP")


@dataclass
class TrustPolicy:
    token: str
    token_path: Path | None = None

    @classmethod
    async def load(cls, data_dir: Path) -> "TrustPolicy":
        """Read the install's token, creating it (0600) on first start."""
        path = data_dir / TOKEN_FILE
        token = await asyncio.to_thread(_read_or_create_token, path)
        # The path, never the token: ComfyUI's console is saved to a log file that people paste
        # into bug reports, and the token lets anyone who can reach the port spend on the keys.
        log.info("Opencode: remote clients need the access token stored in %s", path)
        return cls(token=token, token_path=path)

    async def rotate(self) -> str:
        if self.token_path is None:
            self.token = secrets.token_urlsafe(32)
        else:
            self.token = await asyncio.to_thread(_write_token, self.token_path, secrets.token_urlsafe(32))
        log.info("Opencode access token rotated")
        return self.token


def _read_or_create_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    return _write_token(path, secrets.token_urlsafe(32))


def _write_token(path: Path, token: str) -> str:
    atomic_write_text(path, token + "\n", mode=0o600)
    return token


def is_loopback_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """`Host` without its port: `127.0.0.1:8188` → `127.0.0.1`, `[::1]:8188` → `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(host_header: str | None) -> bool:
    if not host_header:
        return False
    name = host_name(host_header)
    return name == "localhost" or is_loopback_address(name)


def is_local(headers: Mapping[str, str], remote: str | None) -> bool:
    """Peer and Host both loopback, and no proxy in between."""
    if any(h in headers for h in PROXY_HEADERS):
        return False
    return is_loopback_address(remote) and is_loopback_host(headers.get("Host"))


def check_origin(headers: Mapping[str, str]) -> None:
    """For state-changing requests: only same-origin browsers, or clients that send no Origin."""
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise Forbidden("cross-site requests are refused", code="forbidden_origin")
    origin = headers.get("Origin")
    if origin is None:
        return
    if origin.strip().lower() == "null":
        raise Forbidden("requests with Origin: null are refused", code="forbidden_origin")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[": an unclosed IPv6 host
        netloc = ""
    if not netloc or netloc.lower() != (headers.get("Host") or "").lower():
        raise Forbidden(f"requests from {origin[:100]} are refused: Opencode only accepts its own page",
                        code="forbidden_origin")


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    token = headers.get(TOKEN_HEADER)
    if token:
        return token
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query.get("token") or None


def check_request(policy: TrustPolicy, method: str, headers: Mapping[str, str], remote: str | None,
                  query: Mapping[str, str]) -> None:
    """Raise Forbidden/Unauthorized unless this request may proceed."""
    # Every method: a cross-origin GET is harmless only while CORS stays closed, which ComfyUI's
    # `--enable-cors-header` undoes; the WebSocket upgrade is a GET too.
    check_origin(headers)
    if is_local(headers, remote):
        return
    token = presented_token(headers, query)
    # aiohttp keeps undecodable header bytes as surrogates: encoded back as they came, they are
    # simply a wrong token.
    if token and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), policy.token.encode()):
        return
    raise Unauthorized(
        "this Opencode server is reached from another machine or through a proxy, so requests need its "
        f"access token: copy it from the ComfyUI console (printed at start) or from the `{TOKEN_FILE}` file in "
        f"Opencode's data directory, then paste it into the panel's settings or send it as {TOKEN_HEADER}",
        code="unauthorized",
    )
