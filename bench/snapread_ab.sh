#!/bin/bash
# Sequential 1 MiB reads of the snapshot against the origin, 10% and 50% of a 64 MiB region
# changed by random 4 KiB writes, on SSD-like null_blk devices (100 us, 500 MiB/s; the origin
# on one, the catalog and its store on another), in the lab guest:
#   scripts/lab --kver 6.12 -- bash bench/snapread_ab.sh [MODULE.ko]
# Prints both bandwidths and the requests each device served per MiB of snapshot read:
# the figure the snapshot read path (kmod/snapimage.c) is built to keep low.
set -e
cd "$(dirname "$0")/.."
KO=${1:-kmod/build/$(uname -r)/cblb_module.ko}
modprobe null_blk nr_devices=3 gb=1 bs=512 memory_backed=1 discard=1 queue_mode=2 irqmode=2 completion_nsec=100000 mbps=500
sleep 1
dd if=/dev/zero of=/dev/nullb0 bs=1M count=128 oflag=direct status=none
mkfs.ext4 -q -F -E nodiscard /dev/nullb1; mkdir -p /tmp/cat; mount /dev/nullb1 /tmp/cat
insmod "$KO" total=4
R=64M
rd() { fio --name=r --filename=$1 --rw=read --bs=1M --iodepth=1 --direct=1 --ioengine=libaio \
	--size=$R --runtime=5 --time_based=1 --output-format=json |
	python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['read']['bw']//1024)"; }
reqs() { awk '{print $1}' /sys/block/$1/stat; }
for frac in ${FRACS:-0.1 0.5}; do
	python3 -m cblb.cli create p /dev/nullb0 >/dev/null
	python3 -m cblb.cli start p /tmp/cat 262144 8 >/dev/null
	fio --name=c --filename=/dev/nullb0 --rw=randwrite --bs=4k --iodepth=8 --direct=1 \
		--ioengine=libaio --size=$R --io_size=$(python3 -c "print(int(64*2**20*$frac)//4096*4096)") \
		--output-format=terse >/dev/null
	o=$(rd /dev/nullb0)
	a0=$(reqs nullb0); b0=$(reqs nullb1)
	s=$(rd /dev/p)
	a1=$(reqs nullb0); b1=$(reqs nullb1)
	mib=$((s * 5 + 1))
	echo "changed $frac: origin $o MiB/s, snapshot $s MiB/s," \
		"ratio $(python3 -c "print(round($s / $o, 3))"); requests per MiB of snapshot read:" \
		"origin $(( (a1 - a0) / mib )), store $(( (b1 - b0) / mib ))"
	python3 -m cblb.cli remove p >/dev/null
done
