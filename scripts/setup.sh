#!/usr/bin/env bash
# Prepare this machine to build, test and demo stratafs.
#
# Idempotent: installs only what is missing, runs `apt-get update` only when
# something has to be installed, and prints just "setup: ok" when all is in place.
#
#   - Debian packages: fuse3 (fusermount3), attr (getfattr/setfattr),
#     debootstrap, fuse-overlayfs (a peer to test against), util-linux
#     (mountpoint, unshare), a C toolchain for linking Rust binaries, and the
#     libfuse3 headers when Cargo.toml asks fuser to link libfuse.
#   - cargo-nextest (via `cargo install --locked`) if it is missing.
#   - rustfmt and clippy components if they are missing and rustup is there.
#   - /dev/fuse mode 0666 when run as root, so rootless tests can open it;
#     an unprivileged account (stratafs-test) and user_allow_other in
#     /etc/fuse.conf for the rootless tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
packages=(
    fuse3          # fusermount3, /etc/fuse.conf
    attr           # getfattr, setfattr (opaque/whiteout xattrs)
    debootstrap    # building real root filesystems for tests/benchmarks
    fuse-overlayfs # the peer implementation we compare against
    util-linux     # mountpoint, unshare, mount, setpriv
    bubblewrap     # a real container client over a stratafs root (tests)
    umoci          # OCI image layouts: building, unpacking (store tests, bench)
    skopeo         # copying images between OCI layouts and docker archives (store tests)
    zstd           # .tar.zst layers for the store's round-trip tests
    fio            # bench/run.sh: 4k random read/write IOPS
    gcc            # linker for rustc
    libc6-dev
)
# fuser is pure Rust by default; only its libfuse features need the C library.
if grep -Eq 'libfuse' "$ROOT/Cargo.toml" 2>/dev/null; then
    packages+=(pkg-config libfuse3-dev)
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------------------
# Rust tooling
# ---------------------------------------------------------------------------
if [[ -d "$HOME/.cargo/bin" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install a Rust toolchain first"

for component in rustfmt clippy; do
    sub="fmt"
    [[ "$component" == clippy ]] && sub="clippy"
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding rustup component $component"
            rustup component add "$component"
        else
            die "cargo $sub is missing and rustup is not available to add $component"
        fi
    fi
done

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# ---------------------------------------------------------------------------
# /dev/fuse
# ---------------------------------------------------------------------------
if [[ ! -e /dev/fuse ]]; then
    if [[ "$(id -u)" -eq 0 ]]; then
        modprobe fuse 2>/dev/null || true
        [[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229 || true
    fi
    [[ -e /dev/fuse ]] || die "/dev/fuse does not exist; FUSE is unavailable on this machine"
fi
if [[ "$(id -u)" -eq 0 ]]; then
    mode="$(stat -c '%a' /dev/fuse)"
    if [[ "$mode" != 666 ]]; then
        log "chmod 0666 /dev/fuse (was $mode)"
        chmod 0666 /dev/fuse
    fi
fi

# ---------------------------------------------------------------------------
# An unprivileged account for the rootless tests
# ---------------------------------------------------------------------------
if [[ "$(id -u)" -eq 0 ]] && ! id stratafs-test >/dev/null 2>&1; then
    log "adding the unprivileged user stratafs-test"
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin stratafs-test
fi

# Rootless tests mount with allow_other so that root can compare the view.
if [[ "$(id -u)" -eq 0 ]] && ! grep -qx 'user_allow_other' /etc/fuse.conf 2>/dev/null; then
    log "enabling user_allow_other in /etc/fuse.conf"
    echo user_allow_other >> /etc/fuse.conf
fi

log "ok"
