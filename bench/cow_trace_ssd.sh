#!/bin/bash
# Trace one sequential 1 MiB first-write run on SSD-like null_blk devices (100 us, 500 MiB/s;
# origin, catalog and store each on its own device), in the lab guest:
#   scripts/lab --kver 6.12 -- bash bench/cow_trace_ssd.sh [MODULE.ko]
# Prints fio's bandwidth and latency without a snapshot, with one (untraced) and with one
# traced; the trace (cblb_cow and block_rq_* events) goes to lab-out/ssdtrace.txt. This is
# how the store-write throttling of kmod/doc/COW.md step 4 was found.
set -e
cd "$(dirname "$0")/.."
KO=${1:-kmod/build/$(uname -r)/cblb_module.ko}
modprobe null_blk nr_devices=3 gb=1 bs=512 memory_backed=1 discard=1 queue_mode=2 irqmode=2 completion_nsec=100000 mbps=500
sleep 1
for d in nullb0 nullb1 nullb2; do echo 4194304 > /sys/block/$d/queue/discard_max_bytes; done
cat /sys/block/nullb0/queue/max_sectors_kb /sys/block/nullb0/queue/max_hw_sectors_kb /sys/block/nullb0/queue/max_segments
dd if=/dev/zero of=/dev/nullb0 bs=1M count=1000 oflag=direct status=none
mkfs.ext4 -q -F -E nodiscard /dev/nullb1; mkdir -p /tmp/cat; mount /dev/nullb1 /tmp/cat
insmod "$KO" total=4
FIO="fio --name=w --filename=/dev/nullb0 --rw=write --bs=1M --iodepth=1 --direct=1 --ioengine=libaio --runtime=5 --output-format=json"
bw() { python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; print(j['bw']//1024, 'MiB/s clat mean us', j['clat_ns']['mean']//1000, 'p99', j['clat_ns']['percentile']['99.000000']//1000)"; }
echo "none: $($FIO --size=256M --time_based=1 --offset=0 | bw)"
python3 -m cblb.cli create p /dev/nullb0
python3 -m cblb.cli start p /tmp/cat 262144 8 || true
echo "cblb untraced: $($FIO --size=384M --offset=256M | bw)"
T=/sys/kernel/tracing
echo 1 > $T/events/cblb/cblb_cow/enable
echo 1 > $T/events/block/block_rq_issue/enable
echo 1 > $T/events/block/block_rq_complete/enable
echo 1 > $T/events/block/block_bio_queue/enable
echo > $T/trace
echo "cblb: $($FIO --size=200M --offset=640M | bw)"
echo 0 > $T/events/enable
cp $T/trace lab-out/ssdtrace.txt
python3 -m cblb.cli remove p || true
