"""Blueprints of the page, one per concern, and the helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from cblb.control import ModuleStatus
from cblb.errors import CblbError

from ..history import History


@dataclass
class Problem:
    """A refusal shown inline next to the form it came from (``key``)."""

    key: str
    message: str


def controller() -> Any:
    return current_app.config["CBLB_CONTROLLER"]


def history() -> History:
    return current_app.extensions["cblb_history"]


def module_status() -> tuple[ModuleStatus, str]:
    """(status, error): the page still renders when reading the module fails."""
    try:
        return controller().status(), ""
    except (CblbError, OSError) as e:
        return ModuleStatus(loaded=False), str(e)


def signature(st: ModuleStatus) -> tuple:
    """What the lifecycle widgets' markup depends on: state, not counters."""
    return (st.loaded, st.total,
            tuple((s.name, s.state.value, bool(s.mountpoint)) for s in st.snapshots))
