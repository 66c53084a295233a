"""`cblb web`: serve the browser control page (web/, Flask + htmx).

Bound to loopback (the default, 127.0.0.1:8470) the page needs no token but answers only to
loopback Host names. Bound to any other address every request needs the access token,
generated on first start into the token file (mode 0600) and printed that once.
"""

from __future__ import annotations

import argparse
import errno as E
import ipaddress
import sys
from pathlib import Path
from typing import Any

from ..errors import CblbError

DEFAULT_PORT = 8470


def parse_bind(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, HOST (default port) or :PORT (loopback)."""
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise CblbError(f"--bind {text!r}: missing ']' after the IPv6 address", E.EINVAL)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise CblbError(f"--bind {text!r}: expected [ADDRESS]:PORT", E.EINVAL)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        raise CblbError(f"--bind {text!r}: write IPv6 addresses as [ADDRESS]:PORT", E.EINVAL)
    host = host or "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CblbError(f"--bind {text!r}: the port must be 1..65535", E.EINVAL)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise CblbError(f"--bind {text!r}: give an IP address (127.0.0.1, 0.0.0.0, ::) or "
                            "localhost", E.EINVAL) from None
    return host, int(port)


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _serve(app: Any, host: str, port: int, threads: int) -> None:
    try:
        from waitress import serve
    except ImportError:
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)
        return
    # Each open page holds one thread for its live-update stream.
    serve(app, host=host, port=port, threads=threads, ident="cblb", channel_timeout=30)


def _web(args: argparse.Namespace, ctl: Any) -> int:
    from web import create_app
    from web.auth import default_token_file, ensure_token, is_loopback

    host, port = parse_bind(args.bind)
    config: dict[str, Any] = {"CBLB_CONTROLLER": ctl}
    if args.standin:
        from web.standin import StandInController, StandInSampler

        stand = StandInController(grow_bytes_per_s=1.5e6)
        config.update(CBLB_CONTROLLER=stand, CBLB_SAMPLER=StandInSampler(stand))
    if args.catalog:
        config["CBLB_DEFAULT_CATALOG"] = args.catalog
    token_note = ""
    if not is_loopback(host):
        path = Path(args.token_file) if args.token_file else default_token_file()
        try:
            token, created = ensure_token(path)
        except (OSError, ValueError) as e:
            raise CblbError(f"cannot use the token file {path}: {e}", E.EACCES) from None
        config.update(CBLB_REQUIRE_TOKEN=True, CBLB_TOKEN=token)
        if created:
            token_note = (f"access token (shown this once; stored in {path}, mode 0600):\n"
                          f"  {token}")
        else:
            token_note = f"access token: the one stored in {path} (root only)"
    app = create_app(config)
    print(f"cblb web: serving {_url(host, port)}" + (" (stand-in controller, no kernel)"
                                                     if args.standin else ""))
    if token_note:
        print(token_note)
    else:
        print("bound to loopback: no token needed; use --bind 0.0.0.0:PORT (with a token) to "
              "reach it from elsewhere, or an SSH tunnel")
    sys.stdout.flush()
    try:
        _serve(app, host, port, args.threads)
    except OSError as e:
        raise CblbError(f"cannot listen on {host}:{port}: {e.strerror or e}", e.errno or 0)
    finally:
        app.extensions["cblb_history"].stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="serve the browser control page (default 127.0.0.1:8470)")
    p.add_argument("--bind", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                   help="address to listen on (default %(default)s); any non-loopback "
                        "address requires the access token")
    p.add_argument("--token-file", metavar="PATH",
                   help="where the access token is kept (default /var/lib/cblb/web-token)")
    p.add_argument("--catalog", metavar="DIR", help="default catalog shown in the start form")
    p.add_argument("--threads", type=int, default=16,
                   help="server threads (each open page holds one; default 16)")
    p.add_argument("--standin", action="store_true",
                   help="drive an in-memory stand-in instead of the kernel (to look at the page)")
    p.set_defaults(func=_web)
