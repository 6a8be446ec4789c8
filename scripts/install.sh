#!/usr/bin/env bash
# Install stratafs system-wide: the binary into $PREFIX/bin (default
# /usr/local) and the mount(8) helper /sbin/mount.fuse.stratafs, so that
# `mount -t fuse.stratafs` and /etc/fstab entries work. Needs root.
#
#   bash scripts/install.sh            # builds the release binary first
#   PREFIX=/opt/stratafs bash scripts/install.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-/usr/local}"
HELPER_DIR="${HELPER_DIR:-/sbin}"

[[ "$(id -u)" -eq 0 ]] || { echo "install: run as root" >&2; exit 1; }
bash "$ROOT/scripts/setup.sh"
(cd "$ROOT" && cargo build --release --quiet)
install -D -m 0755 "$ROOT/target/release/stratafs" "$PREFIX/bin/stratafs"
ln -sf "$PREFIX/bin/stratafs" "$HELPER_DIR/mount.fuse.stratafs"
echo "install: $PREFIX/bin/stratafs and $HELPER_DIR/mount.fuse.stratafs"
