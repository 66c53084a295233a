"""``cblb tracking save`` and ``cblb tracking resume``: changed-block tracking kept across
a clean restart (cblb/keep.py holds the rules; cblb-tracking.service runs both)."""

from __future__ import annotations

import argparse

from .. import keep
from ..control import Controller
from ..output import emit_json


def _report(args: argparse.Namespace, verb: str, done: list[keep.Outcome]) -> int:
    ok = 0 if all(o.done for o in done) else 1
    if args.json:
        emit_json({"action": verb, "keep_dir": args.dir,
                   "origins": [o.to_json() for o in done]})
        return ok
    if not done:
        print(f"no tracked origin to {verb}" if verb == "save"
              else f"no tracking record in {args.dir}: nothing to resume")
    for o in done:
        if o.done:
            print(f"{o.device}: {verb}d generation {o.generation[:8]} at sequence "
                  f"{o.sequence}")
        elif verb == "save":
            print(f"{o.device}: not saved: {o.why}; its next backup after the restart "
                  "will be a full one")
        else:
            print(f"{o.device}: new generation {o.generation[:8]}: {o.why}; its next "
                  "backup must be a full one")
    return ok


def _save(args: argparse.Namespace, ctl: Controller) -> int:
    return _report(args, "save", keep.save(ctl, args.dir, args.devices or None))


def _resume(args: argparse.Namespace, ctl: Controller) -> int:
    return _report(args, "resume", keep.resume(ctl, args.dir, args.devices or None))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tracking", help="keep changed-block tracking across a clean restart "
                       "(save at shutdown, resume at boot)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                               help="save (at shutdown) or resume (at boot)")
    q = actions.add_parser("save", help="save the tracked origins' maps for the next boot: "
                           "run after they are unmounted (cblb-tracking.service does)")
    q.add_argument("devices", nargs="*", metavar="DEVICE",
                   help="tracked origins to save (default: all)")
    q.set_defaults(func=_save)
    q = actions.add_parser("resume", help="track every saved origin again, resuming its "
                           "chain where no write can have been missed: run before they "
                           "are mounted")
    q.add_argument("devices", nargs="*", metavar="DEVICE",
                   help="origins to resume (default: every one with a record)")
    q.set_defaults(func=_resume)
    for q in (actions.choices["save"], actions.choices["resume"]):
        q.add_argument("--dir", default=keep.KEEP_DIR,
                       help=f"folder of the records, on the root filesystem (default "
                       f"{keep.KEEP_DIR})")
        q.add_argument("--json", action="store_true", help="print the result as JSON")
