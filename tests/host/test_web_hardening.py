"""Host tests of the page's hardening (issue 22): what a local user, a network user or a
cookie thief tries, and the page's robustness against odd input and odd sysfs files.

Like tests/host/test_web.py: the real Controller over cblb.fake.FakeSystem, the real app;
`cblb web` binds real sockets on free loopback ports.
"""

from __future__ import annotations

import socket
import time

import pytest
from test_web import HX, TOKEN, free_port, logged_in, make_active, make_app, record_served, text

from cblb import cli
from cblb.commands import web as web_cmd
from cblb.control import Controller
from cblb.fake import FakeSystem


@pytest.fixture
def fake(tmp_path):
    return FakeSystem(tmp_path / "fake", loaded=True, total=4)


@pytest.fixture
def ctl(fake):
    return Controller(system=fake)


@pytest.fixture
def catalog(tmp_path):
    d = tmp_path / "catalog"
    d.mkdir()
    return d


@pytest.fixture
def app(ctl, fake, tmp_path, catalog):
    (tmp_path / "mnt").mkdir()
    return make_app(ctl, CBLB_SAMPLER=fake.write_samples, CBLB_CATALOG_ROOTS=(str(catalog),),
                    CBLB_DEFAULT_CATALOG=str(catalog), CBLB_MOUNT_ROOTS=(str(tmp_path / "mnt"),),
                    CBLB_SSE_INTERVAL=0.0)


@pytest.fixture
def client(app):
    return logged_in(app)


BEARER = {"Authorization": f"Bearer {TOKEN}"}


# ---- robustness -------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["file_mib", "max_files"])
def test_cost_with_a_huge_number_is_a_refusal_not_a_500(client, catalog, field):
    q = {"catalog": str(catalog), "file_mib": "64", "max_files": "8", field: "9" * 4000}
    r = client.get("/lifecycle/cost", query_string=q, headers=HX)
    assert r.status_code == 422
    assert "is out of range" in text(r) and "9" * 30 not in text(r)


def test_start_with_a_huge_number_is_a_refusal(client, ctl, catalog):
    from test_web import post

    ctl.create("s", "/dev/vdb1")
    r = post(client, "/snapshots/s/start", {"catalog": str(catalog), "file_mib": "9" * 4000,
                                            "max_files": "4"}, htmx=True)
    assert r.status_code == 422 and "out of range" in text(r)
    assert ctl.snapshot("s").state.value == "created"


def test_one_malformed_sysfs_line_shows_that_device_unreadable(client, ctl, fake, catalog):
    make_active(ctl, catalog, "good", "/dev/vdb1")
    make_active(ctl, catalog, "bad", "/dev/vdb2")
    (fake.sysfs / "bad" / "store_extents").write_text("garbage\n")
    for url in ("/", "/devices"):
        r = client.get(url, headers=HX if url == "/devices" else {})
        assert r.status_code == 200, url
        body = text(r)
        assert 'id="dev-good"' in body and 'class="badge active"' in body
        assert 'id="dev-bad"' in body and "unreadable" in body and "store_extents" in body
    st = client.get("/api/status").get_json()
    assert st["error"] == ""
    bad = next(s for s in st["snapshots"] if s["name"] == "bad")
    assert bad["unreadable"] and "store_extents" in bad["error"]
    m = client.get("/metrics", headers=BEARER)
    assert m.status_code == 200
    body = m.get_data(as_text=True)
    assert "cblb_up 0.0" in body and "store_extents" in body
    assert 'cblb_snapshot_state{name="good",origin="/dev/vdb1",state="active"} 1.0' in body


def test_metrics_report_cblb_up_0_when_the_module_cannot_be_read(client, fake):
    (fake.module_sysfs / "parameters" / "total").write_text("four\n")
    m = client.get("/metrics", headers=BEARER)
    assert m.status_code == 200 and "cblb_up 0.0" in m.get_data(as_text=True)
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("n", ["0", "-1", "x", "100000"])
def test_threads_0_is_refused(n, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["web", "--threads", n])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_bind_ipv6_any_prints_an_ipv6_address(tmp_path, monkeypatch, capsys):
    record_served(monkeypatch)
    port = free_port()
    assert cli.main(["web", "--bind", f"[::]:{port}", "--token-file", str(tmp_path / "t"),
                     "--standin"]) == 0
    out = capsys.readouterr().out
    assert f"://[::1]:{port}/" in out and "127.0.0.1" not in out.split("\n")[0]


# ---- the port --------------------------------------------------------------------------------
def test_loopback_bind_takes_both_loopbacks(tmp_path, monkeypatch, capsys):
    served = record_served(monkeypatch)
    port = free_port()
    held = []
    real = web_cmd.serve_forever

    def probe(server):
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(fam) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    held.append(host)
        return real  # not called: no serving

    monkeypatch.setattr(web_cmd, "serve_forever", probe)
    assert cli.main(["web", "--bind", f"127.0.0.1:{port}", "--token-file",
                     str(tmp_path / "t"), "--standin"]) == 0
    assert served and held == ["127.0.0.1", "::1"]
    assert f"[::1]:{port}" in capsys.readouterr().out


@pytest.mark.parametrize("taken", ["127.0.0.1", "::1"])
def test_a_taken_port_is_one_line_and_no_banner(tmp_path, monkeypatch, capsys, taken):
    record_served(monkeypatch)
    port = free_port()
    fam = socket.AF_INET6 if ":" in taken else socket.AF_INET
    with socket.socket(fam) as other:          # another local user got there first
        other.bind((taken, port))
        other.listen(1)
        assert cli.main(["web", "--bind", f"localhost:{port}", "--token-file",
                         str(tmp_path / "t"), "--standin"]) == 1
    cap = capsys.readouterr()
    assert "serving" not in cap.out and "access token" not in cap.out
    assert cap.err.count("\n") == 1 and "cannot listen on" in cap.err and "in use" in cap.err
    assert str(port) in cap.err


def test_slow_clients_cannot_lock_the_admin_out(app):
    socks = web_cmd.bind_sockets([("127.0.0.1", 0)])
    port = socks[0].getsockname()[1]
    server = web_cmd.make_server(app, socks, threads=2, channel_timeout=2)
    import threading

    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    idle = []
    try:
        for _ in range(150):                      # half-sent requests, never finished
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            idle.append(s)
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
            got = s.recv(100)
        assert got.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 < 3
        # and the half-sent ones are dropped once they idled for the timeout
        idle[0].settimeout(10)
        t0 = time.monotonic()
        answer = idle[0].recv(100)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
        assert time.monotonic() - t0 < 8
    finally:
        for s in idle:
            s.close()
        server.close()
