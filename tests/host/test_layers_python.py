"""The Python package's imports go one way, down: pyproject.toml's import-linter contracts.

The page (web) sits over the command line (cblb.cli, then cblb.commands), which sits over the
core library (every other module of cblb). Inside it, the controller (cblb.control) sits over
the system seam (cblb.system) and the model (cblb.model, no I/O: not even subprocess); the
bench's plan over its experiments (which never import each other) over its rig; the fake
machine's parts over one another, never importing the controller. `lint-imports`
(import-linter, from the venv) reads the contracts from pyproject.toml; the second test proves
it catches each kind of wrong import by adding one to a copy of the package. No network:
import-linter only parses the sources.
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
    ("web/views/devices.py", "from web.views import lifecycle"),  # one blueprint, another
    ("cblb/model.py", "import subprocess"),                     # the model runs a program
    ("cblb/model.py", "from cblb.system import Mount"),         # the model, the machine
    ("cblb/system.py", "from cblb.control import Controller"),  # the seam, the controller
    ("cblb/bench/experiments/compare.py", "from cblb.bench.experiments import cbt"),
    ("cblb/bench/rig.py", "from cblb.bench.experiments import compare"),  # the rig, upward
    ("cblb/bench/workloads.py", "from cblb.bench.rig import Rig"),
    ("cblb/fake/devices.py", "from cblb.fake import module"),   # the devices, upward
    ("cblb/fake/module.py", "from cblb.control import Controller"),  # the fake, the rules
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


def test_the_page_command_registers_itself():
    """`cblb web` lives with the page (web/command.py) and is found through the entry point
    group; a checkout whose installed metadata predates it finds the same entry points."""
    import tomllib

    from cblb import commands

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[commands.ENTRY_POINTS] == commands.UNREGISTERED
    assert commands.outside_commands() == commands.UNREGISTERED


def test_the_help_lists_web_in_its_place_without_importing_flask():
    code = ("import sys; from cblb.cli import build_parser; p = build_parser(); "
            "names = list(p._subparsers._group_actions[0].choices); "
            "print(names.index('web') == names.index('trace') + 1, 'flask' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert run.stdout.split() == ["True", "False"], run.stdout + run.stderr


def test_an_entry_point_adds_a_subcommand(monkeypatch, tmp_path):
    from cblb import commands
    from cblb.cli import build_parser

    (tmp_path / "cblb_extra_cmd.py").write_text(
        "def register(sub):\n    sub.add_parser('extra', help='an added subcommand')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(commands, "outside_commands",
                        lambda: {**commands.UNREGISTERED, "extra": "cblb_extra_cmd",
                                 "gone": "cblb_not_installed_cmd"})
    help_text = build_parser().format_help()
    assert "extra" in help_text and "web" in help_text and "gone" not in help_text
