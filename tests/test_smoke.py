import pytest

import opencode_agent


def test_package_imports_without_comfyui() -> None:
    assert opencode_agent.WEB_DIRECTORY == "./web/dist"


def test_an_installed_copy_has_every_file_the_server_reads() -> None:
    """`pip install .` (not `-e`) left out the standalone page: `GET /opencode/` answered 404.
    Every file the routes serve and every skill file must match the package data."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in patterns["opencode_agent"] for p in root.glob(pattern) if p.is_file()}
    needed = [p for folder in ("web/dist", "web/standalone") for p in (root / folder).rglob("*") if p.is_file()]
    needed += [p for p in (root / "skills").rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert needed and [str(p.relative_to(root)) for p in needed if p not in shipped] == []
