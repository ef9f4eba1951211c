"""Where Opencode keeps its data and the knobs the service reads at start.

Inside ComfyUI the data lives in `<ComfyUI user dir>/opencode/` (the caller passes it); standalone
it defaults to a per-user directory. Nothing here is secret; keys live in `core/secrets.py`.
Imports nothing from Opencode.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """A per-user data directory: `$OPENCODE_DATA_DIR`, else the platform's usual place."""
    env = os.environ.get("OPENCODE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "opencode-agent"


@dataclass
class Config:
    """Service settings; defaults suit one ComfyUI user on one machine."""

    data_dir: Path = field(default_factory=default_data_dir)
    # Group commit: a transaction holds at most this many rows or waits at most this long.
    commit_max_rows: int = 100
    commit_max_delay: float = 0.05
    # The event log's rows wait up to this long for more of their session's events (a replay
    # log: a crash loses at most this much of it; messages are checkpointed on their own).
    commit_event_delay: float = 0.25
    # A streaming reply is written to the store at least this often.
    checkpoint_interval: float = 0.5
    # Replay ring per session: this many events, then the store.
    ring_size: int = 4096
    # A room nobody watches gives its ring back after this long without events (replay then
    # comes from the store), and a session nobody uses is unloaded from memory (the next use
    # reads it back), checked every `ring_sweep_interval` seconds.
    ring_idle_seconds: float = 300.0
    ring_sweep_interval: float = 60.0
    # How far back `after_seq` may reach through the store before a resync is sent instead.
    replay_max_events: int = 20_000
    # Bytes a socket may have unsent before it is dropped as a slow consumer.
    max_client_backlog: int = 1 << 20
    # A socket holds frames other than token deltas this long, so a reply's start or end (a few
    # events and an ack) leaves in one write; 0 writes every frame at once.
    ws_hold: float = 0.003
    # Runs streaming at once without waiting for an upstream connection: the size of the shared
    # HTTP client's pool (aiohttp's default of 100 would queue the 101st run).
    max_concurrent_runs: int = 512
    echo_delay: float = 0.02
    max_turns: int = 12
    permission_timeout: float = 120.0
    ui_request_timeout: float = 30.0
    comfyui_url: str | None = None
    default_provider: str | None = None
    # Recent messages held in memory per session (the join snapshot).
    snapshot_messages: int = 50

    @property
    def db_path(self) -> Path:
        return self.data_dir / "opencode.sqlite3"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "skills").mkdir(exist_ok=True)
        (self.data_dir / "uploads").mkdir(exist_ok=True)
