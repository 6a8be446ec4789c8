#!/usr/bin/env bash
# Layer store import/verify benchmark: stratafs layer import / image import vs
# umoci unpack vs tar -x, and stratafs layer verify vs sha256sum, on the cached
# Debian image. See bench/README.md ("Import and verify").
#
#   sudo bench/import.sh            # 3 repetitions, a few minutes; writes its section of bench/RESULTS.md
#   bench/import.sh --help
#
# Must run as root (drop_caches, umoci unpack with real owners). The work is
# done by bench/import.py (Python 3 standard library only); this wrapper only
# records the exact command line for RESULTS.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export STRATAFS_BENCH_CMD="$0${*:+ $*}"
exec python3 "$HERE/import.py" "$@"
