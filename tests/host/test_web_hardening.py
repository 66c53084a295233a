"""Host tests of the page's hardening (issue 22): what a local user, a network user or a
cookie thief tries, and the page's robustness against odd input and odd sysfs files.

Like tests/host/test_web.py: the real Controller over cblb.fake.FakeSystem, the real app;
`cblb web` binds real sockets on free loopback ports.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time

import pytest
from test_web import HX, TOKEN, free_port, logged_in, make_active, make_app, record_served, text

from cblb import cli
from cblb.errors import CblbError
from web import command as web_cmd


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


# ---- sessions ----------------------------------------------------------------------------------
def session_cookie(client, name="cblb_session_80"):
    c = client.get_cookie(name)
    assert c is not None, "logged in: the session cookie is set"
    return c.value


def replay(app, value, name="cblb_session_80"):
    """Another client (a cookie thief) presenting a saved cookie."""
    thief = app.test_client()
    thief.set_cookie(name, value)
    return thief


def test_a_cookie_saved_before_logout_opens_nothing_after(app, client, ctl):
    from test_web import post

    saved = session_cookie(client)
    thief = replay(app, saved)
    assert thief.get("/").status_code == 200          # the same session, before logout
    assert post(client, "/logout", {}).status_code == 303
    assert thief.get("/").status_code == 401
    r = thief.post("/snapshots", data={"name": "s", "origin": "/dev/vdb1",
                                       "csrf_token": "x"})
    assert r.status_code == 401 and ctl.names() == []
    assert client.get("/").status_code == 401


def test_login_takes_a_new_session_id(app):
    c = app.test_client()
    c.get("/login", headers={"Accept": "text/html"})
    before = session_cookie(c)
    from test_web import login

    assert login(c).status_code == 303
    after = session_cookie(c)
    assert after != before
    assert replay(app, before).get("/").status_code == 401


def test_the_cookie_holds_only_an_id(client):
    import base64

    value = session_cookie(client)
    assert TOKEN not in value and "csrf" not in value and "." not in value
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert len(raw) == 32 and b"auth" not in raw


def test_rotation_ends_sessions_and_a_replayed_cookie(tmp_path, ctl):
    from web.auth import ensure_token, rotate_token

    tf = tmp_path / "web-token"
    old, _ = ensure_token(tf)
    app = make_app(ctl, CBLB_TOKEN="", CBLB_TOKEN_FILE=tf)
    from test_web import login

    c = app.test_client()
    assert login(c, token=old).status_code == 303
    saved = session_cookie(c)
    rotate_token(tf)
    assert c.get("/").status_code == 401
    assert replay(app, saved).get("/").status_code == 401


def test_idle_timeout_ends_a_session(ctl):
    app = make_app(ctl, CBLB_IDLE_TIMEOUT=1.5)
    c = logged_in(app)
    for _ in range(3):                     # activity keeps it alive past the timeout
        time.sleep(0.6)
        assert c.get("/api/status").status_code == 200
    time.sleep(1.7)
    assert c.get("/api/status").status_code == 401


def test_idle_timeout_flag(tmp_path, monkeypatch):
    served = record_served(monkeypatch)
    assert cli.main(["web", "--idle-timeout", "2", "--token-file", str(tmp_path / "t"),
                     "--standin", "--bind", f":{free_port()}"]) == 0
    assert served[0].config["CBLB_IDLE_TIMEOUT"] == 120
    with pytest.raises(SystemExit) as e:
        cli.main(["web", "--idle-timeout", "0"])
    assert e.value.code == 2


def test_events_stream_closes_when_its_session_ends(tmp_path, ctl):
    from web.auth import ensure_token, rotate_token

    tf = tmp_path / "web-token"
    old, _ = ensure_token(tf)
    app = make_app(ctl, CBLB_TOKEN="", CBLB_TOKEN_FILE=tf, CBLB_SSE_MAX_ROUNDS=0,
                   CBLB_SSE_INTERVAL=0.0)
    from test_web import login

    c = app.test_client()
    assert login(c, token=old).status_code == 303
    r = c.get("/events", buffered=False)
    it = iter(r.response)
    first = [next(it) for _ in range(3)]
    assert any(b"event: devices" in (x if isinstance(x, bytes) else x.encode()) for x in first)
    rotate_token(tf)
    rest = []
    for chunk in it:
        rest.append(chunk if isinstance(chunk, bytes) else chunk.encode())
        assert len(rest) < 50, "the stream kept going after the token rotated"
    assert b"event: session-ended" in b"".join(rest)
    r.close()


def test_events_stream_closes_after_logout(app):
    from test_web import post

    app.config["CBLB_SSE_MAX_ROUNDS"] = 0
    c = logged_in(app)
    r = c.get("/events", buffered=False)
    it = iter(r.response)
    next(it)
    next(it)
    assert post(c, "/logout", {}).status_code == 303
    rest = []
    for chunk in it:
        rest.append(chunk if isinstance(chunk, bytes) else chunk.encode())
        assert len(rest) < 50, "the stream kept going after logout"
    assert b"event: session-ended" in b"".join(rest)


def test_cookie_flags_port_and_secure_under_tls(app):
    c = app.test_client()
    page = c.get("/login", headers={"Accept": "text/html"}, base_url="https://127.0.0.1:8470")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("cblb_session_8470=")
    for flag in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert flag in cookie
    plain = app.test_client().get("/login", headers={"Accept": "text/html"},
                                  base_url="http://127.0.0.1:8471")
    cookie = plain.headers["Set-Cookie"]
    assert cookie.startswith("cblb_session_8471=") and "Secure" not in cookie
    assert "Expires" not in cookie and "Max-Age" not in cookie   # gone with the browser


# ---- tokens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_token_file_readable_by_others_is_refused_not_tightened(tmp_path, mode, capsys):
    from web.auth import ensure_token

    tf = tmp_path / "web-token"
    ensure_token(tf)
    os.chmod(tf, mode)
    with pytest.raises(ValueError, match="others may have read it"):
        ensure_token(tf)
    assert stat.S_IMODE(os.stat(tf).st_mode) == mode          # not quietly fixed
    assert cli.main(["web", "--token-file", str(tf), "--standin"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err


def test_token_file_not_owned_by_root_is_refused(tmp_path):
    from web.auth import ensure_token

    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    tf = tmp_path / "web-token"
    ensure_token(tf)
    os.chown(tf, 65534, 65534)
    with pytest.raises(ValueError, match="not root"):
        ensure_token(tf)


def test_a_running_page_stops_trusting_a_token_file_made_readable(tmp_path, ctl):
    from test_web import login

    from web.auth import ensure_token

    tf = tmp_path / "web-token"
    tok, _ = ensure_token(tf)
    app = make_app(ctl, CBLB_TOKEN="", CBLB_TOKEN_FILE=tf)
    c = app.test_client()
    assert login(c, token=tok).status_code == 303
    os.chmod(tf, 0o644)
    os.utime(tf, ns=(1, 1))               # a change the server notices
    assert c.get("/").status_code == 401
    assert login(app.test_client(), token=tok).status_code == 401


METRICS = "metrics-only-token-0123456789abcdef"


def test_metrics_token_opens_metrics_and_nothing_else(ctl):
    app = make_app(ctl, CBLB_METRICS_TOKEN=METRICS, CBLB_LOGIN_BURST=100)
    c = app.test_client()
    m = {"Authorization": f"Bearer {METRICS}"}
    assert c.get("/metrics", headers=m).status_code == 200
    for url in ("/", "/api/status", "/events", "/devices", "/lifecycle/cost"):
        assert c.get(url, headers=m).status_code == 401, url
    r = c.post("/module/load", data={"total": "4"}, headers=m)
    assert r.status_code == 401 and ctl.total() == 4
    from test_web import login

    assert login(app.test_client(), token=METRICS).status_code == 401
    assert c.get("/metrics", headers=BEARER).status_code == 200   # the admin token too


def test_metrics_token_file_flag(tmp_path, monkeypatch, capsys):
    served = record_served(monkeypatch)
    mf = tmp_path / "metrics-token"
    assert cli.main(["web", "--token-file", str(tmp_path / "t"), "--metrics-token-file",
                     str(mf), "--standin", "--bind", f":{free_port()}"]) == 0
    mtok = mf.read_text().strip()
    assert stat.S_IMODE(os.stat(mf).st_mode) == 0o600 and mtok in capsys.readouterr().out
    app = served[0]
    c = app.test_client()
    assert c.get("/metrics", headers={"Authorization": f"Bearer {mtok}"}).status_code == 200
    assert c.get("/api/status", headers={"Authorization": f"Bearer {mtok}"}).status_code == 401
    assert cli.main(["web", "--token-file", str(tmp_path / "t"), "--metrics-token-file",
                     str(tmp_path / "t"), "--standin", "--bind", f":{free_port()}"]) == 1


# ---- accountability and limits ---------------------------------------------------------------
def test_failed_logins_are_slowed_down(ctl):
    from test_web import login

    app = make_app(ctl, CBLB_LOGIN_BURST=5, CBLB_LOGIN_INTERVAL=0.5)
    c = app.test_client()
    codes = [login(c, token=f"wrong-token-{i:04d}-0123456789").status_code for i in range(40)]
    assert codes[:5] == [401] * 5 and codes.count(401) <= 6 and 429 in codes
    r = login(c)                                   # even the right one is not looked at now
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    wrong = {"Authorization": "Bearer wrong-token-0123456789abcdef"}
    assert c.get("/api/status", headers=wrong).status_code == 429   # bearer guesses too
    time.sleep(0.6)
    assert login(c).status_code == 303


def test_logins_logouts_and_actions_are_logged(app, caplog):
    import logging

    from test_web import login, post

    caplog.set_level(logging.INFO, logger="cblb.web")
    c = app.test_client()
    login(c, token="wrong-token-0123456789abcdef")
    login(c)
    post(c, "/snapshots", {"name": "s", "origin": "/dev/vdb1"})
    post(c, "/logout", {})
    lines = [r.getMessage() for r in caplog.records if r.name == "cblb.web"]
    events = [ln.split()[0] for ln in lines]
    assert events == ["login-failed", "login", "action", "logout"], lines
    assert all("peer=127.0.0.1" in ln and "session=" in ln for ln in lines)
    act = lines[2]
    assert "path='/snapshots'" in act and "status=303" in act and "session=-" not in act
    assert lines[1].split()[1] == act.split()[1] == lines[3].split()[1]   # one session
    assert all(TOKEN not in ln for ln in lines)


def test_cblb_web_sends_the_audit_lines_to_syslog(tmp_path, monkeypatch):
    import logging

    sock_path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(sock_path)
        syslog.settimeout(5)
        monkeypatch.setattr(web_cmd, "SYSLOG", sock_path)
        served = record_served(monkeypatch)
        logger = logging.getLogger("cblb.web")
        before = list(logger.handlers)
        try:
            assert cli.main(["web", "--token-file", str(tmp_path / "t"), "--standin",
                             "--bind", f":{free_port()}"]) == 0
            from test_web import login

            app = served[0]
            tok = (tmp_path / "t").read_text().strip()
            login(app.test_client(), token=tok)
            got = syslog.recv(4096).decode()
        finally:
            for h in logger.handlers[:]:
                if h not in before:
                    logger.removeHandler(h)
                    h.close()
    assert got.startswith("<") and "cblb-web: login session=" in got and "peer=" in got
    assert tok not in got


# ---- catalog and mount folders -----------------------------------------------------------------
def test_var_tmp_is_no_default_catalog_root(ctl):
    app = make_app(ctl)
    assert "/var/tmp" not in app.config["CBLB_CATALOG_ROOTS"]
    assert not app.config["CBLB_DEFAULT_CATALOG"].startswith("/var/tmp")


def _start(client, catalog):
    from test_web import post

    return post(client, "/snapshots/s/start", {"catalog": str(catalog), "file_mib": "1",
                                               "max_files": "1"}, htmx=True)


@pytest.mark.parametrize("how", ["other-owner", "world-writable", "group-writable",
                                 "parent-other-owner", "parent-world-writable"])
def test_a_catalog_another_user_could_plant_is_refused(client, ctl, fake, catalog, how):
    ctl.create("s", "/dev/vdb1")
    parent = catalog / "p"
    parent.mkdir()
    target = parent / "shadow-vdb1"
    target.mkdir()
    victim = {"other-owner": target, "world-writable": target, "group-writable": target,
              "parent-other-owner": parent, "parent-world-writable": parent}[how]
    if "owner" in how:
        os.chown(victim, 65534, 65534)
    else:
        os.chmod(victim, 0o777 if "world" in how else 0o770)
    r = _start(client, target)
    assert r.status_code == 422
    assert "no other user can change" in text(r) and str(victim) in text(r)
    assert not any(c.startswith("start ") for c in fake.commands)


def test_a_catalog_through_a_symlink_is_refused(client, ctl, fake, catalog, tmp_path):
    ctl.create("s", "/dev/vdb1")
    (tmp_path / "shm").mkdir()
    os.symlink(tmp_path / "shm", catalog / "swapped")
    r = _start(client, catalog / "swapped")
    assert r.status_code == 422 and "is a symbolic link" in text(r)
    assert not any(c.startswith("start ") for c in fake.commands)


def test_a_trusted_catalog_is_used(client, ctl, fake, catalog):
    ctl.create("s", "/dev/vdb1")
    (catalog / "ok").mkdir(mode=0o700)
    r = _start(client, catalog / "ok")
    assert r.status_code == 200, text(r)
    assert ctl.snapshot("s").catalog == str(catalog / "ok")


def test_a_users_folder_under_a_mount_root_is_refused(client, ctl, fake, catalog, tmp_path):
    from test_web import post

    make_active(ctl, catalog, "m", "/dev/vdb1")
    stick = tmp_path / "mnt" / "user" / "STICK"
    stick.mkdir(parents=True)
    os.chown(stick, 65534, 65534)                      # /media/USER/STICK, the user's
    r = post(client, "/snapshots/m/mount", {"dir": str(stick / "snap")}, htmx=True)
    assert r.status_code == 422 and "not root" in text(r)
    os.chmod(stick.parent, 0o777)
    os.chown(stick, 0, 0)
    r = post(client, "/snapshots/m/mount", {"dir": str(stick.parent / "new")}, htmx=True)
    assert r.status_code == 422 and "writable by other users" in text(r)
    assert not any(p[0] == "mount" for p in fake.programs)


# ---- the page as a person sees it ------------------------------------------------------------
def test_cost_preview_trigger_is_valid_htmx(client, ctl):
    ctl.create("s", "/dev/vdb1")
    body = text(client.get("/"))
    assert 'hx-trigger="load, input from:(#snap-s form) delay:400ms"' in body
    assert "from:#snap-" not in body


def test_a_long_rejected_name_is_echoed_short(client, ctl):
    from test_web import post

    r = post(client, "/snapshots", {"name": "x" * 5000 + " y", "origin": "/dev/vdb1"},
             htmx=True)
    assert r.status_code == 422 and "(5002 characters)" in text(r)
    assert "x" * 41 not in text(r).replace('value="' + "x" * 5000, "")


def test_no_step_numbers_and_the_failed_wording(client, ctl, fake, catalog):
    make_active(ctl, catalog, "f", "/dev/vdb1")
    fake.copy("f", 10**12)                          # the store fills: failed, not mounted
    body = text(client.get("/"))
    assert "2. Create" not in body and "3. Start" not in body
    assert "Unmount and remove it" not in body and "Remove it with the button below" in body


def test_full_store_chart_does_not_say_not_growing(app, client, ctl, fake, catalog):
    make_active(ctl, catalog, "f", "/dev/vdb1")
    app.extensions["cblb_history"].tick()
    fake.copy("f", 10**12)
    app.extensions["cblb_history"].tick()
    body = text(client.get("/charts/growth", headers=HX))
    assert "not growing" not in body and "the store is full" in body


def test_io_chart_does_not_ask_for_a_snapshot_when_there_is_one(client, ctl, catalog):
    make_active(ctl, catalog, "f", "/dev/vdb1")
    body = text(client.get("/charts/io", headers=HX))
    assert "a snapshot must exist" not in body


def test_narrow_screen_css(client):
    css = client.get("/static/cblb.css").get_data(as_text=True)
    assert "minmax(min(560px, 100%), 1fr)" in css and ".scroll { overflow-x: auto; }" in css
    assert "label.check { flex-direction: row" in css


# ---- wording: refusals on the page name the page's steps, not CLI commands -----------------------
CLI_HINT = re.compile(r"\bcblb\s+(?:load|unload|remove|umount|mount|list|status|release|web|"
                      r"start|create|snapshot|backup)\b|(?<![\w-])--[a-z]")


def alerts(resp) -> list[str]:
    return [re.sub(r"<[^>]+>", "", m) for m in
            re.findall(r'<p class="error" role="alert"[^>]*>(.*?)</p>', text(resp), re.S)]


def test_page_refusals_suggest_no_cli_commands(app, client, ctl, fake, catalog, tmp_path):
    from test_web import post

    make_active(ctl, catalog)
    ctl.mount("shadow", str(tmp_path / "mnt" / "s"))
    ctl.create("other", "/dev/vdb2")
    cases = {
        "remove while mounted": ("/snapshots/shadow/remove", {"confirm": "shadow"},
                                 "unmount it first"),
        "load again, another total": ("/module/load", {"total": "3"}, "unload it first"),
        "unload with snapshots": ("/module/unload", {"confirm": "unload"}, "remove them first"),
        "a taken name": ("/snapshots", {"name": "shadow", "origin": "/dev/loop0"}, "remove it"),
        "no such snapshot": ("/snapshots/nosuch/start", {"catalog": str(catalog),
                                                         "file_mib": "1", "max_files": "1"},
                             "devices table"),
        "umount what is not mounted": ("/snapshots/other/umount", {}, "not mounted"),
        "a catalog elsewhere": ("/snapshots/other/start", {"catalog": "/etc", "file_mib": "1",
                                                           "max_files": "1"}, "administrator"),
        "a set named as a snapshot": ("/sets", {"member": "other", "set_name": "shadow",
                                                "catalog": str(catalog), "file_mib": "1",
                                                "max_files": "1"}, "another name"),
    }
    for what, (url, data, said) in cases.items():
        for htmx_ in (True, False):
            r = post(client, url, data, htmx=htmx_)
            shown = alerts(r)
            assert r.status_code == 422 and shown, what
            assert any(said in a for a in shown), (what, shown)
            assert not any(CLI_HINT.search(a) for a in shown), (what, shown)
    (fake.module_sysfs / "parameters" / "total").write_text("2\n")   # all used: shadow, other
    r = post(client, "/snapshots", {"name": "third", "origin": "/dev/loop0"}, htmx=True)
    shown = alerts(r)
    assert r.status_code == 422 and any("slots are used" in a for a in shown), shown
    assert not any(CLI_HINT.search(a) for a in shown), shown
    # the module not loaded
    ctl.umount("shadow")
    for s in ctl.snapshots():
        ctl.remove(s.name)
    ctl.unload()
    r = post(client, "/snapshots", {"name": "late", "origin": "/dev/vdb1"}, htmx=True)
    shown = alerts(r)
    assert r.status_code == 422 and any("load it first" in a for a in shown), shown
    assert not any(CLI_HINT.search(a) for a in shown), shown


def test_the_cli_keeps_its_own_wording(ctl, catalog, capsys):
    make_active(ctl, catalog)
    with pytest.raises(CblbError) as e:
        ctl.remove("nosuch")
    assert "'cblb list'" in str(e.value) and "devices table" in e.value.for_page()


def test_a_wrong_token_on_the_login_page_names_no_command(app):
    from test_web import login

    r = login(app.test_client(), token="wrong-token-0123456789")
    assert r.status_code == 401 and "not the access token" in text(r)
    assert not CLI_HINT.search(text(r).split("not the access token")[1].split("</p>")[0])
