"""Host tests of the web page (web/): every route, refused input, CSRF, the access token.

The page drives the real cblb.control.Controller; only the machine under it is fake
(cblb.fake.FakeSystem: the module's sysfs files in a temporary folder, a fake kernel behind
its cmd file, fake mount/umount). So every message asserted here is the control library's
own, and ``fake.commands`` / ``fake.programs`` show what reached the "kernel".
"""

from __future__ import annotations

import errno
import html
import os
import re
import stat

import pytest

from cblb.control import Controller
from cblb.errors import CblbError
from cblb.fake import FakeSystem
from web import command as web_cmd
from web import create_app
from web.auth import ensure_token, rotate_token, safe_next
from web.history import GrowthPoint, project
from web.sampler import DiskstatsSampler
from web.svg import Chart, Series, render

TOKEN = "t0k3n-for-tests-only-0123456789abcdef"


@pytest.fixture
def web_ctl(ctl):     # conftest's fake has no growth: states change only on request
    return ctl


def fake_ctl(tmp_path, **kw) -> Controller:
    return Controller(system=FakeSystem(tmp_path / "fake2", **kw))


def make_app(ctl, **config):
    return create_app({"TESTING": True, "CBLB_CONTROLLER": ctl, "CBLB_TOKEN": TOKEN, **config})


def login(client, token=TOKEN, nxt="/"):
    """Log in through the form, as a browser does; returns the login POST's response."""
    page = client.get("/login", headers={"Accept": "text/html"})
    tok = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return client.post("/login", data={"token": token, "csrf_token": tok, "next": nxt})


def logged_in(app):
    c = app.test_client()
    assert login(c).status_code == 303
    return c


@pytest.fixture
def web_mnt(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    return root


@pytest.fixture
def web_catalog(tmp_path):
    d = tmp_path / "catalog"
    d.mkdir()
    return d


@pytest.fixture
def web_app(web_ctl, fake, web_mnt, web_catalog):
    return make_app(web_ctl, CBLB_SAMPLER=fake.write_samples,
                    CBLB_MOUNT_ROOTS=(str(web_mnt),), CBLB_CATALOG_ROOTS=(str(web_catalog),),
                    CBLB_DEFAULT_CATALOG=str(web_catalog), CBLB_SSE_INTERVAL=0.0)


@pytest.fixture
def web_client(web_app):
    return logged_in(web_app)


@pytest.fixture
def web_runner(web_app):
    return web_app.test_cli_runner()


def csrf(client) -> str:
    page = client.get("/")
    m = re.search(rb'name="csrf_token" value="([^"]+)"', page.data)
    assert m, "the page carries the CSRF token"
    return m.group(1).decode()


def post(client, url, data=None, htmx=False, token=True):
    data = dict(data or {})
    if token:
        data["csrf_token"] = csrf(client)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(url, data=data, headers=headers)


HX = {"HX-Request": "true"}


def text(resp) -> str:
    return html.unescape(resp.get_data(as_text=True))


def make_active(ctl, catalog, name="shadow", origin="/dev/vdb1"):
    ctl.create(name, origin)
    ctl.start(name, str(catalog), 2048, 4)


# ---- the page ------------------------------------------------------------------------------
def test_page_without_module_says_so_and_offers_load(tmp_path):
    app = make_app(fake_ctl(tmp_path, loaded=False))
    r = logged_in(app).get("/")
    assert r.status_code == 200
    body = text(r)
    assert "The cblb kernel module is not loaded." in body
    assert 'action="/module/load"' in body and 'name="total"' in body
    assert 'id="create-btn"' not in body      # nothing to create before the module is in


def test_page_shows_devices_table(web_client, web_ctl, web_catalog):
    make_active(web_ctl, web_catalog)
    web_ctl.create("second", "/dev/vdb2")
    body = text(web_client.get("/"))
    for head in ("Name", "Origin", "State", "Catalog", "Temp files used / max", "COW bytes",
                 "Error"):
        assert f">{head}</th>" in body
    assert 'id="dev-shadow"' in body and 'id="dev-second"' in body
    assert "/dev/vdb1" in body and str(web_catalog) in body
    assert 'sse-connect="/events"' in body and 'sse-swap="devices"' in body
    assert "/static/htmx.min.js" in body and "https://" not in body  # no CDN


def test_page_survives_a_controller_that_cannot_read(fake):
    class Broken(Controller):
        def status(self):
            raise CblbError("permission denied reading /sys/kernel/cblb; run as root")

    r = logged_in(make_app(Broken(system=fake))).get("/")
    assert r.status_code == 200
    assert "permission denied reading /sys/kernel/cblb" in text(r)


def test_partials_need_htmx_else_redirect(web_client):
    for url in ("/devices", "/lifecycle", "/charts/io", "/charts/growth"):
        r = web_client.get(url)
        assert r.status_code == 302 and r.headers["Location"] == "/", url
        r = web_client.get(url, headers=HX)
        assert r.status_code == 200, url
        assert "<html" not in text(r), url


def test_devices_partial_reflects_state(web_client, web_ctl, web_catalog):
    assert "No snapshot devices yet" in text(web_client.get("/devices", headers=HX))
    make_active(web_ctl, web_catalog)
    body = text(web_client.get("/devices", headers=HX))
    assert 'class="badge active"' in body and "1 / 4" in body


def test_static_files_are_served_from_the_package(web_client):
    for name in ("htmx.min.js", "htmx-ext-sse.min.js", "cblb.css", "cblb.js"):
        r = web_client.get(f"/static/{name}")
        assert r.status_code == 200, name
        r.close()
    here = os.path.join(os.path.dirname(__file__), "..", "..", "web", "static")
    assert os.path.exists(os.path.join(here, "htmx.LICENSE"))
    assert os.path.exists(os.path.join(here, "htmx-ext-sse.LICENSE"))


def test_security_headers(web_client):
    r = web_client.get("/")
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]


# ---- load / unload ---------------------------------------------------------------------------
def test_load_then_unload_with_confirmation(tmp_path):
    ctl = fake_ctl(tmp_path, loaded=False)
    c = logged_in(make_app(ctl))
    r = post(c, "/module/load", {"total": "6"})
    assert r.status_code == 303 and ctl.loaded() and ctl.total() == 6
    assert "cblb_module loaded with total=6" in text(c.get("/"))
    r = c.get("/module/unload", headers=HX)
    assert r.status_code == 200 and 'id="unload-yes"' in text(r)
    r = post(c, "/module/unload", {}, htmx=True)
    assert r.status_code == 422 and "type 'unload' to confirm" in text(r) and ctl.loaded()
    r = post(c, "/module/unload", {"confirm": "unload"}, htmx=True)
    assert r.status_code == 200 and not ctl.loaded()
    assert "The cblb kernel module is not loaded." in text(r)


@pytest.mark.parametrize("value,message", [
    ("abc", "total must be a whole number from 1 to 255"),
    ("", "total must be a whole number"),
    ("0", "total 0 is out of range: choose 1..255"),
    ("256", "total 256 is out of range"),
    ("4; reboot", "total must be a whole number"),
])
def test_load_refused_input(tmp_path, value, message):
    ctl = fake_ctl(tmp_path, loaded=False)
    c = logged_in(make_app(ctl))
    r = post(c, "/module/load", {"total": value}, htmx=True)
    assert r.status_code == 422
    assert message in text(r)
    assert 'data-for="load"' in text(r)
    assert not ctl.loaded()


def test_load_refusal_from_library_shown_inline(web_client, web_ctl):
    r = post(web_client, "/module/load", {"total": "8"})   # loaded with 4 already
    assert r.status_code == 422
    assert "already loaded with total=4" in text(r) and "<html" in text(r)


def test_unload_refused_while_snapshots_exist(web_client, web_ctl):
    web_ctl.create("shadow", "/dev/vdb1")
    r = post(web_client, "/module/unload", {"confirm": "unload"}, htmx=True)
    assert r.status_code == 422 and "snapshots still exist (shadow)" in text(r)


# ---- create ------------------------------------------------------------------------------------
def test_create_htmx_returns_panel_and_devices_out_of_band(web_client, web_ctl):
    r = post(web_client, "/snapshots", {"name": "shadow", "origin": "/dev/vdb1"}, htmx=True)
    assert r.status_code == 200
    body = text(r)
    assert "shadow: created for /dev/vdb1" in body
    assert 'id="snap-shadow"' in body and 'id="start-shadow"' in body   # created -> start form
    assert 'id="devices" hx-swap-oob="innerHTML"' in body
    assert web_ctl.snapshot("shadow").state.value == "created"


def test_create_plain_form_redirects(web_client, web_ctl):
    r = post(web_client, "/snapshots", {"name": "shadow", "origin": "/dev/vdb1"})
    assert r.status_code == 303 and r.headers["Location"] == "/"


@pytest.mark.parametrize("name,origin,message", [
    ("bad name", "/dev/vdb1", "invalid snapshot name 'bad name'"),
    ("x;rm -rf /", "/dev/vdb1", "invalid snapshot name"),
    ("$(reboot)", "/dev/vdb1", "invalid snapshot name"),
    ("../etc", "/dev/vdb1", "invalid snapshot name"),
    ("", "/dev/vdb1", "invalid snapshot name ''"),
    ("a" * 40, "/dev/vdb1", "invalid snapshot name"),
    ("shadow", "/dev/nope", "/dev/nope: no such device"),
    ("shadow", "/etc/passwd", "/etc/passwd is not a block device"),
    ("shadow", "", "origin is empty"),
])
def test_create_refused_input(web_client, web_ctl, fake, name, origin, message):
    r = post(web_client, "/snapshots", {"name": name, "origin": origin}, htmx=True)
    assert r.status_code == 422
    assert message in text(r)
    assert 'data-for="create"' in text(r)
    assert web_ctl.snapshots() == [] and fake.commands == []   # refused before the kernel
    # and the form keeps what was typed
    if origin:
        assert f'value="{origin}"' in text(r)


def test_create_refusals_from_state(web_client, web_ctl):
    web_ctl.create("shadow", "/dev/vdb1")
    r = post(web_client, "/snapshots", {"name": "shadow", "origin": "/dev/vdb2"}, htmx=True)
    assert r.status_code == 422 and "a snapshot named shadow already exists" in text(r)
    r = post(web_client, "/snapshots", {"name": "other", "origin": "/dev/vdb1"}, htmx=True)
    assert r.status_code == 422 and "/dev/vdb1 already has a snapshot (shadow)" in text(r)


def test_create_passes_the_resolved_device_node(tmp_path):
    fake = FakeSystem(tmp_path / "f", loaded=True, aliases={"/dev/disk/by-label/data": "/dev/vdb1"})
    c = logged_in(make_app(Controller(system=fake)))
    r = post(c, "/snapshots", {"name": "s", "origin": "/dev/disk/by-label/data"}, htmx=True)
    assert r.status_code == 200, text(r)
    assert fake.commands == ["create s /dev/vdb1 begin end"]


def test_create_refused_when_slots_are_full(tmp_path):
    ctl = fake_ctl(tmp_path, loaded=True, total=1)
    c = logged_in(make_app(ctl))
    assert post(c, "/snapshots", {"name": "a", "origin": "/dev/vdb1"}, htmx=True).status_code == 200
    r = post(c, "/snapshots", {"name": "b", "origin": "/dev/vdb2"}, htmx=True)
    assert r.status_code == 422 and "all 1 snapshot slots are used" in text(r)


def test_create_when_not_loaded_is_refused_with_library_message(tmp_path):
    app = make_app(fake_ctl(tmp_path, loaded=False))
    r = post(logged_in(app), "/snapshots", {"name": "s", "origin": "/dev/vdb1"}, htmx=True)
    assert r.status_code == 422
    assert "the cblb module is not loaded" in text(r)


# ---- start ---------------------------------------------------------------------------------------
def test_start_converts_mib_to_blocks(web_client, web_ctl, fake, web_catalog):
    web_ctl.create("shadow", "/dev/vdb1")
    r = post(web_client, "/snapshots/shadow/start",
             {"catalog": str(web_catalog), "file_mib": "64", "max_files": "16"}, htmx=True)
    assert r.status_code == 200, text(r)
    assert f"start shadow {os.path.realpath(web_catalog)} {64 * 2048} 16" in fake.commands
    s = web_ctl.snapshot("shadow")
    assert s.state.value == "active" and s.max_files == 16
    body = text(r)
    assert 'id="mount-shadow"' in body and 'id="start-shadow"' not in body


@pytest.mark.parametrize("data,message", [
    ({"file_mib": "x"}, "file size (MiB) must be a whole number"),
    ({"file_mib": "0"}, "file size (MiB) 0 is out of range"),
    ({"max_files": "5000"}, "max files 5000 is out of range: choose 1..4096"),
    ({"max_files": "-1"}, "max files -1 is out of range"),
    ({"catalog": ""}, "catalog is empty"),
    ({"catalog": "{cat}/nope"}, "catalog {cat}/nope does not exist; create it with mkdir"),
    ({"catalog": "{cat}/afile"}, "catalog {cat}/afile is not a folder"),
    ({"catalog": "{cat}/with space"}, "contains blanks"),
    ({"catalog": "/etc"}, "catalog /etc is not in {cat}: the page keeps temp files only there"),
    ({"catalog": "{cat}/../elsewhere"}, "must be an absolute path without '..'"),
])
def test_start_refused_input(web_client, web_ctl, fake, web_catalog, data, message):
    web_ctl.create("shadow", "/dev/vdb1")
    (web_catalog / "afile").write_text("x")
    (web_catalog / "with space").mkdir()
    cat = os.path.realpath(web_catalog)
    form = {"catalog": str(web_catalog), "file_mib": "64", "max_files": "16"}
    form.update({k: v.replace("{cat}", cat) for k, v in data.items()})
    message = message.replace("{cat}", cat)
    r = post(web_client, "/snapshots/shadow/start", form, htmx=True)
    assert r.status_code == 422
    assert message in text(r)
    assert 'data-for="start:shadow"' in text(r)
    assert web_ctl.snapshot("shadow").state.value == "created"
    assert not any(c.startswith("start") for c in fake.commands)


def test_catalog_outside_the_allowed_folders_is_refused_alike_whether_it_exists(
        web_client, web_ctl, tmp_path):
    """The refusal does not tell a user probing the page whether a path exists."""
    web_ctl.create("shadow", "/dev/vdb1")
    (tmp_path / "outside").mkdir()
    bodies = []
    for cat in (tmp_path / "outside", tmp_path / "missing"):
        r = post(web_client, "/snapshots/shadow/start",
                 {"catalog": str(cat), "file_mib": "1", "max_files": "1"}, htmx=True)
        assert r.status_code == 422 and "is not in" in text(r)
        bodies.append(text(r).replace(str(cat), "CAT"))
        preview = web_client.get("/lifecycle/cost", query_string={
            "catalog": str(cat), "file_mib": "1", "max_files": "1"}, headers=HX)
        bodies.append(text(preview).replace(str(cat), "CAT"))
        assert "free" not in text(preview) and "The page keeps temp files only in" in text(preview)
    assert bodies[0] == bodies[2] and bodies[1] == bodies[3]


def test_start_twice_and_unknown(web_client, web_ctl, web_catalog):
    make_active(web_ctl, web_catalog)
    form = {"catalog": str(web_catalog), "file_mib": "64", "max_files": "16"}
    r = post(web_client, "/snapshots/shadow/start", form, htmx=True)
    assert r.status_code == 422 and "shadow is already active" in text(r)
    r = post(web_client, "/snapshots/ghost/start", form, htmx=True)
    assert r.status_code == 422 and "no snapshot named ghost" in text(r)
    r = post(web_client, "/snapshots/bad%20name/start", form, htmx=True)
    assert r.status_code == 422 and "invalid snapshot name" in text(r)


def test_start_cost_preview(web_client, web_catalog):
    r = web_client.get(f"/lifecycle/cost?catalog={web_catalog}&file_mib=64&max_files=8",
                       headers=HX)
    body = text(r)
    assert "512.0 MiB" in body and "8 files × 64.0 MiB" in body and "free" in body
    assert "must be a whole number" in text(web_client.get("/lifecycle/cost?file_mib=x"))
    assert "is not an existing folder" in text(
        web_client.get(f"/lifecycle/cost?catalog={web_catalog}/no&file_mib=1&max_files=1"))


# ---- start several as one set ----------------------------------------------------------------------
def set_form(catalog, members=("a", "b"), **kw):
    return {"member": list(members), "set_name": "db", "catalog": str(catalog),
            "file_mib": "8", "max_files": "4", **kw}


def test_set_form_offered_for_two_created(web_client, web_ctl, web_catalog):
    web_ctl.create("a", "/dev/vdb1")
    assert 'id="set-step"' not in text(web_client.get("/"))    # one: its own start form does
    web_ctl.create("b", "/dev/vdb2")
    make_active(web_ctl, web_catalog, "c", "/dev/loop0")
    body = text(web_client.get("/"))
    assert 'id="set-step"' in body and 'action="/sets"' in body
    assert 'id="member-a"' in body and 'id="member-b"' in body
    assert 'id="member-c"' not in body                          # active: not startable
    form = body[body.index('id="set-step"'):body.index('id="snap-a"')]
    assert 'name="csrf_token"' in form


def test_start_set_from_the_page_and_grouped_listing(web_client, web_ctl, fake, web_catalog):
    make_active(web_ctl, web_catalog, "alone", "/dev/loop0")
    web_ctl.create("a", "/dev/vdb1")
    web_ctl.create("b", "/dev/vdb2")
    r = post(web_client, "/sets", set_form(web_catalog), htmx=True)
    assert r.status_code == 200, text(r)
    cat = os.path.realpath(web_catalog)
    assert fake.commands[-1] == f"startset db a {cat}/a 16384 4 b {cat}/b 16384 4"
    snaps = [web_ctl.snapshot(n) for n in ("a", "b")]
    assert [(s.state.value, s.set_name) for s in snaps] == [("active", "db")] * 2
    assert snaps[0].start_time_ns == snaps[1].start_time_ns
    assert (web_catalog / "a").is_dir() and (web_catalog / "b").is_dir()
    body = text(r)
    assert "set db: a, b active at one point in time" in body
    assert 'id="set-step"' not in body                 # nothing left to start together
    # the devices table: the set's members under one header, the lone snapshot outside it
    table = text(web_client.get("/devices", headers=HX))
    group = table[table.index('id="set-group-db"'):]
    group = group[:group.index("</tbody>")]
    assert 'class="set-head"' in group and "set <code>db</code>:" in group
    assert "2 snapshots at one point in time" in group
    assert 'id="dev-a"' in group and 'id="dev-b"' in group and 'id="dev-alone"' not in group
    assert table.index('id="dev-alone"') < table.index('id="set-group-db"')
    panel = text(web_client.get("/lifecycle", headers=HX))
    assert panel.count(", set <code>db</code>") == 2                   # each member says so


@pytest.mark.parametrize("data,message", [
    ({"member": []}, "no snapshot is ticked"),
    ({"member": ["a", "bad name"]}, "invalid snapshot name 'bad name'"),
    ({"member": ["a", "ghost"]}, "no snapshot named ghost"),
    ({"set_name": "bad/set"}, "invalid set name 'bad/set'"),
    ({"set_name": "alone"}, "a snapshot is named alone"),
    ({"member": ["a", "alone"]}, "alone is already active"),
    ({"catalog": "/etc"}, "catalog /etc is not in"),
    ({"catalog": "{cat}/nope"}, "catalog root {cat}/nope is not an existing folder"),
    ({"file_mib": "0"}, "file size (MiB) 0 is out of range"),
])
def test_start_set_refused_input(web_client, web_ctl, fake, web_catalog, data, message):
    make_active(web_ctl, web_catalog, "alone", "/dev/loop0")
    web_ctl.create("a", "/dev/vdb1")
    web_ctl.create("b", "/dev/vdb2")
    cat = os.path.realpath(web_catalog)
    form = set_form(web_catalog)
    form.update({k: v.replace("{cat}", cat) if isinstance(v, str) else v
                 for k, v in data.items()})
    before = sorted(os.listdir(web_catalog))
    r = post(web_client, "/sets", form, htmx=True)
    assert r.status_code == 422
    assert message.replace("{cat}", cat) in text(r)
    assert 'data-for="set"' in text(r)
    assert not any(c.startswith("startset") for c in fake.commands)
    assert [web_ctl.snapshot(n).state.value for n in ("a", "b")] == ["created"] * 2
    assert sorted(os.listdir(web_catalog)) == before          # no folder made for a refusal


def test_start_set_refused_by_the_module_starts_none(web_client, web_ctl, fake, web_catalog,
                                                     monkeypatch):
    web_ctl.create("a", "/dev/vdb1")
    web_ctl.create("b", "/dev/vdb2")

    def prepare(catalog):
        if catalog.endswith("/b"):
            raise OSError(errno.EXDEV, catalog)

    monkeypatch.setattr(fake.module, "_prepare_member", prepare)
    r = post(web_client, "/sets", set_form(web_catalog), htmx=True)
    assert r.status_code == 422
    assert "set db not started: member b:" in text(r) and 'data-for="set"' in text(r)
    assert [web_ctl.snapshot(n).state.value for n in ("a", "b")] == ["created"] * 2
    assert os.listdir(web_catalog) == []                     # the folders it made are gone
    assert re.search(r'id="member-a"\s+checked', text(r))        # the ticks are kept


def test_start_set_catalog_link_out_of_the_roots_is_refused(web_client, web_ctl, fake,
                                                           web_catalog, tmp_path):
    web_ctl.create("a", "/dev/vdb1")
    web_ctl.create("b", "/dev/vdb2")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", web_catalog / "b")
    r = post(web_client, "/sets", set_form(web_catalog), htmx=True)
    assert r.status_code == 422 and f"{web_catalog}/b is a symbolic link" in text(r)
    assert os.listdir(tmp_path / "outside") == []
    assert not any(c.startswith("startset") for c in fake.commands)


# ---- mount / umount ------------------------------------------------------------------------------
def test_mount_and_umount(web_client, web_ctl, fake, web_catalog, web_mnt):
    make_active(web_ctl, web_catalog)
    target = web_mnt / "cblb" / "shadow"
    r = post(web_client, "/snapshots/shadow/mount", {"dir": str(target)}, htmx=True)
    assert r.status_code == 200, text(r)
    assert web_ctl.snapshot("shadow").mountpoint == str(target)
    assert fake.mount_table[0].options.split(",")[:4] == ["ro", "nosuid", "nodev", "noexec"]
    assert 'id="umount-shadow"' in text(r) and 'id="remove-shadow"' not in text(r)
    r = post(web_client, "/snapshots/shadow/umount", {}, htmx=True)
    assert r.status_code == 200 and web_ctl.snapshot("shadow").mountpoint == ""
    r = post(web_client, "/snapshots/shadow/umount", {}, htmx=True)
    assert r.status_code == 422 and "shadow is not mounted" in text(r)


def test_mount_exec_only_when_asked(web_client, web_ctl, fake, web_catalog, web_mnt):
    make_active(web_ctl, web_catalog)
    r = post(web_client, "/snapshots/shadow/mount", {"dir": f"{web_mnt}/x", "exec": "on"},
             htmx=True)
    assert r.status_code == 200, text(r)
    opts = fake.mount_table[0].options.split(",")
    assert {"ro", "nosuid", "nodev"} <= set(opts) and "noexec" not in opts


def test_mount_follows_no_link(web_client, web_ctl, fake, web_catalog, web_mnt):
    """A link inside the mount root, even to a folder inside it, is refused: it could be
    swapped between the check and the mount."""
    make_active(web_ctl, web_catalog)
    (web_mnt / "real").mkdir()
    os.symlink(web_mnt / "real", web_mnt / "link")
    r = post(web_client, "/snapshots/shadow/mount", {"dir": f"{web_mnt}/link/s"}, htmx=True)
    assert r.status_code == 422 and "is a symbolic link" in text(r)
    assert not any(p[0] == "mount" for p in fake.programs)


def test_mount_refused_input(web_client, web_ctl, web_catalog, web_mnt):
    make_active(web_ctl, web_catalog)
    (web_mnt / "full").mkdir()
    (web_mnt / "full" / "file").write_text("x")
    (web_mnt / "afile").write_text("x")
    os.symlink("/etc", web_mnt / "link")
    cases = [
        ("/etc", "is not under"),
        ("relative/dir", "must be an absolute path"),
        (f"{web_mnt}/../escape", "without '..'"),
        (str(web_mnt), "is not under"),
        (f"{web_mnt}/full", "is not empty"),
        (f"{web_mnt}/afile", "exists and is not a folder"),
        (f"{web_mnt}/link/x", "is a symbolic link"),
        ("", "mount folder is empty"),
    ]
    for target, message in cases:
        r = post(web_client, "/snapshots/shadow/mount", {"dir": target}, htmx=True)
        assert r.status_code == 422, target
        assert message in text(r), (target, text(r))
    assert not any(p[0] == "mount" for p in web_ctl.system.programs)


def test_mount_refused_by_library_when_not_active(web_client, web_ctl, web_mnt):
    web_ctl.create("shadow", "/dev/vdb1")
    r = post(web_client, "/snapshots/shadow/mount", {"dir": f"{web_mnt}/s"}, htmx=True)
    assert r.status_code == 422
    assert "shadow is created; only an active snapshot can be mounted" in text(r)


# ---- remove --------------------------------------------------------------------------------------
def test_remove_needs_confirmation(web_client, web_ctl, web_catalog):
    make_active(web_ctl, web_catalog)
    r = web_client.get("/snapshots/shadow/remove", headers=HX)
    assert r.status_code == 200
    assert 'id="remove-yes-shadow"' in text(r) and "temp files" in text(r)
    assert web_ctl.snapshot("shadow")  # a GET changes nothing
    r = post(web_client, "/snapshots/shadow/remove", {}, htmx=True)
    assert r.status_code == 422 and "type the name shadow to confirm" in text(r)
    r = post(web_client, "/snapshots/shadow/remove", {"confirm": "other"}, htmx=True)
    assert r.status_code == 422
    assert web_ctl.names() == ["shadow"]
    r = post(web_client, "/snapshots/shadow/remove", {"confirm": "shadow"}, htmx=True)
    assert r.status_code == 200 and web_ctl.names() == []
    assert "shadow: removed" in text(r)


def test_remove_refused_while_mounted(web_client, web_ctl, web_catalog, web_mnt):
    make_active(web_ctl, web_catalog)
    web_ctl.mount("shadow", f"{web_mnt}/s")
    r = post(web_client, "/snapshots/shadow/remove", {"confirm": "shadow"}, htmx=True)
    assert r.status_code == 422 and "unmount it first" in text(r)
    assert web_ctl.names() == ["shadow"]


def test_remove_unknown(web_client):
    r = web_client.get("/snapshots/ghost/remove", headers=HX)
    assert r.status_code == 422 and "no snapshot named ghost" in text(r)
    r = post(web_client, "/snapshots/ghost/remove", {"confirm": "ghost"})
    assert r.status_code == 422 and "no snapshot named ghost" in text(r)


def test_failed_snapshot_widget(web_client, web_ctl, fake, web_catalog):
    web_ctl.create("shadow", "/dev/vdb1")
    web_ctl.start("shadow", str(web_catalog), 8, 1)       # a 4 KiB store
    fake.copy("shadow", 8192)                             # origin writes fill it
    s = web_ctl.snapshot("shadow")
    assert s.state.value == "failed"
    body = text(web_client.get("/lifecycle", headers=HX))
    assert "Failed: temp-file store full" in body and 'id="remove-shadow"' in body
    assert 'id="mount-shadow"' not in body


# ---- methods, CSRF, Host, Origin ---------------------------------------------------------------
POST_ROUTES = ["/module/load", "/module/unload", "/snapshots", "/snapshots/s/start", "/sets",
               "/snapshots/s/mount", "/snapshots/s/umount", "/snapshots/s/remove", "/logout"]


@pytest.mark.parametrize("url", POST_ROUTES)
def test_post_without_csrf_is_refused(web_client, fake, url):
    csrf(web_client)  # the session has a token; the request does not carry it
    r = web_client.post(url, data={"total": "4", "name": "s", "origin": "/dev/vdb1",
                                   "confirm": "unload"})
    assert r.status_code == 400
    assert "CSRF token missing" in text(r)
    r = web_client.post(url, data={"csrf_token": "forged"})
    assert r.status_code == 403
    assert fake.commands == [] and fake.programs == []


def test_csrf_header_is_accepted(web_client, web_ctl):
    tok = csrf(web_client)
    r = web_client.post("/snapshots", data={"name": "s", "origin": "/dev/vdb1"},
                        headers={"X-CSRF-Token": tok, "HX-Request": "true"})
    assert r.status_code == 200 and web_ctl.names() == ["s"]


@pytest.mark.parametrize("url", ["/module/load", "/snapshots", "/snapshots/s/start", "/sets",
                                 "/snapshots/s/mount", "/snapshots/s/umount"])
def test_state_changes_are_post_only(web_client, fake, url):
    r = web_client.get(url + "?total=4&name=s&origin=/dev/vdb1")
    assert r.status_code == 405
    assert fake.commands == [] and fake.programs == []


def test_unload_get_only_asks(web_client, web_ctl, fake):
    r = web_client.get("/module/unload?confirm=unload", headers=HX)
    assert r.status_code == 200 and 'id="unload-yes"' in text(r)
    assert web_ctl.loaded() and fake.programs == []


def test_foreign_host_refused_on_loopback(web_client):
    r = web_client.get("/", headers={"Host": "evil.example:8470"})
    assert r.status_code == 400 and "unexpected Host" in text(r)
    assert web_client.get("/", headers={"Host": "localhost:8470"}).status_code == 200


def test_cross_origin_post_refused(web_client, web_ctl):
    tok = csrf(web_client)
    r = web_client.post("/snapshots", data={"name": "s", "origin": "/dev/vdb1",
                                            "csrf_token": tok},
                        headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and web_ctl.names() == []


# ---- access token ----------------------------------------------------------------------------
ALL_GET_ROUTES = ["/", "/devices", "/lifecycle", "/lifecycle/cost", "/charts/io",
                  "/charts/growth", "/api/status", "/metrics", "/events",
                  "/static/htmx.min.js", "/module/unload", "/snapshots/s/remove"]


@pytest.mark.parametrize("url", ALL_GET_ROUTES)
def test_missing_token_gets_401_on_loopback_too(web_app, url):
    c = web_app.test_client()
    r = c.get(url, headers={"Host": "127.0.0.1:8470"})
    assert r.status_code == 401
    r = c.get(url, headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401


def test_missing_token_on_post_gets_401(web_app, fake):
    c = web_app.test_client()
    r = c.post("/module/load", data={"total": "4"})
    assert r.status_code == 401
    r = c.post("/snapshots", data={"name": "s", "origin": "/dev/vdb1"}, headers=HX)
    assert r.status_code == 401 and fake.commands == []


def test_browser_without_token_gets_login_form(web_app):
    r = web_app.test_client().get("/", headers={"Accept": "text/html"})
    assert r.status_code == 401
    assert 'name="token"' in text(r) and "access token" in text(r)


def test_login_sets_a_session_flag_not_the_token(web_app, web_ctl):
    c = web_app.test_client()
    page = c.get("/login", headers={"Accept": "text/html"})
    tok = re.search(r'name="csrf_token" value="([^"]+)"', text(page)).group(1)
    r = c.post("/login", data={"token": "nope", "csrf_token": tok, "next": "/"})
    assert r.status_code == 401 and "That is not the access token" in text(r)
    r = c.post("/login", data={"token": TOKEN, "next": "/"})
    assert r.status_code == 400      # login is a POST too: CSRF token required
    r = c.post("/login", data={"token": TOKEN, "csrf_token": tok, "next": "/devices"})
    assert r.status_code == 303 and r.headers["Location"] == "/devices"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("cblb_session_80=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and TOKEN not in cookie
    assert "cblb_token" not in cookie
    r = c.get("/")
    assert r.status_code == 200 and "log out" in text(r)
    assert post(c, "/snapshots", {"name": "s", "origin": "/dev/vdb1"}).status_code == 303
    assert web_ctl.names() == ["s"]
    r = post(c, "/logout", {})
    assert r.status_code == 303
    assert c.get("/").status_code == 401


@pytest.mark.parametrize("nxt", ["https://evil.example/", "//evil.example", "/\t/evil.example",
                                 "/\\evil.example", "\t//evil.example", "javascript:alert(1)",
                                 "/\n/evil.example", " //evil.example"])
def test_login_never_redirects_off_site(web_app, nxt):
    from urllib.parse import quote

    c = web_app.test_client()
    r = login(c, nxt=nxt)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    # the same through ?next= (a link someone was sent): /%09/evil.example and friends
    r = c.get(f"/login?next={quote(nxt, safe='/:')}")
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_login_form_carries_only_a_safe_next(web_app):
    c = web_app.test_client()
    page = text(c.get("/login?next=/%09/evil.example", headers={"Accept": "text/html"}))
    assert 'name="next" value="/"' in page
    page = text(c.get("/devices", headers={"Accept": "text/html"}))
    assert 'name="next" value="/devices"' in page


def test_safe_next_keeps_local_paths():
    assert safe_next("/devices?x=1") == "/devices?x=1"
    assert safe_next("/%09/evil.example".replace("%09", "\t")) == "/"
    assert safe_next("/ok/../x") == "/ok/../x"
    assert safe_next(None) == "/"


def test_token_rotation_logs_sessions_out(tmp_path, web_ctl):
    tf = tmp_path / "web-token"
    old, _ = ensure_token(tf)
    app = make_app(web_ctl, CBLB_TOKEN="", CBLB_TOKEN_FILE=tf)
    c = app.test_client()
    assert login(c, token=old).status_code == 303
    assert c.get("/").status_code == 200
    new = rotate_token(tf)
    assert new != old and stat.S_IMODE(os.stat(tf).st_mode) == 0o600
    assert c.get("/", headers={"Accept": "text/html"}).status_code == 401    # logged out
    assert login(c, token=old).status_code == 401                             # old one dead
    assert login(c, token=new).status_code == 303
    assert c.get("/").status_code == 200


def test_bearer_token_for_metrics(web_app):
    r = web_app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and b"cblb_module_loaded 1.0" in r.data


def test_app_refuses_to_build_without_a_token(web_ctl):
    with pytest.raises(ValueError, match="access token"):
        create_app({"TESTING": True, "CBLB_CONTROLLER": web_ctl})


def test_ensure_token_creates_0600_once(tmp_path):
    path = tmp_path / "sub" / "web-token"
    tok, created = ensure_token(path)
    assert created and len(tok) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created2 = ensure_token(path)
    assert again == tok and not created2
    os.chmod(path, 0o600)
    path.write_text("short")
    with pytest.raises(ValueError):
        ensure_token(path)


# ---- JSON, metrics, SSE, charts ----------------------------------------------------------------
def test_api_status(web_client, web_ctl, web_catalog):
    make_active(web_ctl, web_catalog)
    j = web_client.get("/api/status").get_json()
    assert j["loaded"] and j["total"] == 4
    assert j["snapshots"][0]["name"] == "shadow" and j["snapshots"][0]["state"] == "active"


def test_metrics(web_client, web_ctl, web_catalog, web_app):
    make_active(web_ctl, web_catalog)
    web_app.extensions["cblb_history"].tick()
    r = web_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    body = text(r)
    assert "cblb_module_loaded 1.0" in body
    assert "cblb_module_total_slots 4.0" in body
    assert 'cblb_snapshot_state{name="shadow",origin="/dev/vdb1",state="active"} 1.0' in body
    assert 'cblb_snapshot_store_capacity_bytes{name="shadow",origin="/dev/vdb1"} 4.194304e+06' in body
    assert 'cblb_origin_write_bytes_per_second{device="vdb1"}' in body


def test_metrics_module_not_loaded(tmp_path):
    app = make_app(fake_ctl(tmp_path, loaded=False))
    body = text(logged_in(app).get("/metrics"))
    assert "cblb_module_loaded 0.0" in body and "cblb_up 1.0" in body


def test_events_stream(web_client, web_ctl, web_catalog, web_app):
    make_active(web_ctl, web_catalog)
    web_app.extensions["cblb_history"].tick()
    r = web_client.get("/events")
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    body = text(r)
    for ev in ("devices", "charts-io", "charts-growth"):
        assert f"event: {ev}\n" in body
    assert "data: " in body and 'id="dev-shadow"' in body


def test_events_send_lifecycle_only_when_the_page_is_stale(tmp_path):
    class Changing(Controller):
        armed = False
        n = 0

        def status(self):
            if self.armed:
                self.n += 1
                if self.n == 2:            # between the stream's first and second round
                    self.create("shadow", "/dev/vdb1")
            return super().status()

    ctl = Changing(system=FakeSystem(tmp_path / "f", loaded=True))
    app = make_app(ctl, CBLB_SSE_MAX_ROUNDS=2, CBLB_SSE_INTERVAL=0,
                   CBLB_CATALOG_ROOTS=(str(tmp_path),))
    c = logged_in(app)
    c.get("/")                  # the page shows "no snapshots"
    ctl.armed = True
    body = text(c.get("/events"))
    assert body.count("event: devices\n") == 2
    assert body.count("event: lifecycle\n") == 1 and 'id="snap-shadow"' in body
    # the session's panel is now current: a new stream sends no lifecycle event
    body = text(c.get("/events"))
    assert "event: lifecycle" not in body
    # a POST's own response brings the panel; the stream does not send it again
    r = post(c, "/snapshots/shadow/start", {"catalog": str(tmp_path), "file_mib": "1",
                                            "max_files": "1"}, htmx=True)
    assert r.status_code == 200, text(r)
    assert "event: lifecycle" not in text(c.get("/events"))


def test_charts_draw_growth_with_projection(tmp_path, web_catalog):
    clock = [1000.0]
    fake = FakeSystem(tmp_path / "f", loaded=True, grow_bytes_per_s=1e6, clock=lambda: clock[0])
    ctl = Controller(system=fake)
    app = make_app(ctl, CBLB_SAMPLER=fake.write_samples)
    h = app.extensions["cblb_history"]
    h.clock = lambda: clock[0]
    ctl.create("shadow", "/dev/vdb1")
    ctl.start("shadow", str(web_catalog), 2048 * 64, 4)   # 256 MiB store
    for _ in range(30):
        clock[0] += 2
        h.tick()
    c = logged_in(app)
    body = text(c.get("/charts/growth", headers=HX))
    assert "<svg" in body and "<polyline" in body
    assert "store 256.0 MiB" in body               # the limit line
    assert "the store is full in about" in body
    assert 'class="mark"' in body and "full ~" in body   # where it runs out
    io = text(c.get("/charts/io", headers=HX))
    assert io.count("<polyline") >= 3              # throughput, p50, p99
    assert "vdb1 MB/s" in io


def test_charts_empty(web_client):
    assert "no origin writes sampled yet" in text(web_client.get("/charts/io", headers=HX))
    assert "No started snapshot yet" in text(web_client.get("/charts/growth", headers=HX))


# ---- pieces -------------------------------------------------------------------------------------
def test_projection():
    pts = [GrowthPoint(t, 1000 * t, 1, 4, 100_000) for t in range(10)]
    p = project(pts)
    assert p.rate == pytest.approx(1000)
    assert p.full_ts == pytest.approx(100)
    flat = [GrowthPoint(t, 5, 1, 4, 100) for t in range(5)]
    assert project(flat).full_ts is None
    assert project(pts[:1]).full_ts is None


def test_svg_escapes_labels():
    out = render(Chart('<script>alert(1)</script>', [Series("a&b", [(0, 1), (1, 2)])]))
    assert "<script>" not in out and "&lt;script&gt;" in out and "a&amp;b" in out
    assert "no data" in render(Chart("t", []))


def test_diskstats_sampler(tmp_path):
    f = tmp_path / "diskstats"
    line = "   7       0 loop0 10 0 80 5 {w} 0 {s} {ms} 0 0 0\n"
    f.write_text(line.format(w=100, s=2048, ms=50))
    clock = [10.0]
    smp = DiskstatsSampler(lambda: ["7:0", "8:0"], str(f), clock=lambda: clock[0])
    assert smp() == []                               # first call: baseline only
    f.write_text(line.format(w=300, s=2048 + 4096, ms=250))
    clock[0] = 12.0
    [s] = smp()
    assert s["device"] == "loop0" and s["ts"] == 12.0
    assert s["write_mb_s"] == pytest.approx(4096 * 512 / 2 / 1e6)
    assert s["write_iops"] == pytest.approx(100)
    assert s["avg_us"] == pytest.approx(1000)
    assert DiskstatsSampler(lambda: [], str(f))() == []


def test_history_handles_failing_sampler(web_ctl):
    from web.history import History

    def boom():
        raise RuntimeError("bpf went away")

    h = History(web_ctl, boom)
    h.tick()
    assert "bpf went away" in h.last_error


# ---- the command -------------------------------------------------------------------------------
@pytest.mark.parametrize("text_,want", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("0.0.0.0:9", ("0.0.0.0", 9)),
    ("[::1]:8470", ("::1", 8470)),
    (":8080", ("127.0.0.1", 8080)),
    ("localhost", ("localhost", 8470)),
])
def test_parse_bind(text_, want):
    assert web_cmd.parse_bind(text_) == want


@pytest.mark.parametrize("bad", ["1.2.3.4:0", "1.2.3.4:99999", "host:x", "evil.com:80",
                                 "::1:80", "[::1", "$(id):80"])
def test_parse_bind_refuses(bad):
    with pytest.raises(CblbError):
        web_cmd.parse_bind(bad)


def record_served(monkeypatch) -> list:
    """cblb web binds for real but does not serve: the apps it would have served."""
    served = []
    real = web_cmd.make_server

    def make(app, socks, threads, *a, **kw):
        served.append(app)
        return real(app, socks, threads, *a, **kw)

    monkeypatch.setattr(web_cmd, "make_server", make)
    monkeypatch.setattr(web_cmd, "serve_forever", lambda server: None)
    return served


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cblb_web_prints_token_once_on_every_bind(tmp_path, monkeypatch, capsys):
    from cblb import cli

    served = record_served(monkeypatch)
    tf = tmp_path / "token"
    port = free_port()
    assert cli.main(["web", "--token-file", str(tf), "--standin", "--bind", f":{port}"]) == 0
    out = capsys.readouterr().out
    tok = tf.read_text().strip()
    assert f"http://127.0.0.1:{port}/" in out and tok in out
    assert "log in with this access token" in out
    app = served[0]
    assert app.extensions["cblb_token"].current() == tok and app.config["CBLB_CHECK_HOST"]
    assert app.test_client().get("/api/status").status_code == 401    # loopback: token too
    port = free_port()
    assert cli.main(["web", "--bind", f"0.0.0.0:{port}", "--token-file", str(tf),
                     "--standin"]) == 0
    out = capsys.readouterr().out
    assert f"://127.0.0.1:{port}/" in out and tok not in out and f"sudo cat {tf}" in out
    assert not served[-1].config["CBLB_CHECK_HOST"]


def test_cblb_web_rotate_token(tmp_path, capsys):
    import json

    from cblb import cli

    tf = tmp_path / "token"
    old, _ = ensure_token(tf)
    assert cli.main(["web", "--rotate-token", "--token-file", str(tf), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["token"] == tf.read_text().strip() != old


def test_cblb_web_standin_drives_the_real_controller(tmp_path, monkeypatch):
    from cblb import cli

    served = record_served(monkeypatch)
    assert cli.main(["web", "--token-file", str(tmp_path / "t"), "--standin",
                     "--bind", f":{free_port()}"]) == 0
    app = served[0]
    ctl = app.config["CBLB_CONTROLLER"]
    assert type(ctl) is Controller and isinstance(ctl.system, FakeSystem)


def test_cblb_web_bad_bind_is_usage(capsys):
    from cblb import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["web", "--bind", "nowhere:80"])
    assert e.value.code == 2
    assert "give an IP address" in capsys.readouterr().err


# ---- changed-block tracking (kmod/doc/CBT.md) ----------------------------------------------------
def test_tracking_table_json_and_metrics(web_client, web_ctl, fake, web_catalog):
    body = text(web_client.get("/devices", headers=HX))
    assert 'id="tracking"' not in body                    # nothing tracked yet
    make_active(web_ctl, web_catalog)
    fake.write_origin("/dev/vdb1", 0, b"x" * 3 * 4096)    # after the point in time
    gen = web_ctl.tracking()[0].generation
    body = text(web_client.get("/devices", headers=HX))
    row = re.search(r'<tr id="track-vdb1">(.*?)</tr>', body, re.S)
    assert row, body
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                  row.group(1), re.S)]
    assert cells[:4] == ["/dev/vdb1", gen[:8], "1", "12.0 KiB"] and cells[-1] == "shadow"
    assert f'title="{gen}"' in row.group(1)
    j = web_client.get("/api/status").get_json()
    assert j["tracking"][0]["generation"] == gen and j["tracking"][0]["changed_bytes"] == 3 * 4096
    assert j["snapshots"][0]["cbt_sequence"] == 1
    m = text(web_client.get("/metrics"))
    assert f'cblb_tracking_sequence{{disk="vdb1",generation="{gen}"}} 1.0' in m
    assert f'cblb_tracking_changed_bytes{{disk="vdb1",generation="{gen}"}} 12288.0' in m
