"""The fake machine stays the real machine's shape, and never becomes it.

cblb.system.SystemLike lists what the controller may ask of a machine. The checks: every
public method and folder of the real System is in that Protocol (a method added to System
must be added there, then to the fake); FakeSystem has every member of the Protocol, each
method with the same parameters; and FakeSystem does not inherit System, so a method it
lacks fails in a test instead of running against this machine. The last tests prove the
checks can fail, on classes made wrong on purpose.
"""

from __future__ import annotations

import inspect
import os
import subprocess
from pathlib import Path

from cblb.fake import FakeSystem
from cblb.system import Mount, System, SystemLike


def protocol_members(proto: type) -> tuple[set[str], set[str]]:
    """(methods, attributes) a Protocol declares, its own, public."""
    methods = {n for n, v in vars(proto).items() if inspect.isfunction(v) and not n.startswith("_")}
    attrs = {n for n in vars(proto).get("__annotations__", {}) if not n.startswith("_")}
    return methods, attrs


def public_members(cls: type, instance: object) -> set[str]:
    """What the class and one instance of it offer that does not start with '_'."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    return names | {n for n in vars(instance) if not n.startswith("_")}


def missing_from_protocol(cls: type, instance: object, proto: type = SystemLike) -> set[str]:
    methods, attrs = protocol_members(proto)
    return public_members(cls, instance) - methods - attrs


def params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)      # type: ignore[arg-type]


def implementation_problems(cls: type, instance: object, proto: type = SystemLike) -> list[str]:
    """What ``cls`` (and ``instance`` of it) lacks of ``proto``, or has with other
    parameters."""
    methods, attrs = protocol_members(proto)
    out = []
    for name in sorted(methods):
        impl = inspect.getattr_static(cls, name, None)
        if impl is None or not callable(getattr(cls, name)):
            out.append(f"{cls.__name__}.{name} is missing")
            continue
        want, got = params(getattr(proto, name)), params(getattr(cls, name))
        if want != got:
            out.append(f"{cls.__name__}.{name}{tuple(got)}: the Protocol has {tuple(want)}")
    for name in sorted(attrs):
        if not hasattr(instance, name):
            out.append(f"{cls.__name__} has no attribute {name}")
    return out


def test_every_public_member_of_system_is_in_the_protocol(tmp_path: Path) -> None:
    real = System(tmp_path / "sys", tmp_path / "module", tmp_path / "run")
    assert missing_from_protocol(System, real) == set()
    methods, attrs = protocol_members(SystemLike)
    assert {"write_command", "run", "stat", "mounts", "module_candidates"} <= methods
    assert attrs == {"sysfs", "module_sysfs", "run_dir"}


def test_system_has_the_protocol_s_parameters(tmp_path: Path) -> None:
    real = System(tmp_path / "sys", tmp_path / "module", tmp_path / "run")
    assert implementation_problems(System, real) == []


def test_the_fake_implements_the_protocol(tmp_path: Path) -> None:
    fake = FakeSystem(tmp_path / "fake")
    assert implementation_problems(FakeSystem, fake) == []
    for name in protocol_members(SystemLike)[1]:
        assert isinstance(getattr(fake, name), Path), name
        assert str(getattr(fake, name)).startswith(str(tmp_path)), name   # never the real one


def inherits_real_system(cls: type) -> bool:
    return System in cls.__mro__


def test_the_fake_does_not_inherit_the_real_system() -> None:
    assert not inherits_real_system(FakeSystem)


# ---- the checks can fail -----------------------------------------------------------------
class Incomplete:
    """Wrong on purpose: no device_file, resolve with other parameters, no run_dir."""

    def __init__(self) -> None:
        self.sysfs = Path("/nonexistent/sys")
        self.module_sysfs = Path("/nonexistent/module")

    def write_command(self, line: str) -> None: ...

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    def stat(self, path: str) -> os.stat_result:
        raise FileNotFoundError(path)

    def device_size(self, path: str) -> int:
        return 0

    def resolve(self, target: str) -> str:
        return target

    def mounts(self) -> list[Mount]:
        return []

    def block_name_taken(self, name: str) -> bool:
        return False

    def module_candidates(self, module_dir: Path | None) -> list[Path]:
        return []


class Larger(System):
    """A System with a method the Protocol does not list."""

    def trim(self, path: str) -> None: ...


def test_an_incomplete_class_is_caught() -> None:
    got = implementation_problems(Incomplete, Incomplete())
    assert got == ["Incomplete.device_file is missing",
                   "Incomplete.resolve('self', 'target'): the Protocol has ('self', 'path')",
                   "Incomplete has no attribute run_dir"]


def test_a_method_added_to_system_only_is_caught(tmp_path: Path) -> None:
    bigger = Larger(tmp_path / "sys", tmp_path / "module", tmp_path / "run")
    assert missing_from_protocol(Larger, bigger) == {"trim"}


def test_a_fake_that_inherits_system_is_caught() -> None:
    class Lazy(System):
        pass

    assert inherits_real_system(Lazy)
    assert implementation_problems(Lazy, Lazy()) == []   # complete only by inheriting: the
                                                        # check above is what catches it
