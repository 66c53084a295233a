"""The module's calls go one way, down: kmod/doc/LAYERS.md's table checked against kmod/*.c.

A file may use a non-static function or variable of a file listed before it in the table,
never of one listed after it. The checker reads C as text: comments and strings are
removed, definitions are found at the start of a line, uses are whole identifiers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KMOD = ROOT / "kmod"

DEF_FN = re.compile(r"^(?!static\b)(?!#)[A-Za-z_][\w \t\*]*?\b([a-z_]\w*)\s*"
                    r"\([^;{)]*(?:\([^)]*\)[^;{)]*)*\)\s*\{", re.M)
DEF_VAR = re.compile(r"^(?!static\b)(?:DEFINE_MUTEX|DEFINE_SPINLOCK)\((\w+)\)|"
                     r"^(?!static\b)(?!extern\b)(?!return\b)[a-z_][\w \t\*]*?\b(cblb_\w+)\s*(?:=[^;]*)?;",
                     re.M)


def strip_c(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def layer_order(doc: Path) -> list[str]:
    """The files of the table, lowest first."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([\w.]+\.c)\s*\|", doc.read_text(), re.M)
    return [name for _, name in rows]


def definitions(sources: dict[str, str]) -> dict[str, str]:
    """Non-static function and variable -> the file that defines it."""
    found: dict[str, str] = {}
    for name, text in sources.items():
        for m in DEF_FN.finditer(text):
            found.setdefault(m.group(1), name)
        for m in DEF_VAR.finditer(text):
            found.setdefault(m.group(1) or m.group(2), name)
    return found


def upward_uses(sources: dict[str, str], order: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    defs = definitions(sources)
    bad = []
    for user, text in sources.items():
        for sym, home in defs.items():
            if home == user or rank[home] < rank[user]:
                continue
            if re.search(rf"\b{re.escape(sym)}\b", text):
                bad.append(f"{user} uses {sym} of {home}, a higher layer")
    return sorted(bad)


def read_sources(folder: Path) -> dict[str, str]:
    return {p.name: strip_c(p.read_text()) for p in sorted(folder.glob("*.c"))}


def test_every_file_has_a_layer() -> None:
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    files = sorted(p.name for p in KMOD.glob("*.c"))
    assert sorted(order) == files, "kmod/doc/LAYERS.md must list every .c file once"


def test_calls_go_down() -> None:
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    assert upward_uses(read_sources(KMOD), order) == []


def upward_includes(folder: Path, order: list[str]) -> list[str]:
    """#include "x.h" of a file x.c listed after the including file."""
    rank = {name: i for i, name in enumerate(order)}
    bad = []
    for p in sorted(folder.glob("*.c")) + sorted(folder.glob("*.h")):
        user = p.stem + ".c"
        for inc in re.findall(r'^#include "(\w+)\.h"', p.read_text(), re.M):
            home = inc + ".c"
            if home in rank and user in rank and rank[home] > rank[user]:
                bad.append(f"{p.name} includes {inc}.h of a higher layer")
    return bad


def test_includes_go_down() -> None:
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    assert upward_includes(KMOD, order) == []


def test_every_file_but_layer_0_has_its_header() -> None:
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    missing = [n for n in order[1:] if not (KMOD / n.replace(".c", ".h")).exists()
               and n != "main.c"]
    assert missing == []


def test_the_include_check_finds_an_upward_include(tmp_path: Path) -> None:
    for p in list(KMOD.glob("*.c")) + list(KMOD.glob("*.h")):
        (tmp_path / p.name).write_text(p.read_text())
    cow = tmp_path / "cow.c"
    cow.write_text('#include "registry.h"\n' + cow.read_text())
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    assert upward_includes(tmp_path, order) == ["cow.c includes registry.h of a higher layer"]


def test_the_check_finds_an_upward_call(tmp_path: Path) -> None:
    """The same check on kmod/ with one upward call added: the store calls the registry."""
    for p in KMOD.glob("*.c"):
        (tmp_path / p.name).write_text(p.read_text())
    store = tmp_path / "store.c"
    store.write_text(store.read_text() + "\nvoid cblb_store_oops(void)\n{\n\tcblb_find(\"x\");\n}\n")
    order = layer_order(KMOD / "doc" / "LAYERS.md")
    assert upward_uses(read_sources(tmp_path), order) == [
        "store.c uses cblb_find of registry.c, a higher layer"]


@pytest.mark.parametrize("sym, home", [("cblb_fail", "state.c"), ("cblb_find", "registry.c"),
                                       ("cblb_cmd_lock", "state.c"),
                                       ("cblb_store_alloc", "store.c"), ("cblb_total", "registry.c")])
def test_definitions_are_found(sym: str, home: str) -> None:
    assert definitions(read_sources(KMOD))[sym] == home
