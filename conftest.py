"""Load the repository root as the package `opencode_agent`, the way ComfyUI loads node packages.

ComfyUI imports a custom node folder by its file path, so every import inside it is relative.
The tests do the same under a fixed alias; pytest runs with `--import-mode=importlib` and finds
the already loaded package whenever it looks for the root `__init__.py`, so that file never runs
a second time under another name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ALIAS = "opencode_agent"


def _load_root_package() -> None:
    if ALIAS in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        ALIAS, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ROOT} as {ALIAS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[ALIAS] = module
    spec.loader.exec_module(module)


_load_root_package()

# pytest still imports the root `__init__.py` when it sets the folder up as a package: under the
# folder's name when that is an identifier (`main`), else as a bare module named `__init__`
# (which would break its relative imports, e.g. in a clone at /tmp/tmp.x1y2). It reuses whatever
# `sys.modules` holds under that name, so both names point at the package loaded above.
for _name in ("__init__", ROOT.name):
    if _name.isidentifier():
        sys.modules.setdefault(_name, sys.modules[ALIAS])

collect_ignore = ["__init__.py", "node.py", "routes.py", "cli.py", "core", "skills", "web", "bench"]
