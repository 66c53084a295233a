"""TLS for `cblb web`: the certificate, and a TLS front for waitress (which has no TLS).

The certificate is the administrator's (``--tls-cert/--tls-key``) or, on a bind that is not
loopback, a self-signed one made at first start (as Cockpit does) in a folder only root can
read (``/etc/cblb/web-tls``: ``cert.pem``, and ``key.pem`` mode 0600). A folder or key
another user could read or write is refused, never tightened and trusted. It is made again
when it has expired.

:class:`TLSFront` listens on the public sockets. Each connection gets the TLS handshake in a
thread of its own, bounded in time (a client that connects and sends nothing holds no other
connection up), then its plaintext goes to waitress over loopback, to an internal port. A
small WSGI layer (:func:`tls_environ`) gives the application the real peer, the public port
(the session cookie is named after it) and ``https``, so the cookie gets ``Secure``; a
connection to the internal port that did not come through the front (another local user)
is answered 421 and reaches nothing. Waitress keeps its own limits (idle and half-sent
requests closed after the channel timeout, a bounded number of connections); the front
closes a connection idle that long too, and takes at most ``limit`` at once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import select
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterable
from hashlib import sha256
from pathlib import Path
from typing import Any

CERT_DAYS = 365
HANDSHAKE_TIMEOUT = 10.0


class TLSSetupError(Exception):
    """The certificate or its folder cannot be used; the message says why."""


# ---- the certificate ------------------------------------------------------------------------
def _check_folder(folder: Path) -> None:
    st = os.stat(folder, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise TLSSetupError(f"{folder} is not a folder")
    if st.st_uid not in (0, os.geteuid()):
        raise TLSSetupError(f"{folder} is owned by uid {st.st_uid}, not root: refused "
                            "(someone else could have put a key there)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise TLSSetupError(f"{folder} has mode {stat.S_IMODE(st.st_mode):04o}: others may "
                            "read the key in it, so it is refused (it must be 0700)")


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _san_names(names: Iterable[str]) -> list[Any]:
    from cryptography import x509

    out: list[Any] = []
    seen: set[str] = set()
    for n in names:
        n = n.strip("[]")
        if not n or n in seen or n in ("0.0.0.0", "::"):
            continue
        seen.add(n)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def make_self_signed(names: Iterable[str], days: int = CERT_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): an EC P-256 key and a certificate for ``names`` (host
    names and addresses), valid ``days`` days from now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = list(names)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ["cblb"])[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cblb web (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(_san_names(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _expired(cert_path: Path) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    end = cert.not_valid_after.replace(tzinfo=dt.timezone.utc)
    return end <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)


def ensure_self_signed(folder: Path, names: Iterable[str]) -> tuple[Path, Path, bool]:
    """(cert, key, created): the self-signed certificate in ``folder``, made on first use
    (and again once expired). The folder is made mode 0700; one that others may read or
    write, or a key file that is not root's alone, is refused."""
    from web.auth import check_secret_file

    folder = Path(folder)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.mkdir(folder, 0o700)
    _check_folder(folder)
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        try:
            check_secret_file(key, os.stat(key, follow_symlinks=False))
        except ValueError as e:
            raise TLSSetupError(str(e)) from None
        try:
            if not _expired(cert):
                return cert, key, False
        except ValueError as e:
            raise TLSSetupError(f"{cert} is not a PEM certificate ({e}); delete it and start "
                                "again") from None
    cert_pem, key_pem = make_self_signed(names)
    _write(key, key_pem, 0o600)
    _write(cert, cert_pem, 0o644)
    return cert, key, True


def default_names(host: str) -> list[str]:
    """What a self-signed certificate names: this machine and the address bound."""
    names = [socket.gethostname(), socket.getfqdn(), host, "localhost", "127.0.0.1", "::1"]
    return [n for n in dict.fromkeys(names) if n]


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER), as browsers show it: AB:CD:..."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())
    h = sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key``: TLS 1.2 at least, the default ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise TLSSetupError(f"cannot use the certificate {cert} with the key {key}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    return ctx


# ---- the front --------------------------------------------------------------------------------
class _Peers:
    """Internal connection (its local port) -> (peer address, peer port, public port)."""

    def __init__(self) -> None:
        self._map: dict[int, tuple[str, int, int]] = {}
        self._lock = threading.Lock()

    def add(self, port: int, peer: tuple[str, int, int]) -> None:
        with self._lock:
            self._map[port] = peer

    def drop(self, port: int) -> None:
        with self._lock:
            self._map.pop(port, None)

    def get(self, port: int) -> tuple[str, int, int] | None:
        with self._lock:
            return self._map.get(port)


def tls_environ(app: Callable[..., Any], peers: _Peers) -> Callable[..., Any]:
    """WSGI layer between waitress (on the internal port) and the page: the connection's
    real peer and public port, and ``https``; a connection not made by the front gets 421."""
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            local = int(environ.get("REMOTE_PORT") or 0)
        except ValueError:
            local = 0
        peer = peers.get(local) if environ.get("REMOTE_ADDR") == "127.0.0.1" else None
        if peer is None:
            start_response("421 Misdirected Request", [("Content-Type", "text/plain")])
            return [b"421 this port takes connections from the TLS front only\n"]
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = peer[0], str(peer[1])
        environ["SERVER_PORT"] = str(peer[2])
        environ["wsgi.url_scheme"] = "https"
        environ["HTTPS"] = "on"
        return app(environ, start_response)
    return wrapped


class TLSServer:
    """What ``make_server`` returns under TLS: waitress on the internal port and the front,
    run and closed together."""

    def __init__(self, server: Any, front: "TLSFront") -> None:
        self.server, self.front = server, front

    def run(self) -> None:
        self.front.start()
        self.server.run()

    def close(self) -> None:
        self.front.close()
        self.server.close()


def tls_server(app: Any, listeners: list[socket.socket], ctx: ssl.SSLContext,
               make_waitress: Callable[[Any, list[socket.socket]], Any], idle: float,
               limit: int) -> TLSServer:
    """The page over TLS on ``listeners``: waitress (made by ``make_waitress(wsgi, socks)``)
    listens on an internal 127.0.0.1 port that only the front's connections get through."""
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inner.bind(("127.0.0.1", 0))
    inner.listen(1024)
    peers = _Peers()
    server = make_waitress(tls_environ(app, peers), [inner])
    front = TLSFront(listeners, ctx, inner.getsockname(), peers, idle, limit)
    return TLSServer(server, front)


class TLSFront:
    """TLS on ``listeners`` (bound, listening sockets), relaying to waitress on
    ``inner`` (127.0.0.1, internal port). ``run()`` serves until ``close()``."""

    def __init__(self, listeners: list[socket.socket], ctx: ssl.SSLContext,
                 inner: tuple[str, int], peers: _Peers, idle: float, limit: int,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.listeners, self.ctx, self.inner, self.peers = listeners, ctx, inner, peers
        self.idle, self.handshake_timeout = idle, handshake_timeout
        self._slots = threading.BoundedSemaphore(limit)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for ls in self.listeners:
            ls.settimeout(0.5)
            t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True,
                                 name="cblb-tls-accept")
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for ls in self.listeners:
            ls.close()

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.5):
                continue
            try:
                conn, addr = ls.accept()
            except (TimeoutError, socket.timeout):
                self._slots.release()
                continue
            except OSError:
                self._slots.release()
                if self._stop.is_set():
                    return
                continue
            port = ls.getsockname()[1]
            threading.Thread(target=self._serve, args=(conn, addr, port), daemon=True,
                             name="cblb-tls-conn").start()

    def _serve(self, conn: socket.socket, addr: Any, public_port: int) -> None:
        inner: socket.socket | None = None
        local = 0
        try:
            conn.settimeout(self.handshake_timeout)
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError, ValueError):
                return          # plain HTTP, a bad client, or too slow: closed, nothing read
            conn = tls
            inner = socket.create_connection(self.inner, timeout=5)
            local = inner.getsockname()[1]
            self.peers.add(local, (str(addr[0]), int(addr[1]), public_port))
            _relay(tls, inner, self.idle, self._stop)
        except OSError:
            pass
        finally:
            if local:
                self.peers.drop(local)
            for s in (inner, conn):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            self._slots.release()


CHUNK = 64 * 1024
BUFFER_MAX = 1024 * 1024


def _relay(tls: ssl.SSLSocket, inner: socket.socket, idle: float,
           stop: threading.Event) -> None:
    """Copy bytes both ways until both sides are done, or nothing moves for ``idle`` s."""
    tls.setblocking(False)
    inner.setblocking(False)
    to_inner, to_tls = bytearray(), bytearray()
    client_done = server_done = shut = False
    while not stop.is_set():
        if server_done and not to_tls:
            try:
                tls.unwrap()    # a close_notify: the client sees a clean end
            except (OSError, ssl.SSLError, ValueError):
                pass
            return
        if client_done and not to_inner and not shut:
            shut = True
            try:
                inner.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        rd: list[socket.socket] = []
        wr: list[socket.socket] = []
        if not client_done and len(to_inner) < BUFFER_MAX:
            rd.append(tls)
        if not server_done and len(to_tls) < BUFFER_MAX:
            rd.append(inner)
        if to_inner:
            wr.append(inner)
        if to_tls:
            wr.append(tls)
        readable: list[Any]
        writable: list[Any]
        if tls in rd and tls.pending():
            readable, writable = [tls], []
        else:
            readable, writable, _ = select.select(rd, wr, [], idle)
            if not readable and not writable:
                return      # idle for the whole timeout
        if tls in readable:
            try:
                data = tls.recv(CHUNK)
                if data:
                    to_inner += data
                else:
                    client_done = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError):
                return
        if inner in readable:
            try:
                data = inner.recv(CHUNK)
                if data:
                    to_tls += data
                else:
                    server_done = True
            except BlockingIOError:
                pass
            except OSError:
                return
        if inner in writable and to_inner:
            try:
                del to_inner[:inner.send(to_inner)]
            except BlockingIOError:
                pass
            except OSError:
                return
        if tls in writable and to_tls:
            try:
                del to_tls[:tls.send(to_tls)]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError):
                return
        if client_done and server_done and not to_tls:
            return
