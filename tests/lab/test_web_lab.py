"""The web page against the real module, in the lab guest: drive the lifecycle through the
HTTP API (Flask's test client over create_app with the real Controller) and check the
kernel's own state (/sys/kernel/cblb, /proc/self/mountinfo) after every step."""

from __future__ import annotations

import html
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from conftest import mkfs, sh

from web import create_app

pytestmark = pytest.mark.lab

SYS = Path("/sys/kernel/cblb")
NAME = "web-lab"


def kstate(name: str) -> str | None:
    p = SYS / name / "state"
    return p.read_text().strip() if p.exists() else None


def kread(name: str, attr: str) -> str:
    return (SYS / name / attr).read_text().strip()


def mounted_at(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def mount_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4] == str(path):
                return set(line.split()[5].split(","))
    return set()


def text(resp) -> str:
    return html.unescape(resp.get_data(as_text=True))


@pytest.fixture
def web_lab(cblb_module, scratch_fs):
    root = Path(f"/tmp/cblb-webmnt-{uuid.uuid4().hex[:6]}")
    root.mkdir()
    token = "lab-token-" + uuid.uuid4().hex
    app = create_app({"TESTING": True, "CBLB_CONTROLLER": cblb_module, "CBLB_TOKEN": token,
                      "CBLB_MOUNT_ROOTS": (str(root),),
                      "CBLB_CATALOG_ROOTS": (str(scratch_fs.catalog_mnt), "/dev/shm"),
                      "CBLB_DEFAULT_CATALOG": str(scratch_fs.catalog_dir)})
    client = app.test_client()
    login = client.get("/login", headers={"Accept": "text/html"})
    tok = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True)).group(1)
    r = client.post("/login", data={"token": token, "csrf_token": tok, "next": "/"})
    assert r.status_code == 303
    page = client.get("/")
    tok = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)

    def post(url: str, data: dict | None = None, htmx: bool = True):
        return client.post(url, data={**(data or {}), "csrf_token": tok},
                           headers={"HX-Request": "true"} if htmx else {})

    yield app, client, post, root
    for m in root.glob("*"):
        if mounted_at(m):
            os.system(f"umount {m}")
    app.extensions["cblb_history"].stop()


def test_lifecycle_through_http(web_lab, cblb_module, scratch_fs):
    app, client, post, root = web_lab
    (scratch_fs.mnt / "before.txt").write_text("taken before start\n")
    os.sync()

    # create
    r = post("/snapshots", {"name": NAME, "origin": scratch_fs.device})
    assert r.status_code == 200, text(r)
    assert kstate(NAME) == "created"
    assert kread(NAME, "origin") == scratch_fs.device
    assert f'id="start-{NAME}"' in text(r)

    # start (4 MiB files, 32 of them)
    r = post(f"/snapshots/{NAME}/start", {"catalog": str(scratch_fs.catalog_dir),
                                          "file_mib": "4", "max_files": "32"})
    assert r.status_code == 200, text(r)
    assert kstate(NAME) == "active"
    assert kread(NAME, "catalog") == str(scratch_fs.catalog_dir)
    assert int(kread(NAME, "file_size")) == 4 * 2048
    assert int(kread(NAME, "max_files")) == 32
    assert Path(f"/dev/{NAME}").exists()

    # the origin changes after the point in time; the history worker sees the growth
    h = app.extensions["cblb_history"]
    h.tick()
    with open(scratch_fs.mnt / "after.bin", "wb") as f:
        for _ in range(16):
            f.write(os.urandom(1 << 20))
    (scratch_fs.mnt / "before.txt").write_text("changed after start\n")
    os.sync()
    time.sleep(0.5)
    h.tick()
    assert int(kread(NAME, "cow_bytes")) > 0
    growth, io = h.view()
    # the journal may still commit after sync: the sample is real and never ahead of sysfs
    assert 0 < growth[NAME][-1].cow_bytes <= int(kread(NAME, "cow_bytes"))
    dev = os.path.basename(os.path.realpath(scratch_fs.device))
    assert dev in io and io[dev][-1]["write_mb_s"] > 0, io   # diskstats fallback sampler
    g = text(client.get("/charts/growth", headers={"HX-Request": "true"}))
    assert "<polyline" in g and NAME in g

    # table and metrics read the kernel's figures
    body = text(client.get("/devices", headers={"HX-Request": "true"}))
    assert f'id="dev-{NAME}"' in body and 'class="badge active"' in body
    m = text(client.get("/metrics"))
    cow = int(kread(NAME, "cow_bytes"))
    assert re.search(rf'cblb_snapshot_cow_bytes\{{name="{NAME}",origin="[^"]+"\}} '
                     rf'([0-9.e+]+)', m)
    j = client.get("/api/status").get_json()
    assert j["snapshots"][0]["cow_bytes"] >= cow

    # mount: the snapshot shows the filesystem as it was at start
    target = root / NAME
    r = post(f"/snapshots/{NAME}/mount", {"dir": str(target)})
    assert r.status_code == 200, text(r)
    assert mounted_at(target)
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(target)
    assert (target / "before.txt").read_text() == "taken before start\n"
    assert not (target / "after.bin").exists()

    # remove is refused while mounted (the library's message, inline)
    r = post(f"/snapshots/{NAME}/remove", {"confirm": NAME})
    assert r.status_code == 422 and "unmount it first" in text(r)
    assert kstate(NAME) == "active"

    # umount
    r = post(f"/snapshots/{NAME}/umount")
    assert r.status_code == 200, text(r)
    assert not mounted_at(target)

    # remove needs its confirmation
    r = post(f"/snapshots/{NAME}/remove")
    assert r.status_code == 422 and kstate(NAME) == "active"
    r = post(f"/snapshots/{NAME}/remove", {"confirm": NAME})
    assert r.status_code == 200, text(r)
    assert kstate(NAME) is None and not Path(f"/dev/{NAME}").exists()
    assert not any(scratch_fs.catalog_dir.iterdir()), "temp files left behind"

    # unload, see the page say so, load again through the page
    r = post("/module/unload", {"confirm": "unload"})
    assert r.status_code == 200, text(r)
    assert not SYS.joinpath("cmd").exists()
    page = text(client.get("/"))
    assert "The cblb kernel module is not loaded." in page and 'id="load-btn"' in page
    r = post("/module/load", {"total": "4"})
    assert r.status_code == 200, text(r)
    assert SYS.joinpath("cmd").exists()
    assert Path("/sys/module/cblb_module/parameters/total").read_text().strip() == "4"


def test_kernel_refusals_shown_inline(web_lab, cblb_module, scratch_fs, tmp_path):
    app, client, post, root = web_lab
    r = post("/snapshots", {"name": NAME, "origin": "/etc/hostname"})
    assert r.status_code == 422 and "is not a block device" in text(r)
    r = post("/snapshots", {"name": "bad name", "origin": scratch_fs.device})
    assert r.status_code == 422 and "invalid snapshot name" in text(r)
    assert cblb_module.snapshots() == []
    r = post("/snapshots", {"name": NAME, "origin": scratch_fs.device})
    assert r.status_code == 200
    r = post("/snapshots", {"name": "web-lab2", "origin": scratch_fs.device})
    assert r.status_code == 422 and "already has a snapshot" in text(r)
    # a catalog on a loop device over a file on the origin: the module refuses (ELOOP),
    # and the page says why
    backing = scratch_fs.mnt / "stacked.img"
    sh(f"truncate -s 48M {backing}")
    loop = sh(f"losetup -f --show {backing}").strip()
    stacked = scratch_fs.catalog_mnt / "stacked"
    stacked.mkdir()
    try:
        mkfs(loop, "ext4")
        sh(f"mount {loop} {stacked}")
        r = post(f"/snapshots/{NAME}/start", {"catalog": str(stacked), "file_mib": "4",
                                              "max_files": "4"})
        assert r.status_code == 422 and "built on the origin" in text(r), text(r)
        assert kstate(NAME) == "created"
    finally:
        sh(f"umount {stacked}", check=False)
        sh(f"losetup -d {loop}", check=False)
        stacked.rmdir()
    r = post(f"/snapshots/{NAME}/start", {"catalog": str(scratch_fs.catalog_dir),
                                          "file_mib": "4", "max_files": "5000"})
    assert r.status_code == 422 and "max files 5000 is out of range" in text(r)
    r = post(f"/snapshots/{NAME}/mount", {"dir": "/etc"})
    assert r.status_code == 422 and kstate(NAME) == "created"
    r = post(f"/snapshots/{NAME}/remove", {"confirm": NAME})
    assert r.status_code == 200 and kstate(NAME) is None
