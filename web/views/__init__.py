"""Blueprints of the page, one per concern, and the helpers they share."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flask import current_app, session

from cblb.errors import CblbError
from cblb.model import ModuleStatus

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
    except CblbError as e:
        return ModuleStatus(loaded=False), e.for_page()
    except (OSError, ValueError) as e:
        return ModuleStatus(loaded=False), str(e)


def signature(st: ModuleStatus) -> tuple:
    """What the lifecycle widgets' markup depends on: state, not counters."""
    return (st.loaded, st.total,
            tuple((s.name, s.state.value, bool(s.mountpoint)) for s in st.snapshots))


# What each browser session's lifecycle panel shows now, so the live stream re-sends the panel
# only when the state differs from what that page already displays (after a POST of its own
# the response brought the new panel; re-sending it would wipe a form being filled in).
_RENDERED_MAX = 512
_rendered_lock = threading.Lock()


def _rendered() -> "OrderedDict[str, tuple]":
    return current_app.extensions.setdefault("cblb_rendered", OrderedDict())


def session_id() -> str:
    sid = session.get("sid")
    if not sid:
        sid = session["sid"] = secrets.token_urlsafe(12)
    return sid


def remember_panel(sig: tuple) -> None:
    sid = session.get("sid")
    if not sid:
        return
    r = _rendered()
    with _rendered_lock:
        r[sid] = sig
        r.move_to_end(sid)
        while len(r) > _RENDERED_MAX:
            r.popitem(last=False)


def panel_is_stale(sig: tuple) -> bool:
    sid = str(session.get("sid", ""))
    with _rendered_lock:
        return _rendered().get(sid) != sig
