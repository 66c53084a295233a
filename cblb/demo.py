"""The main job (`make demo`): a live snapshot of a busy ext4 partition, backed up and
verified, with a report.

It runs where the module can be loaded (as root): scripts/demo decides whether that is
this machine or the lab guest. Steps, each through the `cblb` command line itself:

 1. an ext4 "partition" (a loop device) filled with files, checksummed;
 2. a write load with fio (new files plus in-place overwrites) measured alone;
 3. `cblb snapshot` while the load runs, the load measured again;
 4. `cblb backup` of the snapshot to an image, under the load;
 5. `cblb verify` of the image against the snapshot, and of every file in the snapshot
    against its pre-snapshot checksum;
 6. a report (text and JSON), then `cblb release`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def sh(cmd: list[str] | str, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    if r.returncode not in (0,):
        raise SystemExit(f"demo: {cmd if isinstance(cmd, str) else ' '.join(cmd)} failed "
                         f"({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def cblb(*args: str) -> Any:
    r = sh([sys.executable, "-m", "cblb.cli", *args])
    out = r.stdout.strip()
    try:
        return json.loads(out) if out.startswith(("{", "[")) else out
    except json.JSONDecodeError:
        return out


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fio_load(mnt: Path, seconds: int, overwrite: list[Path], out: Path) -> subprocess.Popen[str]:
    """New 1 MiB sequential files plus 4 KiB random overwrites of existing files."""
    (mnt / "incoming").mkdir(exist_ok=True)
    argv = ["fio", "--output-format=json", f"--output={out}", "--group_reporting=0",
            "--name=newfiles", f"--directory={mnt / 'incoming'}", "--rw=write", "--bs=1m",
            "--size=32m", "--time_based", f"--runtime={seconds}", "--ioengine=psync",
            "--end_fsync=1"]
    if overwrite:
        files = ":".join(str(p) for p in overwrite)
        argv += ["--name=overwrite", f"--filename={files}", "--rw=randwrite", "--bs=4k",
                 "--direct=1", "--time_based", f"--runtime={seconds}", "--ioengine=psync",
                 "--randrepeat=0"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def fio_write_mb_s(path: Path) -> float:
    data = json.loads(path.read_text())
    return sum(j["write"]["bw_bytes"] for j in data["jobs"]) / MIB


def run(out: Path, size_mb: int, seconds: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/cblb-demo")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    report: dict[str, Any] = {"kernel": os.uname().release, "origin_mb": size_mb,
                              "load_seconds": seconds}
    sh("modprobe loop; modprobe ext4")
    step(f"making a {size_mb} MiB ext4 partition (loop device) and a catalog disk")
    origin = sh(f"truncate -s {size_mb}M {work}/origin.img && losetup -f --show "
                f"{work}/origin.img").stdout.strip()
    catdev = sh(f"truncate -s {size_mb}M {work}/catalog.img && losetup -f --show "
                f"{work}/catalog.img").stdout.strip()
    mnt, catmnt, snapmnt = work / "data", work / "catalog", work / "snapshot"
    for d in (mnt, catmnt, snapmnt):
        d.mkdir()
    sh(f"mkfs.ext4 -q {origin} && mkfs.ext4 -q {catdev}")
    sh(f"mount {origin} {mnt} && mount {catdev} {catmnt}")
    try:
        step("filling it with files")
        docs = mnt / "documents"
        docs.mkdir()
        for i in range(48):
            (docs / f"doc{i:02d}.bin").write_bytes(os.urandom(MIB))
        sh("sync")
        hot = sorted(docs.glob("*.bin"))[:16]        # the files the load rewrites in place

        step(f"write load alone for {seconds}s (baseline: new files + in-place rewrites)")
        fio_load(mnt, seconds, hot, work / "fio-base.json").wait()
        report["baseline_write_mb_s"] = round(fio_write_mb_s(work / "fio-base.json"), 2)
        shutil.rmtree(mnt / "incoming")
        sh("sync")
        before = checksums(docs)
        report["files"] = len(before)

        cblb("load", "--total", "4")
        step("snapshot taken while the partition is busy")
        busy = fio_load(mnt, 600, [], work / "fio-busy.json")   # new files only
        time.sleep(2)
        t0 = time.monotonic()
        snap = cblb("snapshot", origin, "--mount", str(snapmnt), "--catalog",
                    str(catmnt / "shadow"), "--json")
        report["snapshot_command_s"] = round(time.monotonic() - t0, 3)
        busy.terminate()
        busy.wait()
        name = snap["name"]
        report["snapshot"] = name
        report["start_latency_ms"] = snap["start_latency_us"] / 1000
        report["start_time"] = time.strftime("%Y-%m-%d %H:%M:%S",
                                             time.localtime(snap["start_time_ns"] / 1e9))

        step(f"the same write load with the snapshot active ({seconds}s)")
        shutil.rmtree(mnt / "incoming", ignore_errors=True)
        fio_load(mnt, seconds, hot, work / "fio-snap.json").wait()
        report["snapshot_write_mb_s"] = round(fio_write_mb_s(work / "fio-snap.json"), 2)
        report["write_ratio"] = round(report["snapshot_write_mb_s"]
                                      / max(report["baseline_write_mb_s"], 1e-9), 3)

        step(f"backing up /dev/{name} while the origin keeps changing")
        shutil.rmtree(mnt / "incoming", ignore_errors=True)
        busy = fio_load(mnt, 600, hot, work / "fio-busy2.json")
        image = work / "backup.img"
        bk = cblb("backup", name, str(image), "--json")
        busy.terminate()
        busy.wait()
        report["backup"] = bk

        step("verifying the backup against the snapshot, block by block")
        r = subprocess.run([sys.executable, "-m", "cblb.cli", "verify", str(image), "--against",
                            f"/dev/{name}", "--json"], capture_output=True, text=True)
        report["verify_backup"] = {"exit": r.returncode,
                                   "result": json.loads(r.stdout) if r.stdout.strip() else None}
        step("verifying every file in the snapshot against its pre-snapshot checksum")
        after = checksums(snapmnt / "documents")
        bad = sorted(k for k in before if after.get(k) != before[k])
        report["files_verified"] = len(before) - len(bad)
        report["files_differing"] = bad
        live = checksums(docs)
        report["files_changed_on_origin"] = sum(1 for k in before if live.get(k) != before[k])
        st = cblb("list", "--json")
        s = next(x for x in st["snapshots"] if x["name"] == name)
        report.update(cow_bytes=s["cow_bytes"], cow_chunks=s["cow_chunks"],
                      temp_files_used=s["files_used"], temp_files_max=s["max_files"],
                      temp_file_blocks=s["file_size"], state=s["state"])
        report["ok"] = (report["verify_backup"]["exit"] == 0 and not bad
                        and s["state"] == "active")
        step("releasing the snapshot")
        cblb("release", str(snapmnt))
    finally:
        sh(f"umount {snapmnt} 2>/dev/null; umount {mnt}; umount {catmnt}; "
           f"losetup -d {origin}; losetup -d {catdev}; true")
        shutil.rmtree(work, ignore_errors=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "report.txt").write_text(text)
    print(text)
    return report


def render(r: dict[str, Any]) -> str:
    mb = 1 << 20
    lines = [
        "cblb demo report",
        f"  kernel                      {r['kernel']}",
        f"  snapshot                    /dev/{r['snapshot']} of a {r['origin_mb']} MiB ext4 "
        f"partition with {r['files']} files",
        f"  point in time               {r['start_time']} (start took "
        f"{r['start_latency_ms']:.1f} ms in the kernel, {r['snapshot_command_s']:.2f} s "
        "for the whole 'cblb snapshot')",
        f"  copied on write             {r['cow_bytes'] / mb:.1f} MiB ({r['cow_chunks']} chunks) "
        f"in {r['temp_files_used']} of {r['temp_files_max']} temp files of "
        f"{r['temp_file_blocks'] * 512 / mb:.0f} MiB",
        f"  origin write throughput     {r['baseline_write_mb_s']:.1f} MB/s without, "
        f"{r['snapshot_write_mb_s']:.1f} MB/s with the snapshot ({r['write_ratio']:.2f}x; "
        "emulated machine: ratios matter, not MB/s)",
        f"  backup                      {r['backup'].get('bytes', 0) / mb:.0f} MiB in "
        f"{r['backup'].get('seconds', 0):.1f} s",
        f"  backup == snapshot          {'yes' if r['verify_backup']['exit'] == 0 else 'NO'}",
        f"  files as before snapshot    {r['files_verified']}/{r['files']} "
        f"({r['files_changed_on_origin']} of them changed on the origin meanwhile)",
        f"  result                      {'OK' if r['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("CBLB_LAB_OUT", ".") + "/demo")
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (it loads the module and makes loop devices)",
              file=sys.stderr)
        return 1
    r = run(Path(a.out), a.size_mb, a.seconds)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
