#!/usr/bin/env bash
# stratafs demo: build a three-layer image stack, mount it merged, look around.
#
#   bash scripts/demo.sh
#
# Runs scripts/setup.sh, builds the release binary, creates a sample stack in a
# temporary directory, prints each layer (markers visible), mounts the stack
# with `stratafs mount`, shows the merged view (markers hidden, overrides
# visible), checks what it should contain, shows that writes fail with EROFS and
# unmounts. Then the writable part: mounts the same stack with --upper/--work,
# changes things as a container would (copy-up, whiteouts, opaque directory,
# rename), shows the upper and work directories on disk, checks that the lower
# layers are unchanged and inode numbers survive copy-up, unmounts, and mounts
# the upper directory read-only on top of the stack, with stratafs and (as root)
# kernel overlayfs, to show that the result persists and both agree. Cleans up
# every mount and the temporary directory on exit, error or Ctrl-C.
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
# Every mount point the demo mounts on (stratafs or kernel overlay), added
# before the mount command runs; cleanup unmounts them in reverse order.
MOUNTS=()
# is_mounted DIR: from the mount table, so that a FUSE mount whose daemon died
# (stat fails with ENOTCONN, `mountpoint` says no) still counts.
is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }
cleanup() {
    local rc=$? i dir busy=""
    trap - EXIT INT TERM
    cd /
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        dir="${MOUNTS[i]}"
        if is_mounted "$dir"; then
            note "cleanup: $dir is still mounted; unmounting"
            "$BIN" umount "$dir" 2>/dev/null ||
                fusermount3 -u "$dir" 2>/dev/null ||
                umount "$dir" 2>/dev/null ||
                umount -l "$dir" 2>/dev/null || true
            if is_mounted "$dir"; then
                busy+=" $dir"
            fi
        fi
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$busy" ]]; then
            note "cleanup: could not unmount$busy; leaving $WORK in place"
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
MOUNTS+=("$MNT")

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
        # Copied up by a writable mount: the private origin xattr (stratafs
        # reports it as st_ino, so the inode number survives the copy-up).
        for attr in trusted.stratafs.origin user.stratafs.origin; do
            v="$(xattr "$attr" "$p")"
            if [[ -n "$v" ]]; then
                what="${what:+$what; }<- copied up ($attr=$v)"
            fi
        done
        for ns in trusted user; do
            if getfattr -h --absolute-names -n "$ns.overlay.metacopy" "$p" >/dev/null 2>&1; then
                what="${what:+$what; }<- metadata only: data stays at $(xattr "$ns.overlay.redirect" "$p") below"
            fi
            if [[ -d "$p" && -n "$(xattr "$ns.overlay.redirect" "$p")" ]]; then
                what="${what:+$what; }<- renamed: lower contents at $(xattr "$ns.overlay.redirect" "$p")"
            fi
        done
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
# wait_mounted DIR: the mount command has returned; make sure DIR is mounted.
wait_mounted() {
    for _ in $(seq 50); do
        mountpoint -q "$1" && return 0
        sleep 0.1
    done
    echo "demo: $1 is not a mount point after the mount command returned" >&2
    exit 1
}
wait_mounted "$MNT"
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
# The expect_* helpers look at $VIEW: the read-only mount here, the writable
# container view in section 13.
VIEW="$MNT"
expect_content() { # PATH EXPECTED-FIRST-LINE WHY
    local got
    if got="$(head -n1 "$VIEW/$1" 2>&1)" && [[ "$got" == "$2" ]]; then
        pass "$1: $3"
    else
        fail "$1: $3 (got: $got)"
    fi
}
expect_absent() { # PATH WHY
    if [[ -e "$VIEW/$1" || -L "$VIEW/$1" ]]; then
        fail "$1 should not exist: $2"
    else
        pass "$1 is absent: $2"
    fi
}
expect_listing() { # DIR "NAMES..." WHY
    local got
    got="$(cd "$VIEW/$1" && find . -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"
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
expect_no_markers() { # no whiteout/opaque marker or private xattr shows in $VIEW
    local markers chardevs overlay_xattrs
    markers="$(cd "$VIEW" && find . -name '.wh.*' | tr '\n' ' ')"
    if [[ -z "$markers" ]]; then
        pass "no .wh.* marker is visible anywhere in the merged view"
    else
        fail "markers visible in the merged view: $markers"
    fi
    chardevs="$(cd "$VIEW" && find . -type c | tr '\n' ' ')"
    if [[ -z "$chardevs" ]]; then
        pass "no char-device whiteout is visible in the merged view"
    else
        fail "char devices visible in the merged view: $chardevs"
    fi
    overlay_xattrs="$(getfattr -R -h -d -m '^(trusted|user)\.(overlay|fuseoverlayfs|stratafs)\.' --absolute-names "$VIEW" 2>/dev/null | grep -c '=' || true)"
    if [[ "$overlay_xattrs" == 0 ]]; then
        pass "no overlay/stratafs xattr is visible in the merged view"
    else
        fail "$overlay_xattrs overlay xattr(s) visible in the merged view"
    fi
}
expect_no_markers

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

# ===========================================================================
# The writable part: the same stack with an upper layer, as a container runs.
# ===========================================================================
UPPER="$WORK/upper"        # --upper: receives every change
WORKDIR="$WORK/work"       # --work: stratafs' scratch space, same filesystem as UPPER
CMNT="$WORK/container"     # the container's writable view
ROVIEW="$WORK/view"        # UPPER read-only on top of the stack, by stratafs
KTOP="$WORK/top-kernel"    # top converted to the overlay dialect, for the kernel
KVIEW="$WORK/view-kernel"  # the same stack as ROVIEW, by kernel overlayfs
mkdir -p "$UPPER" "$WORKDIR" "$CMNT" "$ROVIEW" "$KVIEW"
MOUNTS+=("$CMNT" "$ROVIEW" "$KVIEW")

# fingerprint DIR: one hash over every entry (path, type, mode, owner, size,
# mtime, ctime, symlink target), every file's content and every xattr.
fingerprint() {
    (
        cd "$1"
        find . -printf '%p %y %m %U:%G %s %T@ %C@ %l\n' | sort
        find . -type f -exec sha256sum {} + | sort -k2
        getfattr -R -h -d -m - . 2>/dev/null || true
    ) | sha256sum | cut -c1-16
}

# listing DIR: what a reader of DIR sees: path, type, mode, size and symlink
# target of every entry, then a checksum of every file's content. Directory
# sizes are left out: they are whatever the layer's filesystem says (tmpfs
# counts entries), not part of the merge.
listing() {
    (
        cd "$1"
        find . \( -type d -printf '%p %y %m\n' \) -o \
            \( -type l -printf '%p %y %m %s -> %l\n' \) -o \
            -printf '%p %y %m %s\n' | sort
        find . -type f -exec sha256sum {} + | sort -k2
    )
}

# ---------------------------------------------------------------------------
section "9. A writable container view"
# ---------------------------------------------------------------------------
note "The same three layers, plus an upper layer: every change goes to upper/;"
note "work/ is scratch space on the same filesystem. The layers are never written."
declare -A before
for layer in top mid base; do
    before[$layer]="$(fingerprint "$WORK/$layer")"
    printf '  fingerprint of %-5s %s\n' "$layer/" "${before[$layer]}"
done
echo
cd "$WORK"
run "$BIN" mount --lower top --lower mid --lower base --upper upper --work work container
wait_mounted "$CMNT"
run findmnt "$CMNT"

# ---------------------------------------------------------------------------
section "10. The container changes things"
# ---------------------------------------------------------------------------
# in_container COMMAND-LINE: print it and run it in the writable view; a
# failure counts as a failed check.
in_container() {
    printf '%s$ %s%s\n' "$B" "$1" "$N"
    if ! (cd "$CMNT" && bash -c "$1"); then
        fail "'$1' failed in the writable view"
    fi
}
ino_of() { stat -c %i "$CMNT/$1" 2>/dev/null || echo '?'; }
# Inode numbers before the copy-ups below.
ino_passwd="$(ino_of etc/passwd)"
ino_hello="$(ino_of usr/bin/hello)"
ino_config="$(ino_of app/config.toml)"
cd "$CMNT"
note "# append to a base-layer file: copied up to upper/ first"
in_container "echo 'app:x:1000:1000:demo app:/app:/bin/sh' >>etc/passwd"
note "# chmod a mid-layer file: a metadata-only copy-up, its data stays below"
in_container "chmod 0750 usr/bin/hello"
note "# delete a file that top and base have: a whiteout"
in_container "rm etc/hostname"
note "# delete a directory merged from base and mid: one whiteout for the directory"
in_container "rm -rf var/cache"
note "# delete a directory merged from all three layers, then create it again: opaque"
in_container "rm -rf usr/share/doc"
in_container "mkdir usr/share/doc && echo 'written by the container' >usr/share/doc/NOTES"
note "# a new directory and file: only in upper/"
in_container "mkdir -p srv/www && echo '<h1>hello from the container</h1>' >srv/www/index.html"
note "# rename a top-layer file: copied up under the new name, a whiteout at the old one"
in_container "mv app/config.toml app/settings.toml"

# ---------------------------------------------------------------------------
section "11. The merged view after the changes"
# ---------------------------------------------------------------------------
# (|| true: a failure here shows in the output and in the checks below)
run ls -la etc usr/bin usr/share/doc var app srv/www || true
echo
run_sh "find . -printf '%M  %p\\n' | sort -k2" || true
echo
run cat etc/passwd || true
cd "$WORK"

# ---------------------------------------------------------------------------
section "12. upper/ and work/ on disk"
# ---------------------------------------------------------------------------
printf '%s--- upper/ ---%s\n' "$B" "$N"
show_layer "$UPPER"
echo
run_sh "getfattr -R -h -d -m 'overlay|stratafs' upper" || true
printf '%s--- work/ ---%s\n' "$B" "$N"
run ls -la work

# ---------------------------------------------------------------------------
section "13. Checks (writable view)"
# ---------------------------------------------------------------------------
VIEW="$CMNT"
expect_content etc/passwd 'root:x:0:0:root:/root:/bin/sh' "copy-up kept the base content"
if [[ "$(tail -n1 "$CMNT/etc/passwd" 2>&1)" == 'app:x:1000:1000:demo app:/app:/bin/sh' ]]; then
    pass "etc/passwd: the appended line is there"
else
    fail "etc/passwd: the appended line is missing"
fi
if [[ "$(stat -c %a "$CMNT/usr/bin/hello" 2>&1)" == 750 ]] &&
    [[ "$(head -n1 "$CMNT/usr/bin/hello")" == '#!/bin/sh' ]]; then
    pass "usr/bin/hello: mode 750 after chmod, content kept"
else
    fail "usr/bin/hello: expected mode 750 and the mid content, got $(stat -c %a "$CMNT/usr/bin/hello" 2>&1)"
fi
expect_absent etc/hostname "deleted by the container"
expect_absent var/cache "rm -rf by the container"
expect_listing var "log" "var/cache deleted"
expect_listing usr/share/doc "NOTES" "recreated directory is opaque: the layers' docs stay hidden"
expect_content srv/www/index.html '<h1>hello from the container</h1>' "created by the container"
expect_absent app/config.toml "renamed away"
expect_content app/settings.toml '# added by the top layer' "renamed, content kept"
expect_no_markers
for f in "etc/passwd $ino_passwd appended" "usr/bin/hello $ino_hello chmod" "app/settings.toml $ino_config renamed from app/config.toml"; do
    read -r path ino why <<<"$f"
    now="$(ino_of "$path")"
    if [[ "$now" == "$ino" && "$ino" != '?' ]]; then
        pass "$path ($why): st_ino $now is the one before the copy-up"
    else
        fail "$path ($why): st_ino $now, before the copy-up it was $ino"
    fi
done
origin="$(xattr trusted.stratafs.origin "$UPPER/etc/passwd")$(xattr user.stratafs.origin "$UPPER/etc/passwd")"
if [[ "$origin" == "$ino_passwd" ]]; then
    pass "upper/etc/passwd records the number it had in base/ as its origin ($origin)"
else
    fail "upper/etc/passwd: origin xattr '$origin', expected $ino_passwd"
fi

# is_whiteout REL: UPPER has a whiteout at REL (char 0/0, or OCI .wh.NAME).
is_whiteout() {
    local p="$UPPER/$1"
    { [[ -c "$p" ]] && [[ "$(stat -c '%t:%T' "$p")" == 0:0 ]]; } ||
        [[ -f "$(dirname "$p")/.wh.$(basename "$p")" ]]
}
# is_opaque REL: UPPER's directory REL is opaque (xattr, or OCI .wh..wh..opq).
is_opaque() {
    local p="$UPPER/$1"
    [[ "$(xattr trusted.overlay.opaque "$p")" == y || "$(xattr user.overlay.opaque "$p")" == y ||
        -f "$p/.wh..wh..opq" ]]
}
for w in etc/hostname var/cache app/config.toml; do
    if is_whiteout "$w"; then
        pass "upper/ has a whiteout for $w"
    else
        fail "upper/ has no whiteout for $w"
    fi
done
if is_opaque usr/share/doc; then
    pass "upper/usr/share/doc is marked opaque"
else
    fail "upper/usr/share/doc is not marked opaque"
fi
# upper/ holds exactly what changed: reading copies nothing up. The names are
# normalised so that both whiteout dialects give the same list.
upper_names="$(cd "$UPPER" && find . -mindepth 1 -printf '%P\n' |
    grep -v '\.wh\.\.wh\.\.opq$' | sed 's/\.wh\.//' | sort | tr '\n' ' ')"
expected_upper='app app/config.toml app/settings.toml etc etc/hostname etc/passwd srv srv/www srv/www/index.html usr usr/bin usr/bin/hello usr/share usr/share/doc usr/share/doc/NOTES var var/cache'
if [[ "${upper_names% }" == "$expected_upper" ]]; then
    pass "upper/ holds exactly the changed entries, their parents and the markers"
else
    fail "upper/ should hold '$expected_upper', holds '${upper_names% }'"
fi
expect_work_clean() { # WHEN EXPECTED
    local got
    got="$(cd "$WORKDIR" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | tr '\n' ' ')"
    if [[ "${got% }" == "$2" ]]; then
        pass "work/ holds only $2 ($1)"
    else
        fail "work/ should hold only $2 ($1), holds '${got% }'"
    fi
}
# While mounted, the one whiteout the upper's whiteouts are hard links of.
expect_work_clean "after the changes" "#whiteout .stratafs.lock"
container_listing="$(listing "$CMNT")"
container_entries="$(find "$CMNT" | wc -l)"

# ---------------------------------------------------------------------------
section "14. Unmounting the writable view; the layers are unchanged"
# ---------------------------------------------------------------------------
run "$BIN" umount container
if is_mounted "$CMNT"; then
    fail "$CMNT is still mounted after 'stratafs umount'"
else
    pass "$CMNT is no longer a mount point"
fi
expect_work_clean "after unmount" ".stratafs.lock"
for layer in top mid base; do
    after="$(fingerprint "$WORK/$layer")"
    if [[ "$after" == "${before[$layer]}" ]]; then
        pass "$layer/ unchanged: fingerprint $after before and after"
    else
        fail "$layer/ was modified: fingerprint ${before[$layer]} before, $after after"
    fi
done
if [[ "$(cat "$BASE/etc/passwd")" == 'root:x:0:0:root:/root:/bin/sh' &&
    "$(stat -c %a "$MID/usr/bin/hello")" == 755 &&
    -f "$TOP/app/config.toml" && -f "$TOP/etc/hostname" &&
    -f "$BASE/usr/share/doc/base-files/README" && -d "$BASE/var/cache/apt" ]]; then
    pass "layers on disk: passwd, hello's mode, config.toml, hostname, docs and caches as built"
else
    fail "a lower layer's file was changed on disk"
fi

# ---------------------------------------------------------------------------
section "15. The result persists: upper/ as a read-only layer"
# ---------------------------------------------------------------------------
note "upper/ is an ordinary layer now: mount it read-only on top of the same stack."
run "$BIN" mount --lower upper --lower top --lower mid --lower base view
wait_mounted "$ROVIEW"
run cat view/etc/passwd
run ls -la view/usr/share/doc view/app
echo
note "listing = find . -printf '%p %y %m %s' (no size for directories) | sort, plus sha256sum of every file"
printf '%s$ diff <(listing container, before unmount) <(listing view)%s\n' "$B" "$N"
if diff -u --label container --label view <(printf '%s\n' "$container_listing") <(listing "$ROVIEW"); then
    pass "view/ shows exactly what the container saw ($container_entries entries, same contents)"
else
    fail "view/ differs from what the container saw (diff above)"
fi
kernel_done=0
if ((EUID == 0)); then
    echo
    note "Kernel overlayfs reads no OCI markers (.wh.NAME, .wh..wh..opq), so it gets"
    note "top-kernel/: a copy of top/ converted to the overlay dialect (char 0/0 whiteout,"
    note "trusted.overlay.opaque=y). upper/ and mid/ are in the overlay dialect already."
    cp -a "$TOP" "$KTOP"
    while IFS= read -r -d '' m; do
        d="${m%/*}"
        n="${m##*/}"
        rm "$m"
        if [[ "$n" == .wh..wh..opq ]]; then
            setfattr -n trusted.overlay.opaque -v y "$d"
        else
            mknod "$d/${n#.wh.}" c 0 0
        fi
    done < <(find "$KTOP" -name '.wh.*' -print0)
    printf '%s--- top-kernel/ ---%s\n' "$B" "$N"
    show_layer "$KTOP"
    echo
    # The upper holds metadata-only copies and may hold directory redirects,
    # in the kernel's own format: the kernel follows them when asked to.
    if run mount -t overlay overlay -o lowerdir=upper:top-kernel:mid:base,metacopy=on,redirect_dir=follow view-kernel; then
        run findmnt "$KVIEW"
        printf '%s$ diff <(listing view) <(listing view-kernel)%s\n' "$B" "$N"
        if diff -u --label view --label view-kernel <(listing "$ROVIEW") <(listing "$KVIEW"); then
            pass "stratafs and kernel overlayfs show the same tree and contents"
        else
            fail "stratafs (view/) and kernel overlayfs (view-kernel/) differ (diff above)"
        fi
        kernel_done=1
    else
        note "kernel overlayfs could not mount here; comparison skipped"
    fi
else
    note "Not root: the comparison with kernel overlayfs (needs mount -t overlay) is skipped."
fi
echo
run "$BIN" umount view
if ((kernel_done)); then
    run umount view-kernel
fi
if is_mounted "$ROVIEW" || is_mounted "$KVIEW"; then
    fail "view/ or view-kernel/ is still mounted"
else
    pass "view/ and view-kernel/ are unmounted"
fi

# ---------------------------------------------------------------------------
section "15. The layer store: import, name, mount by name, verify"
# ---------------------------------------------------------------------------
note "Layers are stored once, named by the SHA256 of a canonical manifest of"
note "their tree (independent of whiteout dialect): docs/format.md."
STORE="$WORK/store"
IMG="$WORK/image-view"
BYHAND="$WORK/byhand-view"
mkdir -p "$IMG" "$BYHAND"
declare -A digest
for layer in base mid top; do
    printf '%s$ %s --store store layer import %s%s\n' "$B" "$BIN" "$layer" "$N"
    out="$("$BIN" --store "$STORE" layer import "$WORK/$layer")"
    echo "$out"
    digest[$layer]="${out%% *}"
done
printf '%s$ %s --store store layer import top   # again%s\n' "$B" "$BIN" "$N"
again="$("$BIN" --store "$STORE" layer import "$WORK/top")"
echo "$again"
if [[ "$again" == *"Already exists" ]]; then
    pass "a second import of the same layer stores nothing"
else
    fail "a second import did not say 'Already exists'"
fi
run "$BIN" --store "$STORE" image create demo "${digest[base]:0:19}" "${digest[mid]:0:19}" "${digest[top]:0:19}"
run "$BIN" --store "$STORE" image ls
run "$BIN" --store "$STORE" layer ls
MOUNTS+=("$IMG" "$BYHAND")
run "$BIN" --store "$STORE" mount demo "$IMG" --ephemeral --log "$WORK/image.log"
wait_mounted "$IMG"
run "$BIN" mount --lower top --lower mid --lower base "$BYHAND"
wait_mounted "$BYHAND"
printf '%s$ diff <(listing image-view) <(listing byhand-view)%s\n' "$B" "$N"
if diff -u --label image-view --label byhand-view <(listing "$IMG") <(listing "$BYHAND"); then
    pass "the stored image mounted by name shows the same tree as the layer directories"
else
    fail "the stored image and the layer directories differ (diff above)"
fi
run "$BIN" umount "$BYHAND"
run_sh "echo 'written in an ephemeral upper' > $IMG/scratch && cat $IMG/scratch"
run "$BIN" --store "$STORE" layer verify --all
run_sh "$BIN --store $STORE layer export ${digest[top]:0:19} | tar -tvf -"

run "$BIN" umount "$IMG"
if [[ -e "$(ls -d "${TMPDIR:-/tmp}"/stratafs-ephemeral-* 2>/dev/null | head -1)" ]]; then
    note "(an ephemeral directory exists in ${TMPDIR:-/tmp}: another mount's?)"
else
    pass "the ephemeral upper was removed at unmount"
fi

note "Userspace verity: a byte changed in a stored layer is caught on first open."
TREE="$STORE/layers/sha256/${digest[base]#sha256:}/tree"
run_sh "printf X | dd of=$TREE/etc/passwd bs=1 seek=0 conv=notrunc status=none"
run "$BIN" --store "$STORE" mount demo "$IMG" --log "$WORK/image.log"
wait_mounted "$IMG"
printf '%s$ cat image-view/etc/passwd%s\n' "$B" "$N"
if cat "$IMG/etc/passwd" 2>"$WORK/cat.err"; then
    fail "a corrupted stored file was read without error"
elif ! grep -q 'Input/output error' "$WORK/cat.err"; then
    cat "$WORK/cat.err"
    fail "reading the corrupted file failed, but not with EIO"
else
    cat "$WORK/cat.err"
    pass "reading the corrupted file fails (EIO); the daemon logged: $(grep -o 'layer=.*' "$WORK/image.log" | head -1)"
fi
if "$BIN" --store "$STORE" layer verify "${digest[base]:0:19}"; then
    fail "layer verify missed the corruption"
else
    pass "layer verify names the changed file"
fi
run "$BIN" --store "$STORE" image rm demo
run "$BIN" --store "$STORE" gc
run "$BIN" umount "$IMG"
run "$BIN" --store "$STORE" gc
left="$("$BIN" --store "$STORE" layer ls | tail -n +2 | wc -l)"
if [[ "$left" == 0 ]]; then
    pass "gc kept the layers while mounted and removed them once unmounted"
else
    fail "$left layer(s) left after gc"
fi

section "Result"
echo "demo: $passed passed, $failed failed"
if ((failed)); then
    exit 1
fi
echo "All good. Temporary files in $WORK are removed on exit."
