"""`cblb web`: serve the browser control page (web/, Flask + htmx).

The page runs as root, so on every address, loopback included, it asks for the access token:
generated on first start into the token file (mode 0600, root only) and printed that once.
``--rotate-token`` replaces it; a running server takes the new one at its next request and
every session logged in with the old one must log in again. Bound to loopback (the default,
127.0.0.1:8470) it also answers only to loopback Host names (and ``--allowed-host`` ones).

On any other bind it serves HTTPS (web/tls.py): ``--tls-cert/--tls-key``, or a self-signed
certificate made at first start in ``--tls-dir`` (default /etc/cblb/web-tls); ``--no-tls``
serves plain HTTP and warns. Behind a TLS reverse proxy, ``--trusted-proxy ADDR`` makes
that proxy's X-Forwarded-For/-Proto/-Host count (web/proxy.py).
"""

from __future__ import annotations

import argparse
import errno as E
import ipaddress
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from cblb.errors import CblbError
from cblb.output import emit_json

DEFAULT_PORT = 8470
DEFAULT_TLS_DIR = "/etc/cblb/web-tls"    # the self-signed certificate (web/tls.py)


def bind_arg(text: str) -> tuple[str, int]:
    """--bind's type: a bad address is a usage error (exit 2)."""
    try:
        return parse_bind(text)
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def host_name_arg(text: str) -> str:
    """--allowed-host's type: a host name or address, without a port or path (exit 2)."""
    name = text.strip().lower()
    bare = name.strip("[]")
    ok = bool(bare) and all(c.isalnum() or c in "-._:" for c in bare) and (
        ":" not in bare or _is_ip(bare))
    if not ok:
        raise argparse.ArgumentTypeError(f"--allowed-host {text[:60]!r}: give a host name "
                                         "(cblb.example.com) or an address, without a port")
    return bare


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def proxy_arg(text: str) -> str:
    """--trusted-proxy's type: an address or network (exit 2 otherwise)."""
    from .proxy import proxy_network

    try:
        return str(proxy_network(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--trusted-proxy {text[:60]!r}: give the proxy's "
                                         "address (127.0.0.1, 10.0.0.5) or a network "
                                         "(10.0.0.0/24)") from None


def threads_arg(text: str) -> int:
    """--threads' type: 1..256; 0 would start a server that never answers (exit 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"--threads {n} is out of range: 1..256 (each open "
                                         "page holds one)")
    return n


def minutes_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid minutes {text!r}") from None
    if not 0 < v <= 24 * 60:
        raise argparse.ArgumentTypeError(f"--idle-timeout {text} is out of range: more than 0, "
                                         "at most 1440 minutes")
    return v


def _url(host: str, port: int, scheme: str = "http") -> str:
    """The address to open in a browser on this machine for a server bound to ``host``."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}/"


CHANNEL_TIMEOUT = 15      # seconds a connection may sit idle or half-sent before it is closed
CONNECTION_LIMIT = 500    # open connections before new ones wait (idle ones time out first)


def listen_addresses(host: str, port: int) -> list[tuple[str, int]]:
    """Where to listen for --bind HOST:PORT. A loopback bind takes both loopbacks (127.0.0.1
    and ::1, when this machine has IPv6), so no other local user can take the other one and
    serve a copy of the login form to http://localhost:PORT/."""
    from .auth import is_loopback

    if not is_loopback(host):
        return [(host, port)]
    out = [("127.0.0.1", port)]
    if _has_ipv6_loopback():
        out.append(("::1", port))
    return out


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(addrs: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets on every address, or none and a one-line refusal naming the one
    that is taken: the banner is printed only after all of them are ours."""
    socks: list[socket.socket] = []
    try:
        for host, port in addrs:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            s.bind((host, port))
            s.listen(1024)
    except OSError as e:
        for s in socks:
            s.close()
        why = ("it is in use (another 'cblb web', or another program or user, holds it); "
               "choose another with --bind" if e.errno == E.EADDRINUSE else e.strerror or str(e))
        raise CblbError(f"cannot listen on {_show(host, port)}: {why}", e.errno or 0) from None
    return socks


def make_server(app: Any, socks: list[socket.socket], threads: int,
                channel_timeout: float = CHANNEL_TIMEOUT, tls: ssl.SSLContext | None = None) -> Any:
    """The waitress server on already-bound sockets. Waitress reads each request whole
    before a thread takes it, and closes a connection idle or half-sent for
    ``channel_timeout`` seconds, so slow clients hold no thread and cannot lock the
    administrator out; each open page's live stream holds one thread.

    With ``tls`` (waitress has no TLS) the sockets get web.tls.TLSFront: the handshake in a
    thread per connection, bounded in time, and waitress behind it on an internal port."""
    from waitress.server import create_server

    def waitress(wsgi: Any, on: list[socket.socket]) -> Any:
        return create_server(wsgi, sockets=on, threads=threads, ident="cblb",
                             channel_timeout=channel_timeout, connection_limit=CONNECTION_LIMIT,
                             cleanup_interval=max(1, min(30, int(channel_timeout))),
                             clear_untrusted_proxy_headers=True)

    if tls is None:
        return waitress(app, socks)
    from .tls import tls_server

    return tls_server(app, socks, tls, waitress, channel_timeout, CONNECTION_LIMIT)


SYSLOG = "/dev/log"


def log_to_syslog(address: str = SYSLOG) -> None:
    """Send the page's audit lines (logger cblb.web: logins, failed logins, logouts,
    actions, with session tag and peer) to syslog / the journal, as facility auth."""
    import logging
    import logging.handlers

    logger = logging.getLogger("cblb.web")
    logger.setLevel(logging.INFO)
    if any(getattr(h, "address", None) == address for h in logger.handlers):
        return          # (a second `cblb web` in one process: tests)
    try:
        h = logging.handlers.SysLogHandler(address=address,
                                           facility=logging.handlers.SysLogHandler.LOG_AUTH)
    except OSError as e:
        print(f"cblb web: no syslog at {address} ({e.strerror}): logging to stderr",
              file=sys.stderr)
        logger.addHandler(logging.StreamHandler())
        return
    h.setFormatter(logging.Formatter("cblb-web: %(message)s"))
    logger.addHandler(h)


def serve_forever(server: Any) -> None:
    server.run()


def _demo_config(config: dict[str, Any]) -> None:
    """`--standin`: the real Controller over a fake module (cblb.fake) in a temporary folder;
    catalogs and mounts go to folders inside it, nothing on this machine is touched."""
    from cblb.control import Controller
    from cblb.fake import FakeSystem

    fake = FakeSystem(grow_bytes_per_s=1.5e6)
    for d in ("catalog", "mnt"):
        (fake.base / d).mkdir()
    config.update(CBLB_CONTROLLER=Controller(system=fake), CBLB_SAMPLER=fake.write_samples,
                  CBLB_CATALOG_ROOTS=(str(fake.base / "catalog"),),
                  CBLB_DEFAULT_CATALOG=str(fake.base / "catalog"),
                  CBLB_MOUNT_ROOTS=(str(fake.base / "mnt"),))


def _token_file(args: argparse.Namespace) -> Path:
    from .auth import default_token_file

    return Path(args.token_file) if args.token_file else default_token_file()


def _rotate(args: argparse.Namespace) -> int:
    from .auth import rotate_token

    path = _token_file(args)
    try:
        token = rotate_token(path)
    except OSError as e:
        raise CblbError(f"cannot write the token file {path}: {e.strerror}", e.errno or 0) from None
    if args.json:
        emit_json({"token_file": str(path), "token": token})
        return 0
    print(f"new access token (stored in {path}, mode 0600):\n  {token}\n"
          "a running 'cblb web' takes it at its next request; sessions logged in with the "
          "old token must log in again")
    return 0


PLAIN_WARNING = ("cblb web: warning: plain HTTP on an address other machines reach: the "
                 "access token and the session cookie cross the network readable; drop "
                 "--no-tls (a self-signed certificate is made), give --tls-cert/--tls-key, "
                 "or bind to loopback behind a TLS proxy (--trusted-proxy)")


def tls_setup(args: argparse.Namespace, host: str) -> tuple[ssl.SSLContext | None, list[str]]:
    """The TLS context for this start, and the banner lines about it: the administrator's
    certificate; else, on a bind that is not loopback and without --no-tls, the self-signed
    one in --tls-dir (made on first start); else none (plain HTTP)."""
    from .auth import is_loopback
    from .tls import (
        TLSSetupError,
        default_names,
        ensure_self_signed,
        fingerprint,
        server_context,
    )

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CblbError("--tls-cert and --tls-key go together: give both", E.EINVAL)
    if args.tls_cert and args.no_tls:
        raise CblbError("--no-tls and --tls-cert contradict each other: give one", E.EINVAL)
    try:
        if args.tls_cert:
            cert, key = Path(args.tls_cert), Path(args.tls_key)
            ctx = server_context(cert, key)
            return ctx, [f"TLS with {cert} (SHA-256 {fingerprint(cert)})"]
        if args.no_tls or is_loopback(host):
            return None, []
        folder = Path(args.tls_dir or DEFAULT_TLS_DIR)
        cert, key, made = ensure_self_signed(folder, default_names(host))
        ctx = server_context(cert, key)
    except (OSError, ValueError, TLSSetupError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise CblbError(f"cannot set up TLS: {why}", getattr(e, "errno", None) or E.EACCES) \
            from None
    return ctx, [f"TLS with a self-signed certificate ({'made now, ' if made else ''}{cert}); "
                 "browsers warn until it is accepted: check that they show SHA-256 "
                 f"{fingerprint(cert)}", "  (your own certificate: --tls-cert FILE --tls-key FILE)"]


def _web(args: argparse.Namespace, ctl: Any) -> int:
    if args.rotate_token:
        return _rotate(args)
    from . import create_app
    from .auth import ensure_token, is_loopback

    host, port = args.bind
    path = _token_file(args)
    try:
        token, created = ensure_token(path)
    except (OSError, ValueError) as e:
        raise CblbError(f"cannot use the token file {path}: {e}", E.EACCES) from None
    tls, tls_lines = tls_setup(args, host)
    config: dict[str, Any] = {"CBLB_CONTROLLER": ctl, "CBLB_TOKEN_FILE": path,
                              "CBLB_CHECK_HOST": is_loopback(host) or bool(args.allowed_host),
                              "CBLB_ALLOWED_HOSTS": tuple(args.allowed_host or ()),
                              "CBLB_TRUSTED_PROXIES": tuple(args.trusted_proxy or ()),
                              "CBLB_IDLE_TIMEOUT": args.idle_timeout * 60}
    metrics_created = ""
    if args.metrics_token_file:
        mpath = Path(args.metrics_token_file)
        try:
            mtoken, made = ensure_token(mpath)
        except (OSError, ValueError) as e:
            raise CblbError(f"cannot use the metrics token file {mpath}: {e}", E.EACCES) from None
        if mtoken == token:
            raise CblbError(f"{mpath} holds the access token itself: give /metrics a file "
                            "of its own", E.EINVAL)
        config["CBLB_METRICS_TOKEN_FILE"] = mpath
        metrics_created = mtoken if made else ""
    if args.standin:
        _demo_config(config)
    if args.catalog_root:
        config["CBLB_CATALOG_ROOTS"] = tuple(os.path.abspath(d) for d in args.catalog_root)
    if args.catalog:
        config["CBLB_DEFAULT_CATALOG"] = args.catalog
    app = create_app(config)
    addrs = listen_addresses(host, port)
    try:
        socks = bind_sockets(addrs)
    except CblbError:
        app.extensions["cblb_history"].stop()
        raise
    server = make_server(app, socks, args.threads, tls=tls)
    where = " and ".join(_show(h, p) for h, p in addrs)
    print(f"cblb web: serving {_url(host, port, 'https' if tls else 'http')} (listening on "
          f"{where})" + (" (demo: fake module, no kernel)" if args.standin else ""))
    for line in tls_lines:
        print(line)
    if tls is None and not is_loopback(host):
        print(PLAIN_WARNING, file=sys.stderr)
    if created:
        print(f"log in with this access token (shown this once; stored in {path}, mode 0600):\n"
              f"  {token}")
    else:
        print(f"log in with the access token stored in {path} (root only: sudo cat {path}); "
              "'cblb web --rotate-token' replaces it")
    if metrics_created:
        print(f"/metrics also takes this read-only token (stored in "
              f"{args.metrics_token_file}, mode 0600):\n  {metrics_created}")
    if is_loopback(host):
        print("bound to loopback: reach it from elsewhere through an SSH tunnel "
              f"(ssh -L {port}:127.0.0.1:{port} HOST), or --bind 0.0.0.0:PORT")
    sys.stdout.flush()
    log_to_syslog(SYSLOG)
    try:
        serve_forever(server)
    finally:
        server.close()
        app.extensions["cblb_history"].stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="serve the browser control page (default 127.0.0.1:8470)",
                       description="Serve the browser control page. Every request needs the "
                       "access token (the login form, or Authorization: Bearer TOKEN), on "
                       "loopback too: the page runs as root.")
    p.add_argument("--bind", type=bind_arg, default=(("127.0.0.1", DEFAULT_PORT)),
                   metavar="HOST:PORT",
                   help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT}); a bad "
                        "address exits with 2")
    p.add_argument("--token-file", metavar="PATH",
                   help="where the access token is kept (default /var/lib/cblb/web-token)")
    p.add_argument("--rotate-token", action="store_true",
                   help="replace the access token, print the new one and exit; a running "
                        "server logs every session out")
    p.add_argument("--json", action="store_true", help="with --rotate-token: machine-readable")
    p.add_argument("--catalog-root", metavar="DIR", action="append",
                   help="a folder the page may keep temp files in (repeat; default "
                        "/var/lib/cblb); it and every folder above it must be root's")
    p.add_argument("--catalog", metavar="DIR", help="default catalog shown in the start form")
    p.add_argument("--metrics-token-file", metavar="PATH",
                   help="a read-only token for /metrics alone (made on first use, mode 0600), "
                        "so Prometheus never holds the access token")
    p.add_argument("--idle-timeout", type=minutes_arg, default=15, metavar="MINUTES",
                   help="a session ends after this long without a request (default 15)")
    p.add_argument("--threads", type=threads_arg, default=16,
                   help="server threads (each open page holds one; default 16)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve HTTPS with this certificate (PEM; with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE",
                   help="the certificate's private key (PEM, root's alone)")
    p.add_argument("--tls-dir", metavar="DIR",
                   help="where the self-signed certificate made for a bind that is not "
                        f"loopback is kept (default {DEFAULT_TLS_DIR}, mode 0700)")
    p.add_argument("--no-tls", action="store_true",
                   help="plain HTTP even on a bind that is not loopback (warns)")
    p.add_argument("--allowed-host", metavar="NAME", action="append", type=host_name_arg,
                   help="a host name the page answers to (repeat), besides the loopback "
                        "names: the name a reverse proxy or browser uses")
    p.add_argument("--trusted-proxy", metavar="ADDR", action="append", type=proxy_arg,
                   help="a reverse proxy (address or network, repeat) whose X-Forwarded-For, "
                        "-Proto and -Host the page believes; from others they are ignored")
    p.add_argument("--standin", action="store_true",
                   help="demo: the real control library over a fake module in a temporary "
                        "folder, no kernel (to look at the page)")
    p.set_defaults(func=_web)
