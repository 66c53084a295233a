#!/usr/bin/env python3
"""hash_bench: throughput of cblb's block hashing against xxhsum, hashlib, the xxhash
package, and a plain O_DIRECT read of a device with dd.

USAGE: hash_bench.py [--size MiB] [--repeat N] [--device DEV | --loop-mib MiB] [-o JSON]

In memory: a page-cached file of --size MiB is hashed by `xxhsum -H3` (one core), by the
engine with 1, 2 .. N threads, by the xxhash package (whole file and per 4 KiB block) and
by hashlib. From a device: `dd iflag=direct` reads it, then the engine makes a manifest of
it and verifies it against that manifest, all with O_DIRECT. Without --device, and as
root, a loop device with direct I/O on a scratch file stands in for one.

Every figure is printed with the kernel, CPU and command line it ran with; the best of
--repeat runs counts (the median is recorded too). Ratios are reported, never asserted.

examples:
  bench/hash_bench.py
  bench/hash_bench.py --size 2048 --repeat 7 -o /tmp/hash_bench.json
  sudo bench/hash_bench.py --device /dev/nvme0n1p3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xxhash  # noqa: E402

from cblb import _blockhash  # noqa: E402
from cblb.hashing import Engine  # noqa: E402
from cblb.verify import make_manifest, verify_paths  # noqa: E402

MiB = 1 << 20


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    return {
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "libxxhash": ".".join(map(str, _blockhash.LIBXXHASH_VERSION)),
        "xxh3_impl": _blockhash.IMPLEMENTATION,
        "xxhash_package": xxhash.VERSION,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) seconds of ``repeat`` runs after one warm-up."""
    fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return min(runs), statistics.median(runs)


class Report:
    def __init__(self, env: dict) -> None:
        self.env = env
        self.figures: dict[str, dict] = {}
        self.ratios: dict[str, dict] = {}
        self.where = f"[kernel {env['kernel']}; {env['cpu']} x{env['cpus']}; {env['command']}]"

    def figure(self, key: str, what: str, nbytes: int, best: float, median: float,
               command: str) -> float:
        gbs = nbytes / best / 1e9
        self.figures[key] = {"what": what, "bytes": nbytes, "best_s": best, "median_s": median,
                             "GB_per_s": round(gbs, 3),
                             "median_GB_per_s": round(nbytes / median / 1e9, 3),
                             "command": command, **self.env}
        print(f"{what:<46} {gbs:7.2f} GB/s (median {nbytes / median / 1e9:.2f})  "
              f"<{command}> {self.where}")
        return gbs

    def ratio(self, key: str, what: str, num: str, den: str, target: str = "") -> None:
        a, b = self.figures.get(num), self.figures.get(den)
        if not a or not b:
            return
        r = a["GB_per_s"] / b["GB_per_s"]
        self.ratios[key] = {"what": what, "ratio": round(r, 3), "numerator": num,
                            "denominator": den, "target": target, **self.env}
        print(f"RATIO {what:<52} {r:6.2f}  {('(target ' + target + ')') if target else ''} "
              f"{self.where}")


def bench_memory(rep: Report, path: str, size: int, repeat: int) -> None:
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    print(f"-- in memory: {size // MiB} MiB page-cached file {path}")

    xxhsum = shutil.which("xxhsum")
    if xxhsum:
        cmd = [xxhsum, "-H3", path]
        b, m = timed(lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, check=True), repeat)
        rep.figure("xxhsum_H3", "xxhsum -H3 (one core)", size, b, m, " ".join(cmd))

    threads = sorted({1, 2, len(os.sched_getaffinity(0))})
    for t in threads:
        eng = Engine(4096, "xxh3_64", threads=t)
        b, m = timed(lambda: eng.hash_path(path), repeat)
        eng.close()
        rep.figure(f"engine_{t}t", f"cblb engine, 4 KiB blocks, {t} thread(s)", size, b, m,
                   f"Engine(4096, 'xxh3_64', threads={t}).hash_path()")
    eng = Engine(4096, "xxh3_128", threads=1)
    b, m = timed(lambda: eng.hash_path(path), repeat)
    eng.close()
    rep.figure("engine_1t_128", "cblb engine, xxh3_128, 1 thread", size, b, m,
               "Engine(4096, 'xxh3_128', threads=1).hash_path()")

    def stream(new: Callable[[], object], chunk: int = MiB) -> Callable[[], object]:
        buf = bytearray(chunk)
        mv = memoryview(buf)

        def run() -> object:
            h = new()
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(mv[:n])
            return h.digest()
        return run

    b, m = timed(stream(_blockhash.xxh3_64), repeat)
    rep.figure("ext_stream", "cblb xxh3_64 object, whole file, 1 MiB reads", size, b, m,
               "_blockhash.xxh3_64().update(1 MiB reads)")
    b, m = timed(stream(xxhash.xxh3_64), repeat)
    rep.figure("xxhash_pkg_stream", "xxhash package xxh3_64, whole file", size, b, m,
               "xxhash.xxh3_64().update(1 MiB reads)")

    def per_block() -> None:
        f64 = xxhash.xxh3_64_digest
        buf = bytearray(MiB)
        mv = memoryview(buf)
        out = []
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                out.extend(f64(mv[i:i + 4096]) for i in range(0, n, 4096))

    b, m = timed(per_block, max(1, repeat // 2))
    rep.figure("xxhash_pkg_blocks", "xxhash package, per 4 KiB block, Python loop", size, b,
               m, "xxhash.xxh3_64_digest(block) for each block")
    for name in ("md5", "sha1", "sha256", "blake2b"):
        b, m = timed(stream(lambda n=name: hashlib.new(n)), max(1, repeat // 2))
        rep.figure(f"hashlib_{name}", f"hashlib {name}, whole file", size, b, m,
                   f"hashlib.new('{name}').update(1 MiB reads)")

    # Control: does this machine run two hashing threads in parallel at all? The same
    # nogil hashing of an L2-resident buffer, no I/O, in 1 and 2 threads (aggregate).
    import threading
    hot = os.urandom(256 << 10)
    loops = max(1, size // len(hot) // 2)

    def cpu_only(nthreads: int) -> Callable[[], None]:
        def run() -> None:
            ts = [threading.Thread(target=lambda: [_blockhash.hash_blocks(hot, 4096)
                                                   for _ in range(loops)])
                  for _ in range(nthreads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return run

    for t in (1, 2):
        b, m = timed(cpu_only(t), repeat)
        rep.figure(f"cpu_control_{t}t", f"control: hash 256 KiB in cache, {t} thread(s)",
                   t * loops * len(hot), b, m, f"{t} x hash_blocks(256 KiB) x {loops}")
    rep.ratio("cpu_control_scaling", "control: CPU-only 2 threads / 1 thread",
              "cpu_control_2t", "cpu_control_1t", "~2.0 on 2 free cores")

    rep.ratio("engine1_vs_xxhsum", "engine 1 thread / xxhsum -H3", "engine_1t", "xxhsum_H3",
              ">= 0.80")
    rep.ratio("engine2_vs_engine1", "engine 2 threads / 1 thread (scaling)", "engine_2t",
              "engine_1t", "~2.0")
    rep.ratio("engine1_vs_xxhash_pkg", "engine 1 thread / xxhash package stream",
              "engine_1t", "xxhash_pkg_stream")
    rep.ratio("engine1_vs_xxhash_blocks", "engine 1 thread / xxhash package per block",
              "engine_1t", "xxhash_pkg_blocks")
    rep.ratio("engine1_vs_sha256", "engine 1 thread / hashlib sha256", "engine_1t",
              "hashlib_sha256")


def dd_direct(dev: str) -> tuple[float, int]:
    cmd = ["dd", f"if={dev}", "of=/dev/null", "bs=8M", "iflag=direct", "status=none"]
    size = int(subprocess.run(["blockdev", "--getsize64", dev], capture_output=True,
                              text=True, check=True).stdout)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t, size


def bench_device(rep: Report, dev: str, repeat: int, workdir: str) -> None:
    print(f"-- from a device: {dev} (O_DIRECT)")
    runs = [dd_direct(dev) for _ in range(repeat)]
    size = runs[0][1]
    secs = [r[0] for r in runs]
    rep.figure("dd_direct", "dd iflag=direct bs=8M", size, min(secs), statistics.median(secs),
               f"dd if={dev} of=/dev/null bs=8M iflag=direct")
    man = os.path.join(workdir, "dev.manifest")
    b, m = timed(lambda: make_manifest(dev, man, direct=True), repeat)
    rep.figure("manifest_direct", "cblb manifest --direct", size, b, m,
               f"cblb manifest {dev} -o {man} --direct")
    b, m = timed(lambda: verify_paths(dev, man, direct=True), repeat)
    rep.figure("verify_direct", "cblb verify --direct against its manifest", size, b, m,
               f"cblb verify {dev} --against {man} --direct")
    rep.ratio("verify_vs_dd", "verify --direct / dd iflag=direct", "verify_direct",
              "dd_direct", ">= 0.90")
    rep.ratio("manifest_vs_dd", "manifest --direct / dd iflag=direct", "manifest_direct",
              "dd_direct")


def make_loop(path: str, mib: int) -> str:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    return subprocess.run(["losetup", "-f", "--show", "--direct-io=on", path],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("examples:")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="in-memory file, MiB (1024)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (5)")
    ap.add_argument("--device", help="block device to read for the device figures")
    ap.add_argument("--loop-mib", type=int, default=1024,
                    help="without --device: size of the loop device made as root (1024; "
                         "0 skips the device figures)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("-o", "--output", default="hash_bench.json", help="JSON results")
    args = ap.parse_args()

    env = environment()
    rep = Report(env)
    print(f"hash_bench: kernel {env['kernel']}, CPU {env['cpu']} x{env['cpus']}, libxxhash "
          f"{env['libxxhash']} ({env['xxh3_impl']}), command: {env['command']}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="hash_bench.") as work:
        data = os.path.join(work, "data.bin")
        with open(data, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        bench_memory(rep, data, args.size * MiB, args.repeat)
        os.unlink(data)
        loop = ""
        dev = args.device
        if not dev and args.loop_mib and os.geteuid() == 0 and shutil.which("losetup"):
            try:
                loop = dev = make_loop(os.path.join(work, "loop.img"), args.loop_mib)
            except (subprocess.CalledProcessError, OSError) as e:
                print(f"-- no loop device ({e}); device figures skipped")
        try:
            if dev:
                bench_device(rep, dev, args.repeat, work)
        finally:
            if loop:
                subprocess.run(["losetup", "-d", loop], check=False)
    with open(args.output, "w") as f:
        json.dump({"environment": env, "figures": rep.figures, "ratios": rep.ratios}, f,
                  indent=2, sort_keys=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
