#!/usr/bin/env bash
# Benchmark harness entry point: compares native / kernel overlayfs /
# fuse-overlayfs / stratafs on the same layer stacks. See bench/README.md.
#
#   bench/run.sh --quick            # < 5 minutes, writes bench/RESULTS.md
#   bench/run.sh --help             # all options
#
# Must run as root (kernel overlayfs, drop_caches). The work is done by
# bench/bench.py (Python 3 standard library only); this wrapper only records
# the exact command line for RESULTS.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export STRATAFS_BENCH_CMD="$0${*:+ $*}"
exec python3 "$HERE/bench.py" "$@"
