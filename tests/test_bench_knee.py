"""`python -m bench.knee` runs end to end on a tiny load: every server relays every reply.

The figures themselves are the benchmark's business (`bench/README.md`); this only keeps the
script, the bare relay's `spin_ms` and the Opencode server working together.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def knee(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.knee")


def test_every_server_relays_every_reply(knee: Any) -> None:
    rows = knee.measure(streams=2, spins=[0.0, 1.0], repeat=1, tokens=5, rounds=1)
    assert [r["server"] for r in rows] == ["bare + 0 ms", "bare + 1 ms", "opencode"]
    assert all(r["errors"] == 0 for r in rows), rows
    assert all(200 <= r["ttft_p50"] < 2000 and r["lat_p50"] >= 0 for r in rows), rows
