#!/usr/bin/env bash
# Command two of the README: install what is missing, then fmt, clippy and the
# whole test suite (cargo nextest). The same gate CI runs: .ci/run.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.ci/run" "$@"
