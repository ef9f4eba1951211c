"""The benchmarks measure the checkout they are run from, never an installed copy elsewhere.

With `pip install -e .` done in another work tree, `import opencode_agent` finds that tree; a
benchmark of this one then measured the other's code without a word (two sessions' A/B runs did).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_load_opencode_takes_this_checkout_over_an_importable_copy(tmp_path: Path) -> None:
    elsewhere = tmp_path / "opencode_agent"
    elsewhere.mkdir()
    (elsewhere / "__init__.py").write_text("WHERE = 'an installed copy elsewhere'\n")
    probe = ("import bench.common as c; c.load_opencode(); import opencode_agent; "
             "print(opencode_agent.__file__)")
    # The copy elsewhere comes first on the path, as an editable install of another tree would.
    env_path = f"{tmp_path}:{ROOT}"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == ROOT / "__init__.py"


def test_load_opencode_refuses_a_copy_already_imported_from_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "opencode_agent"
    elsewhere.mkdir()
    (elsewhere / "__init__.py").write_text("")
    probe = "import opencode_agent, bench.common as c; c.load_opencode()"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "not from this checkout" in out.stderr
