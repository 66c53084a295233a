#!/bin/bash
# Rewrites of copied chunks with two builds of the module, back to back in one guest, on
# RAM-backed loop devices (origin and catalog on their own):
#   scripts/lab --kver 6.12 -- bash bench/rewrite_ab.sh OLD.ko NEW.ko
# (the .ko files must sit where the guest can read them, e.g. under lab-out/). Each round,
# per build: start a snapshot, copy 256 MiB with sequential and 32 MiB with random writes,
# then time 5 s of sequential 1 MiB and random 4 KiB rewrites of the copied span; unload
# and time the same runs with no snapshot. Prints each ratio. A bench-quick figure that
# moved between two runs is checked here before it is believed.
set -e
cd "$(dirname "$0")/.."
OLD=${1:?old module}; NEW=${2:?new module}
modprobe loop 2>/dev/null || true
truncate -s 600M /tmp/ab-o.img; truncate -s 700M /tmp/ab-c.img
O=$(losetup -f --show /tmp/ab-o.img); C=$(losetup -f --show /tmp/ab-c.img)
dd if=/dev/zero of="$O" bs=1M count=600 oflag=direct status=none
mkfs.ext4 -q -F -E nodiscard "$C"; mkdir -p /tmp/ab-cat; mount "$C" /tmp/ab-cat
bw() { python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['write']['bw'])"; }
F="fio --name=w --filename=$O --direct=1 --ioengine=libaio --iodepth=1 --output-format=json"
for round in 1 2; do
	for ko in "$OLD" "$NEW"; do
		insmod "$ko" total=4
		python3 -m cblb.cli create ab "$O" >/dev/null
		python3 -m cblb.cli start ab /tmp/ab-cat 65536 8 >/dev/null
		$F --rw=write --bs=1M --size=256M >/dev/null
		$F --rw=randwrite --bs=4k --size=256M --io_size=32M >/dev/null
		s=$($F --rw=write --bs=1M --size=256M --runtime=5 --time_based=1 | bw)
		r=$($F --rw=randwrite --bs=4k --size=256M --runtime=5 --time_based=1 | bw)
		python3 -m cblb.cli remove ab >/dev/null
		rmmod cblb_module
		s0=$($F --rw=write --bs=1M --size=256M --runtime=5 --time_based=1 | bw)
		r0=$($F --rw=randwrite --bs=4k --size=256M --runtime=5 --time_based=1 | bw)
		echo "round $round $ko: seq rewrites $(python3 -c "print(round($s / $s0, 3))")x," \
			"random rewrites $(python3 -c "print(round($r / $r0, 3))")x of no snapshot"
		fstrim /tmp/ab-cat || true
	done
done
