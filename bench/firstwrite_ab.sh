#!/bin/bash
# First writes with several builds of the module, back to back in one guest, on SSD-like
# null_blk devices (100 us, 500 MiB/s; origin, catalog and store each on its own device):
#   scripts/lab --kver 6.12 -- bash bench/firstwrite_ab.sh A.ko B.ko ...   (ROUNDS=2 by default)
# (the .ko files must sit where the guest can read them, e.g. under lab-out/). Each round,
# per build: start a snapshot, time sequential 1 MiB first writes over 384 MiB and random
# 4 KiB first writes (24 MiB over another 384 MiB), queue depth 1 and 8; remove. The same
# runs with no snapshot come first in each round. Prints each ratio and the p99 latency of
# the random runs at queue depth 1. A change to the copy path is checked here before
# make bench-quick. DEV=ram: RAM-backed loop devices instead.
set -e
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 MODULE.ko..." >&2; exit 2; }
if [ "${DEV:-ssd}" = ram ]; then       # RAM-backed loop devices, as bench-quick's "ram" set
	modprobe loop 2>/dev/null || true
	truncate -s 800M /tmp/fw-o.img; truncate -s 1G /tmp/fw-c.img
	O=$(losetup -f --show /tmp/fw-o.img); C=$(losetup -f --show /tmp/fw-c.img)
else
	modprobe null_blk nr_devices=3 gb=1 bs=512 memory_backed=1 discard=1 queue_mode=2 irqmode=2 completion_nsec=100000 mbps=500
	sleep 1
	# null_blk's bandwidth cap never lets a discard larger than its budget through: fstrim
	# would hang
	for d in nullb0 nullb1 nullb2; do echo 4194304 > /sys/block/$d/queue/discard_max_bytes; done
	O=/dev/nullb0; C=/dev/nullb1
fi
dd if=/dev/zero of="$O" bs=1M count=800 oflag=direct status=none
mkfs.ext4 -q -F -E nodiscard "$C"; mkdir -p /tmp/cat; mount "$C" /tmp/cat
F="fio --name=w --filename=$O --direct=1 --ioengine=libaio --output-format=json"
res() {  # bandwidth KiB/s and p99 clat us of a fio json on stdin
	python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; print(j['bw'], j['clat_ns']['percentile']['99.000000']//1000)"; }
runs() {  # the four runs; prints "seq1 seq8 rand1 rand8 p99rand1"
	local s1 s8 r1 r8 p
	s1=$($F --rw=write --bs=1M --iodepth=1 --offset=0 --size=384M | res | cut -d' ' -f1)
	python3 -m cblb.cli remove p >/dev/null 2>&1 && fresh
	s8=$($F --rw=write --bs=1M --iodepth=8 --offset=0 --size=384M | res | cut -d' ' -f1)
	read -r r1 p < <($F --rw=randwrite --bs=4k --iodepth=1 --offset=384M --size=384M --io_size=24M --randrepeat=0 | res)
	python3 -m cblb.cli remove p >/dev/null 2>&1 && fresh
	r8=$($F --rw=randwrite --bs=4k --iodepth=8 --offset=384M --size=384M --io_size=24M --randrepeat=0 | res | cut -d' ' -f1)
	echo "$s1 $s8 $r1 $r8 $p"
}
fresh() { python3 -m cblb.cli create p "$O" >/dev/null
	python3 -m cblb.cli start p /tmp/cat 262144 8 >/dev/null; }
for round in $(seq "${ROUNDS:-2}"); do
	read -r b1 b8 q1 q8 bp < <(runs)
	echo "round $round no snapshot: seq qd1 $((b1 / 1024)) MiB/s, qd8 $((b8 / 1024)); rand qd1 $((q1 / 1024)) MiB/s, qd8 $((q8 / 1024)); rand qd1 p99 ${bp} us"
	for ko in "$@"; do
		insmod "$ko" total=4
		fresh
		read -r s1 s8 r1 r8 p < <(runs)
		python3 -m cblb.cli remove p >/dev/null
		rmmod cblb_module
		python3 - "$ko" "$s1/$b1" "$s8/$b8" "$r1/$q1" "$r8/$q8" "$p/$bp" <<'PY'
import sys
k, *r = sys.argv[1:]
v = [round(eval(x), 3) for x in r]
print(f"  {k}: seq first writes qd1 {v[0]}x qd8 {v[1]}x, rand qd1 {v[2]}x qd8 {v[3]}x, rand qd1 p99 {v[4]}x")
PY
		fstrim /tmp/cat || true
	done
done
