#!/usr/bin/env bash
# stratafs demo: build a three-layer image stack, mount it merged, look around.
#
#   bash scripts/demo.sh
#
# Runs scripts/setup.sh, builds the release binary, creates a sample stack in a
# temporary directory, prints each layer (markers visible), mounts the stack
# with `stratafs mount`, shows the merged view (markers hidden, overrides
# visible), checks what it should contain, shows that writes fail with EROFS,
# unmounts and cleans up (also on error or Ctrl-C).
#
# Layers (top first, the order `stratafs mount --lower` takes them):
#   top   OCI dialect:     `.wh.NAME` whiteout, `.wh..wh..opq` opaque marker
#   mid   overlay dialect: char-device 0/0 whiteout, trusted.overlay.opaque=y
#   base  a tiny root filesystem
#
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/stratafs"
export LC_ALL=C

if [[ -t 1 ]]; then
    B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'
else
    B='' G='' R='' Y='' N=''
fi

section() { printf '\n%s==== %s ====%s\n\n' "$B" "$*" "$N"; }
note() { printf '%s%s%s\n' "$Y" "$*" "$N"; }
# Print a command as a user would type it, then run it.
run() { printf '%s$ %s%s\n' "$B" "$*" "$N"; "$@"; }
# Print a shell command line (pipes allowed), then run it with bash.
run_sh() { printf '%s$ %s%s\n' "$B" "$1" "$N"; bash -c "$1"; }

passed=0
failed=0
pass() { passed=$((passed + 1)); printf '  %sPASS%s %s\n' "$G" "$N" "$*"; }
fail() { failed=$((failed + 1)); printf '  %sFAIL%s %s\n' "$R" "$N" "$*"; }

WORK=""
MNT=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cd /
    if [[ -n "$MNT" ]] && mountpoint -q "$MNT" 2>/dev/null; then
        note "cleanup: $MNT is still mounted; unmounting"
        "$BIN" umount "$MNT" 2>/dev/null ||
            fusermount3 -u "$MNT" 2>/dev/null ||
            umount -l "$MNT" 2>/dev/null || true
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$MNT" ]] && mountpoint -q "$MNT" 2>/dev/null; then
            note "cleanup: could not unmount $MNT; leaving $WORK in place"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
section "1. Setup and build"
# ---------------------------------------------------------------------------
run bash "$ROOT/scripts/setup.sh"
(cd "$ROOT" && run cargo build --release)
[[ -x "$BIN" ]] || { echo "demo: $BIN was not built" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/stratafs-demo.XXXXXX")"
BASE="$WORK/base"
MID="$WORK/mid"
TOP="$WORK/top"
MNT="$WORK/merged"
mkdir -p "$BASE" "$MID" "$TOP" "$MNT"

# put FILE CONTENT [MODE]: create a file (and its parents) with that content.
put() {
    mkdir -p "$(dirname "$1")"
    printf '%s\n' "$2" >"$1"
    chmod "${3:-0644}" "$1"
}

# ---------------------------------------------------------------------------
section "2. Building the sample image stack in $WORK"
# ---------------------------------------------------------------------------

# base: a tiny root filesystem.
put "$BASE/etc/os-release" 'PRETTY_NAME="Strata Demo Linux 1.0 (base layer)"
NAME="Strata Demo Linux"
VERSION_ID="1.0"
ID=strata-demo'
put "$BASE/etc/hostname" 'base'
put "$BASE/etc/motd" 'Welcome! (this message comes from the base layer)'
put "$BASE/etc/passwd" 'root:x:0:0:root:/root:/bin/sh'
put "$BASE/etc/group" 'root:x:0:'
put "$BASE/bin/sh" '#!/bin/sh
echo "demo placeholder for a shell"' 0755
put "$BASE/bin/ls" '#!/bin/sh
echo "demo placeholder for ls"' 0755
put "$BASE/usr/lib/libdemo.so.1" 'not really a shared library'
ln -s usr/lib "$BASE/lib"
put "$BASE/usr/share/doc/base-files/README" 'Base files of Strata Demo Linux.'
put "$BASE/usr/share/doc/base-files/copyright" 'Public domain.'
put "$BASE/usr/share/doc/legacy-tool/README" 'legacy-tool: removed by the top layer.'
put "$BASE/var/cache/apt/pkgcache.bin" 'old package cache'
put "$BASE/var/cache/apt/archives/legacy-tool_0.9_amd64.deb" 'old archive'
put "$BASE/var/log/dpkg.log" 'base: dpkg log'
put "$BASE/var/log/apt/history.log" 'base: apt history'
mkdir -p "$BASE/tmp" "$BASE/root"
chmod 1777 "$BASE/tmp"
chmod 0700 "$BASE/root"

# mid: overlay dialect (what kernel overlayfs writes into an upper layer).
put "$MID/etc/os-release" 'PRETTY_NAME="Strata Demo Linux 1.1 (mid layer)"
NAME="Strata Demo Linux"
VERSION_ID="1.1"
ID=strata-demo'
put "$MID/usr/bin/hello" '#!/bin/sh
echo "hello from the mid layer"' 0755
put "$MID/usr/share/doc/hello/README" 'hello: added by the mid layer.'
# Whiteout for etc/motd: a character device 0/0 (needs CAP_MKNOD). Without it,
# fall back to the other overlay whiteout form: a zero-size file carrying the
# user.overlay.whiteout xattr.
if mknod "$MID/etc/motd" c 0 0 2>/dev/null; then
    mid_whiteout="char device 0/0"
else
    : >"$MID/etc/motd"
    setfattr -n user.overlay.whiteout -v y "$MID/etc/motd"
    mid_whiteout="zero-size file + user.overlay.whiteout (mknod not permitted)"
fi
# Opaque var/cache/apt: the base layer's cache disappears under it.
put "$MID/var/cache/apt/srcpkgcache.bin" 'fresh source package cache (mid layer)'
if setfattr -n trusted.overlay.opaque -v y "$MID/var/cache/apt" 2>/dev/null; then
    mid_opaque="trusted.overlay.opaque=y"
else
    setfattr -n user.overlay.opaque -v y "$MID/var/cache/apt"
    mid_opaque="user.overlay.opaque=y (trusted.* xattrs need CAP_SYS_ADMIN)"
fi

# top: OCI image-spec dialect (what `docker save` / OCI layer tarballs carry).
put "$TOP/etc/hostname" 'strata-demo'
put "$TOP/app/config.toml" '# added by the top layer
greeting = "hello"'
mkdir -p "$TOP/usr/share/doc"
: >"$TOP/usr/share/doc/.wh.legacy-tool"
mkdir -p "$TOP/var/log"
: >"$TOP/var/log/.wh..wh..opq"
put "$TOP/var/log/app.log" 'top: the only log left after the opaque marker'

echo "base  a tiny root filesystem"
echo "mid   overlay dialect: whiteout = $mid_whiteout"
echo "      opaque = $mid_opaque"
echo "top   OCI dialect: .wh.NAME whiteout, .wh..wh..opq opaque marker"

# xattr NAME PATH: print the value of an xattr (without following symlinks).
xattr() { getfattr -h --absolute-names --only-values -n "$1" "$2" 2>/dev/null || true; }

# show_layer DIR: every entry with type/mode, annotating overlay markers.
show_layer() {
    local dir="$1" p rel name kind what attr v
    while IFS= read -r p; do
        rel="${p#"$dir"/}"
        name="${rel##*/}"
        kind="$(stat -c '%A' "$p")"
        what=""
        case "$kind" in
        c*)
            if [[ "$(stat -c '%t:%T' "$p")" == 0:0 ]]; then
                what="<- whiteout (char 0/0): hides ${rel} below"
            fi
            ;;
        d*)
            for attr in trusted.overlay.opaque user.overlay.opaque user.fuseoverlayfs.opaque; do
                v="$(xattr "$attr" "$p")"
                if [[ "$v" == y ]]; then
                    what="<- opaque ($attr=y): hides everything below"
                fi
            done
            ;;
        l*)
            what="-> $(readlink "$p")"
            ;;
        -*)
            if [[ "$name" == .wh..wh..opq ]]; then
                what="<- OCI opaque marker: ${rel%/*}/ hides everything below"
            elif [[ "$name" == .wh.* ]]; then
                what="<- OCI whiteout: hides ${rel%/*}/${name#.wh.} below"
            elif [[ -n "$(xattr user.overlay.whiteout "$p")$(xattr trusted.overlay.whiteout "$p")" ]]; then
                what="<- whiteout (overlay.whiteout xattr): hides ${rel} below"
            fi
            ;;
        esac
        if [[ -n "$what" ]]; then
            printf '  %s  %-48s %s\n' "$kind" "$rel" "$what"
        else
            printf '  %s  %s\n' "$kind" "$rel"
        fi
    done < <(find "$dir" -mindepth 1 | sort)
}

section "3. The layers as stored on disk (markers visible)"
for layer in top mid base; do
    printf '%s--- %s/ ---%s\n' "$B" "$layer" "$N"
    show_layer "$WORK/$layer"
    echo
done

# ---------------------------------------------------------------------------
section "4. Mounting the merged view"
# ---------------------------------------------------------------------------
cd "$WORK"
run "$BIN" mount --lower top --lower mid --lower base merged
for _ in $(seq 50); do
    mountpoint -q "$MNT" && break
    sleep 0.1
done
if ! mountpoint -q "$MNT"; then
    echo "demo: $MNT is not a mount point after 'stratafs mount' returned" >&2
    exit 1
fi
run findmnt "$MNT"

# ---------------------------------------------------------------------------
section "5. The merged view (markers hidden, overrides visible)"
# ---------------------------------------------------------------------------
cd "$MNT"
run ls -la
echo
run ls -la etc usr/share/doc var/cache/apt var/log
echo
run_sh "find . -printf '%M  %p\\n' | sort -k2"
echo
run cat etc/os-release
run cat etc/hostname
cd "$WORK"

# ---------------------------------------------------------------------------
section "6. Checks"
# ---------------------------------------------------------------------------
expect_content() { # PATH EXPECTED-FIRST-LINE WHY
    local got
    if got="$(head -n1 "$MNT/$1" 2>&1)" && [[ "$got" == "$2" ]]; then
        pass "$1: $3"
    else
        fail "$1: $3 (got: $got)"
    fi
}
expect_absent() { # PATH WHY
    if [[ -e "$MNT/$1" || -L "$MNT/$1" ]]; then
        fail "$1 should not exist: $2"
    else
        pass "$1 is absent: $2"
    fi
}
expect_listing() { # DIR "NAMES..." WHY
    local got
    got="$(cd "$MNT/$1" && find . -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"
    if [[ "${got% }" == "$2" ]]; then
        pass "$1/ contains exactly: $2 ($3)"
    else
        fail "$1/ should contain exactly '$2' ($3), got '${got% }'"
    fi
}

expect_content etc/os-release 'PRETTY_NAME="Strata Demo Linux 1.1 (mid layer)"' "mid overrides base"
expect_content etc/hostname 'strata-demo' "top overrides base"
expect_content etc/passwd 'root:x:0:0:root:/root:/bin/sh' "base shows through"
expect_content usr/bin/hello '#!/bin/sh' "added by mid"
expect_content app/config.toml '# added by the top layer' "added by top"
expect_absent etc/motd "char 0/0 whiteout in mid"
expect_absent usr/share/doc/legacy-tool "OCI .wh.legacy-tool in top"
expect_listing usr/share/doc "base-files hello" "whiteout applied, layers merged"
expect_listing var/cache/apt "srcpkgcache.bin" "opaque xattr in mid"
expect_listing var/log "app.log" "OCI .wh..wh..opq in top"
expect_listing . "app bin etc lib root tmp usr var" "top-level directory merged from all layers"
if [[ "$(readlink "$MNT/lib")" == usr/lib && -f "$MNT/lib/libdemo.so.1" ]]; then
    pass "lib -> usr/lib symlink resolves inside the mount"
else
    fail "lib -> usr/lib symlink does not resolve inside the mount"
fi
markers="$(cd "$MNT" && find . -name '.wh.*' | tr '\n' ' ')"
if [[ -z "$markers" ]]; then
    pass "no .wh.* marker is visible anywhere in the merged view"
else
    fail "markers visible in the merged view: $markers"
fi
chardevs="$(cd "$MNT" && find . -type c | tr '\n' ' ')"
if [[ -z "$chardevs" ]]; then
    pass "no char-device whiteout is visible in the merged view"
else
    fail "char devices visible in the merged view: $chardevs"
fi
overlay_xattrs="$(getfattr -R -h -d -m '^(trusted|user)\.(overlay|fuseoverlayfs|stratafs)\.' --absolute-names "$MNT" 2>/dev/null | grep -c '=' || true)"
if [[ "$overlay_xattrs" == 0 ]]; then
    pass "no overlay/stratafs xattr is visible in the merged view"
else
    fail "$overlay_xattrs overlay xattr(s) visible in the merged view"
fi

# ---------------------------------------------------------------------------
section "7. The merged view is read-only"
# ---------------------------------------------------------------------------
expect_erofs() { # DESCRIPTION COMMAND...
    local desc="$1" out
    shift
    printf '%s$ %s%s\n' "$B" "$desc" "$N"
    if out="$(cd "$MNT" && "$@" 2>&1)"; then
        fail "'$desc' succeeded on a read-only mount"
    else
        printf '%s\n' "$out" | sed 's/^/    /'
        if [[ "$out" == *"Read-only file system"* ]]; then
            pass "'$desc' fails with EROFS"
        else
            fail "'$desc' failed, but not with 'Read-only file system'"
        fi
    fi
}
expect_erofs "touch new-file" touch new-file
expect_erofs "echo hi >> etc/os-release" bash -c 'echo hi >>etc/os-release'
expect_erofs "mkdir new-dir" mkdir new-dir
expect_erofs "rm -f etc/passwd" rm -f etc/passwd
if [[ "$(cat "$BASE/etc/passwd")" == 'root:x:0:0:root:/root:/bin/sh' && ! -e "$TOP/new-file" ]]; then
    pass "layers on disk are unchanged"
else
    fail "a layer on disk was modified"
fi

# ---------------------------------------------------------------------------
section "8. Unmounting"
# ---------------------------------------------------------------------------
run "$BIN" umount merged
if mountpoint -q "$MNT"; then
    fail "$MNT is still mounted after 'stratafs umount'"
else
    pass "$MNT is no longer a mount point"
fi

section "Result"
echo "demo: $passed passed, $failed failed"
if ((failed)); then
    exit 1
fi
echo "All good. Temporary files in $WORK are removed on exit."
