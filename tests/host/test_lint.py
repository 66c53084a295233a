"""ruff and mypy as tests, so `make test` counts them with the rest (settings in
pyproject.toml; both come with the project's [test] extras)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff() -> None:
    r = run("ruff", "check", "cblb", "web", "tests/host", "tests/browser")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy() -> None:
    r = run("mypy", "cblb", "web")
    assert r.returncode == 0, r.stdout + r.stderr


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "cblb" / "py.typed").exists()
