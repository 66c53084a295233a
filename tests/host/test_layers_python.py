"""The Python package's imports go one way, down: pyproject.toml's import-linter contracts.

The page (web) sits over the command line (cblb.cli, then cblb.commands), which sits over the
core library (every other module of cblb). `lint-imports` (import-linter, from the venv) reads
the contracts from pyproject.toml; the second test proves it catches an upward import by adding
one to a copy of the package. No network: import-linter only parses the sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the cblb and web packages of ``tree``, with its pyproject.toml."""
    assert LINT.exists(), f"{LINT} is missing: `make venv` installs import-linter (the test extra)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_python_layers_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("module, line", [
    ("cblb/units.py", "from web import auth"),                 # the library imports the page
    ("cblb/control.py", "from cblb.commands import blocks_arg"),  # the core, a subcommand
    ("cblb/commands/verify.py", "from cblb import cli"),        # a subcommand, the command line
])
def test_an_upward_import_breaks_the_check(tmp_path, module, line):
    for package in ("cblb", "web"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    run = lint_imports(tmp_path)
    assert run.returncode != 0, run.stdout
    assert "BROKEN" in run.stdout
    assert module.removesuffix(".py").replace("/", ".") in run.stdout
