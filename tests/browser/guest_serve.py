"""Inside the lab guest: set up an origin and a catalog, load the module and serve the page
for the browser test on the host (tests/browser/test_browser.py, CBLB_BROWSER_LAB=1).

    scripts/lab --port 8470 -- .venv/bin/python tests/browser/guest_serve.py --port 8470

Bound to 0.0.0.0 (the forwarded port reaches the guest's own address), so the page needs
the access token; it is written to $CBLB_LAB_OUT/web-token (mode 0600), where the host test
reads it. $CBLB_LAB_OUT/web-ready.json tells the host what to type into the page; the guest
stops when the host creates $CBLB_LAB_OUT/web-stop. A background writer keeps changing the
origin so the charts have something to show.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def sh(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def loop_fs(tag: str, size_mb: int) -> tuple[str, Path]:
    img = Path(f"/tmp/cblb-browser-{tag}.img")
    sh(["truncate", "-s", f"{size_mb}M", str(img)])
    dev = sh(["losetup", "-f", "--show", str(img)])
    sh(["mkfs.ext4", "-q", "-F", dev])
    mnt = Path(f"/tmp/cblb-browser-{tag}")
    mnt.mkdir(exist_ok=True)
    sh(["mount", dev, str(mnt)])
    return dev, mnt


def writer(mnt: Path, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        with open(mnt / f"churn-{i % 8}.bin", "wb") as f:
            f.write(os.urandom(2 << 20))
            os.fsync(f.fileno())
        i += 1
        stop.wait(0.5)


def ensure_network() -> str:
    """The forwarded port reaches the guest's user-mode NIC at QEMU's fixed address
    10.0.2.15/24 (slirp's layout never changes); scripts/lab --port adds the NIC and this
    gives it that address, unless it already has one."""
    nics = [n for n in sorted(os.listdir("/sys/class/net")) if n != "lo"]
    if not nics:
        raise SystemExit("guest_serve: no network interface (scripts/lab --port N adds one)")
    nic = nics[0]
    sh(["ip", "link", "set", nic, "up"])
    if "inet " not in sh(["ip", "-4", "-o", "addr", "show", "dev", nic]):
        sh(["ip", "addr", "add", "10.0.2.15/24", "dev", nic])
    return f"{nic} {sh(['ip', '-4', '-o', 'addr', 'show', 'dev', nic]).split('inet ')[1].split()[0]}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8470)
    args = ap.parse_args()
    out = Path(os.environ.get("CBLB_LAB_OUT", "/tmp"))
    subprocess.run(["modprobe", "loop"], check=False)
    origin, omnt = loop_fs("origin", 512)
    _cdev, cmnt = loop_fs("catalog", 768)
    catalog = cmnt / "catalog"
    catalog.mkdir()
    (omnt / "hello.txt").write_text("written before the snapshot\n")

    from cblb.control import Controller

    ctl = Controller()
    if ctl.loaded():
        subprocess.run(["rmmod", "cblb_module"], check=False)
    # The page offers to load the module itself; the test clicks "Load module".

    from web import create_app
    from web.auth import ensure_token

    token, _ = ensure_token(out / "web-token")
    app = create_app({"CBLB_CONTROLLER": ctl, "CBLB_TOKEN": token, "CBLB_CHECK_HOST": False,
                      "CBLB_CATALOG_ROOTS": (str(cmnt),), "CBLB_DEFAULT_CATALOG": str(catalog),
                      "CBLB_HISTORY_INTERVAL": 1.0, "CBLB_SSE_INTERVAL": 1.0})
    from werkzeug.serving import make_server

    print(f"guest_serve: network {ensure_network()}", flush=True)
    srv = make_server("0.0.0.0", args.port, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=writer, args=(omnt, stop), daemon=True).start()
    (out / "web-ready.json").write_text(json.dumps({
        "origin": origin, "catalog": str(catalog), "mount_dir": "/run/cblb/shadow-web",
        "port": args.port}))
    print(f"guest_serve: serving on 0.0.0.0:{args.port}, origin {origin}", flush=True)
    deadline = time.time() + 1200
    while not (out / "web-stop").exists() and time.time() < deadline:
        time.sleep(1)
    stop.set()
    srv.shutdown()
    app.extensions["cblb_history"].stop()
    for s in ctl.snapshots():
        if s.mountpoint:
            subprocess.run(["umount", s.mountpoint], check=False)
        try:
            ctl.remove(s.name)
        except Exception as e:  # report, go on tidying
            print(f"guest_serve: remove {s.name}: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
