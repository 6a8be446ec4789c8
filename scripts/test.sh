#!/usr/bin/env bash
# stratafs test gate: what CI runs (via .ci/run) and what to run before pushing.
#
#   bash scripts/test.sh
#
# 1. scripts/setup.sh (packages, cargo-nextest, /dev/fuse permissions)
# 2. cargo fmt --check
# 3. cargo clippy --all-targets -- -D warnings
# 4. cargo nextest run --no-fail-fast (profile "ci" when $CI is set, else
#    "default"; both in .config/nextest.toml)
#
# Every step runs even if an earlier one failed, so one run shows everything
# that is wrong; nextest runs last so that its summary line ends the output.
# Exits non-zero if any step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -d "$HOME/.cargo/bin" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step() { printf '\n==== %s ====\n' "$*"; }

failed=()

step "setup"
bash scripts/setup.sh

step "cargo fmt --check"
if cargo fmt --all -- --check; then
    echo "fmt: ok"
else
    failed+=("cargo fmt --check")
    echo "fmt: FAILED (run 'cargo fmt' to fix)"
fi

step "cargo clippy --all-targets -- -D warnings"
if ! cargo clippy --all-targets -- -D warnings; then
    failed+=("cargo clippy")
    echo "clippy: FAILED"
fi

if ((${#failed[@]})); then
    # Said now, because nothing may follow nextest's summary line.
    echo
    echo "test.sh will exit non-zero whatever the tests do; failed so far: ${failed[*]}"
fi

profile=default
if [[ -n "${CI:-}" ]]; then
    profile=ci
fi

step "cargo nextest run --no-fail-fast --profile $profile"
nextest_rc=0
cargo nextest run --no-fail-fast --profile "$profile" || nextest_rc=$?

if ((nextest_rc != 0)); then
    exit "$nextest_rc"
fi
if ((${#failed[@]})); then
    exit 1
fi
exit 0
