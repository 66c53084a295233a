"""Host tests of issue 22's TLS and reverse-proxy points: `cblb web` over HTTPS for real (a
self-signed certificate made at first start, or the administrator's), the plain-HTTP
warning, and --allowed-host / --trusted-proxy behind a TLS proxy."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import threading

import pytest
from test_web import TOKEN, free_port, make_app

from cblb import cli
from web import command as web_cmd


def serving(monkeypatch, check):
    """cblb web serves for real, in a thread, while ``check(server)`` runs; then it stops."""
    seen = {}

    def serve(server):
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        seen["result"] = check(server)

    monkeypatch.setattr(web_cmd, "serve_forever", serve)
    return seen


def https_get(port, cafile, path="/login", host="127.0.0.1"):
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/html\r\n"
                      "Connection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
    return out.decode(errors="replace")


def plain_get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                  .encode())
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def test_public_bind_makes_a_self_signed_certificate_and_serves_https(tmp_path, monkeypatch,
                                                                      capsys):
    tls_dir = tmp_path / "etc" / "web-tls"
    port = free_port()

    def check(server):
        cert = tls_dir / "cert.pem"
        page = https_get(port, cert)                 # verified against the made certificate: the login form
        assert page.startswith("HTTP/1.1 401") and 'name="token"' in page
        cookie = re.search(r"Set-Cookie: (.*)", page).group(1)
        assert cookie.startswith(f"cblb_session_{port}=") and "Secure" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert not plain_get(port).startswith(b"HTTP/")   # plain HTTP gets no page
        assert https_get(port, cert).startswith("HTTP/1.1 401")   # and the server goes on
        # waitress' own port takes nothing that did not come through the TLS front
        inner = server.front.inner[1]
        with socket.create_connection(("127.0.0.1", inner), timeout=10) as s:
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 421")
        return True

    seen = serving(monkeypatch, check)
    assert cli.main(["web", "--bind", f"0.0.0.0:{port}", "--token-file", str(tmp_path / "t"),
                     "--standin", "--tls-dir", str(tls_dir)]) == 0
    assert seen["result"]
    out = capsys.readouterr()
    assert f"https://127.0.0.1:{port}/" in out.out and "self-signed" in out.out
    assert "made now" in out.out and "SHA-256" in out.out and "warning" not in out.err
    assert stat.S_IMODE(os.stat(tls_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tls_dir / "key.pem").st_mode) == 0o600
    # the next start keeps it
    before = (tls_dir / "cert.pem").read_bytes()
    seen = serving(monkeypatch, lambda server: https_get(port, tls_dir / "cert.pem"))
    assert cli.main(["web", "--bind", f"0.0.0.0:{port}", "--token-file", str(tmp_path / "t"),
                     "--standin", "--tls-dir", str(tls_dir)]) == 0
    assert seen["result"].startswith("HTTP/1.1 401")
    assert (tls_dir / "cert.pem").read_bytes() == before
    assert "made now" not in capsys.readouterr().out


def test_tls_cert_and_key_flags_on_loopback(tmp_path, monkeypatch, capsys):
    from web.tls import make_self_signed

    cert_pem, key_pem = make_self_signed(["localhost", "127.0.0.1"])
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    port = free_port()
    seen = serving(monkeypatch, lambda server: (https_get(port, cert, host="localhost"),
                                                plain_get(port)))
    assert cli.main(["web", "--bind", f"127.0.0.1:{port}", "--token-file", str(tmp_path / "t"),
                     "--standin", "--tls-cert", str(cert), "--tls-key", str(key)]) == 0
    page, plain = seen["result"]
    assert page.startswith("HTTP/1.1 401") and "Secure" in page and not plain.startswith(b"HTTP")
    assert f"https://127.0.0.1:{port}/" in capsys.readouterr().out


@pytest.mark.parametrize("argv, why", [
    (["--tls-cert", "c.pem"], "go together"),
    (["--tls-key", "k.pem"], "go together"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem", "--no-tls"], "contradict"),
])
def test_tls_flag_mistakes_are_refused(tmp_path, argv, why, capsys):
    assert cli.main(["web", "--token-file", str(tmp_path / "t"), "--standin",
                     "--bind", f":{free_port()}", *argv]) == 1
    assert why in capsys.readouterr().err


def test_a_tls_folder_others_can_read_is_refused_not_tightened(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(web_cmd, "serve_forever", lambda server: None)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(mode=0o755)
    tls_dir.chmod(0o755)
    assert cli.main(["web", "--bind", f"0.0.0.0:{free_port()}", "--token-file",
                     str(tmp_path / "t"), "--standin", "--tls-dir", str(tls_dir)]) == 1
    err = capsys.readouterr().err
    assert "cannot set up TLS" in err and "0755" in err
    assert stat.S_IMODE(os.stat(tls_dir).st_mode) == 0o755 and not list(tls_dir.iterdir())


def test_public_plain_http_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(web_cmd, "serve_forever", lambda server: None)
    port = free_port()
    assert cli.main(["web", "--bind", f"0.0.0.0:{port}", "--token-file", str(tmp_path / "t"),
                     "--standin", "--no-tls", "--tls-dir", str(tmp_path / "tls")]) == 0
    out = capsys.readouterr()
    assert f"http://127.0.0.1:{port}/" in out.out
    warn = [ln for ln in out.err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "plain HTTP" in warn[0]
    assert not (tmp_path / "tls").exists()
    # loopback stays plain, without a warning or a certificate
    assert cli.main(["web", "--bind", f"127.0.0.1:{free_port()}", "--token-file",
                     str(tmp_path / "t"), "--standin", "--tls-dir", str(tmp_path / "tls")]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err and "TLS" not in out.out and not (tmp_path / "tls").exists()


def test_the_tls_front_drops_a_silent_client_without_holding_others(tmp_path, ctl):
    """A client that connects and never starts the handshake holds one connection, not the
    server; it is dropped after the handshake timeout."""
    import time

    from web.tls import make_self_signed, server_context

    cert_pem, key_pem = make_self_signed(["127.0.0.1"])
    (tmp_path / "c").write_bytes(cert_pem)
    (tmp_path / "k").write_bytes(key_pem)
    app = make_app(ctl, CBLB_CHECK_HOST=False)
    socks = web_cmd.bind_sockets([("127.0.0.1", 0)])
    port = socks[0].getsockname()[1]
    server = web_cmd.make_server(app, socks, threads=2, channel_timeout=2,
                                 tls=server_context(tmp_path / "c", tmp_path / "k"))
    server.front.handshake_timeout = 1
    threading.Thread(target=server.run, daemon=True).start()
    try:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        t0 = time.monotonic()
        assert https_get(port, tmp_path / "c").startswith("HTTP/1.1 401")
        assert time.monotonic() - t0 < 3
        silent[0].settimeout(5)
        assert silent[0].recv(10) == b""          # dropped after the handshake timeout
        for s in silent:
            s.close()
    finally:
        server.close()


# ---- the proxy flags (web/proxy.py's tests are in test_web_proxy.py) -------------------
def test_proxy_flags_reach_the_page(tmp_path, monkeypatch):
    from test_web import record_served

    served = record_served(monkeypatch)
    assert cli.main(["web", "--bind", f"127.0.0.1:{free_port()}", "--token-file",
                     str(tmp_path / "t"), "--standin", "--allowed-host", "CBLB.example.com",
                     "--allowed-host", "cblb.lan", "--trusted-proxy", "127.0.0.1",
                     "--trusted-proxy", "10.0.0.0/24"]) == 0
    cfg = served[0].config
    assert cfg["CBLB_ALLOWED_HOSTS"] == ("cblb.example.com", "cblb.lan")
    assert cfg["CBLB_TRUSTED_PROXIES"] == ("127.0.0.1/32", "10.0.0.0/24")
    assert cfg["CBLB_CHECK_HOST"]


@pytest.mark.parametrize("argv", [["--trusted-proxy", "proxy.lan"],
                                  ["--allowed-host", "cblb.example.com:443"],
                                  ["--allowed-host", "a/b"]])
def test_bad_proxy_flags_are_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["web", *argv])
    assert e.value.code == 2


def test_readme_web_section_covers_every_cblb_web_option():
    """README's web section names each `cblb web` option, the TLS and proxy ones included,
    and its threat model says what TLS protects."""
    import argparse
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The web page", 1)[1].split("\n## ", 1)[0]
    p = argparse.ArgumentParser()
    web_cmd.register(p.add_subparsers())
    web = p._subparsers._group_actions[0].choices["web"]
    flags = [o for a in web._actions for o in a.option_strings
             if o.startswith("--") and o not in ("--help", "--json", "--bind", "--threads",
                                                 "--catalog", "--standin")]
    missing = [f for f in flags if f not in section]
    assert not missing, missing
    model = section.split("**Threat model.**", 1)[1]
    assert "plain HTTP only" not in model and "fingerprint" in model and "Secure" in model
