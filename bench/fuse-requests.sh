#!/usr/bin/env bash
# Counts the FUSE requests a command makes, by opcode, with their mean and
# total latency (from the kernel sending a request to its answer), using the
# kernel's fuse tracepoints (Linux 6.15+). Root only; one command at a time
# (the trace buffer is the system's).
#
#   bench/fuse-requests.sh ls -l /mnt/dir
#
# Counts every FUSE mount's requests made while the command runs.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi
T=/sys/kernel/tracing
[ -d "$T/events" ] || mount -t tracefs none "$T"
if [ ! -d "$T/events/fuse" ]; then
    echo "$0: this kernel has no fuse tracepoints" >&2
    exit 1
fi
out=$(mktemp)
cleanup() {
    echo 0 > "$T/tracing_on"
    echo 0 > "$T/events/fuse/fuse_request_send/enable"
    echo 0 > "$T/events/fuse/fuse_request_end/enable"
    rm -f "$out"
}
trap cleanup EXIT
echo 0 > "$T/tracing_on"
echo > "$T/trace"
echo 65536 > "$T/buffer_size_kb"
echo 1 > "$T/events/fuse/fuse_request_send/enable"
echo 1 > "$T/events/fuse/fuse_request_end/enable"
echo 1 > "$T/tracing_on"
rc=0
"$@" > /dev/null || rc=$?
echo 0 > "$T/tracing_on"
cp "$T/trace" "$out"
python3 - "$out" <<'PY'
import collections, re, sys
sent, lat = {}, collections.defaultdict(list)
pat = re.compile(r' (\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?')
lost = 0
for line in open(sys.argv[1]):
    m = pat.search(line)
    if not m:
        lost += 'LOST' in line
        continue
    t, kind, key = float(m.group(1)), m.group(2), (m.group(3), m.group(4))
    if kind == 'send':
        sent[key] = (t, m.group(5))
    elif key in sent:
        t0, op = sent.pop(key)
        lat[op].append(t - t0)
print(f"{'opcode':22} {'count':>8} {'mean':>10} {'total':>10}")
for op, v in sorted(lat.items(), key=lambda x: -sum(x[1])):
    print(f"{op:22} {len(v):8} {1e6*sum(v)/len(v):8.1f}us {1e3*sum(v):8.1f}ms")
if sent:
    print(f"({len(sent)} requests not answered before the command ended)")
if lost:
    print("(trace buffer overflowed: counts are low)")
PY
exit $rc
