#!/usr/bin/env python3
"""stratafs benchmark harness (standard library only; run through bench/run.sh).

Builds one three-layer stack (base, mid, top) in a temporary directory and a
native copy of its merged view (the floor, made by copying a read-only kernel
overlayfs mount of the stack, so it is exactly the merged tree). Then, for each
workload and each repetition, it runs the workload once per implementation,
rotating the order every repetition (interleaving):

  native          the merged copy on the plain file system
  kernel          mount -t overlay (the reference; ratios are to it)
  fuse-overlayfs  the Debian package, as root
  stratafs        target/release/stratafs, as root
  stratafs-rootless  the same binary run by the unprivileged stratafs-test
                  (fusermount3), and the workloads too, as in a rootless
                  container: the user owns the layers (seen through
                  idmapped mounts where they are root's on disk)
  fuse-overlayfs-rootless  (only when asked for with --impls) fuse-overlayfs
                  run the same way, the fair comparison for stratafs-rootless

Every measurement gets a fresh mount with an empty upper and work directory,
so a mutating workload never sees a previous one's copy-ups and the daemon
starts with empty caches. Cold workloads sync and drop the page, dentry and
inode caches (echo 3 > /proc/sys/vm/drop_caches) after mounting; warm
workloads run the command once unmeasured first. The lower layers are shared
by all implementations (they are never written).

For the FUSE implementations the daemon's peak RSS (VmHWM) and the CPU time it
used during the measured command are read from /proc/PID.

Everything that was mounted is unmounted on exit, error or signal.
"""

import argparse
import atexit
import datetime
import functools
import glob
import json
import os
import platform
import pwd
import random
import re
import shutil
import shlex
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

IMPLS = ["native", "kernel", "fuse-overlayfs", "stratafs", "stratafs-rootless", "fuse-overlayfs-rootless"]
# The rootless fuse-overlayfs column would take the full run past its 30 minutes.
DEFAULT_IMPLS = IMPLS[:5]
FUSE_IMPLS = ["fuse-overlayfs", "stratafs", "stratafs-rootless", "fuse-overlayfs-rootless"]
# Run by ROOTLESS_USER, with its workloads.
ROOTLESS_IMPLS = {"stratafs-rootless", "fuse-overlayfs-rootless"}
# Column titles in the report.
TITLES = {"stratafs": "stratafs (root)", "stratafs-rootless": "stratafs rootless",
          "fuse-overlayfs-rootless": "fuse-overlayfs rootless"}
# stratafs-rootless: the daemon runs as this unprivileged account (no
# CAP_SYS_ADMIN, so fusermount3 mounts it and there is no FUSE passthrough),
# and so do the workloads, as in a rootless container: the user owns the
# layers (root-owned ones are seen through an idmapped mount that shows them
# as the user's), the mount and everything in it.
ROOTLESS_USER = "stratafs-test"
HALT_POLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
DAMON = "/sys/kernel/mm/damon/admin/kdamonds"
# stack name -> the lowers the rootless daemon mounts (see idmapped_layers)
ROOTLESS_LOWERS = {}
# stack name -> the lowers the other columns mount: the Debian image, its
# files the rootless user's on disk, seen as root's (as an image's are)
ROOT_LOWERS = {}


def damon_running():
    """{state file: its schemes' actions} of each DAMON worker that is on.

    A pageout scheme reclaims page cache in physical regions it has seen idle,
    and fresh pages that land in such a region go with it. The kernel throws a
    FUSE directory's cached listing away whole when one of its pages is gone,
    so a "warm" listing may be read from the daemon again; kernel overlayfs
    only rereads the lost pages of the lower directory."""
    running = {}
    try:
        workers = sorted(n for n in os.listdir(DAMON) if n.isdigit())
    except OSError:
        return running
    for w in workers:
        state = os.path.join(DAMON, w, "state")
        try:
            with open(state) as f:
                if f.read().strip() != "on":
                    continue
        except OSError:
            continue
        actions = []
        for a in sorted(glob.glob(os.path.join(DAMON, w, "contexts", "*", "schemes", "*", "action"))):
            with open(a) as f:
                actions.append(f.read().strip())
        running[state] = actions
    return running


def machine_tuning():
    """The machine's own settings that change FUSE costs, before any option changes them."""
    try:
        with open(HALT_POLL) as f:
            tuning = [f"cpuidle halt polling {f.read().strip()} ns"]
    except OSError:
        tuning = ["no haltpoll cpuidle driver"]
    damon = damon_running()
    tuning.append(f"DAMON workers on: {len(damon)}"
                  + (f" (schemes: {', '.join(a for acts in damon.values() for a in acts) or 'none'})" if damon else ""))
    return "; ".join(tuning)


def as_user(argv):
    u = ROOTLESS_USER
    return ["setpriv", "--reuid", u, "--regid", u, "--clear-groups", "--"] + argv


def lowers_for(impl, stack):
    if impl in ROOTLESS_IMPLS:
        return ROOTLESS_LOWERS.get(stack.name, stack.lowers)
    return ROOT_LOWERS.get(stack.name, stack.lowers)


def as_runner(impl, argv):
    """argv as the implementation's user runs it: the rootless column's own
    user, everybody else root."""
    return as_user(argv) if impl in ROOTLESS_IMPLS else argv

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(argv, check=True, **kw):
    return subprocess.run(argv, check=check, **kw)


def out(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def is_mountpoint(path):
    """path is in /proc/self/mountinfo (read there, not by stat: a stat of a
    FUSE mount point would ask its daemon, and a file can be a mount point)."""
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mp == path:
                return True
    return False


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the comm field: state is fields[0]; utime is field 14 => index 11
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def find_daemon(exe_name, mountpoint):
    """PID of the process whose argv[0] ends in exe_name and whose argv holds mountpoint."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0]:
            continue
        if os.path.basename(argv[0].decode(errors="replace")) != exe_name:
            continue
        if any(a.decode(errors="replace").rstrip("/") == mountpoint.rstrip("/") for a in argv[1:]):
            found.append(int(d))
    return max(found) if found else None


def wait_exit(pid, timeout=20.0):
    if pid is None:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{pid}"):
            return
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.02)
    log(f"warning: daemon {pid} still alive {timeout}s after unmount")


def rmtree(path):
    if os.path.lexists(path):
        sh(["rm", "-rf", "--one-file-system", path])


# ---------------------------------------------------------------------------
# data: three layer stacks, each with the native copy of its merged view
# ---------------------------------------------------------------------------
#
#   DATA/main/    layers/{base,mid,top}: big/, big2/, tree/, huge/, small/, rmtree/;
#                 untar-N.tar (N files of rmtree/ of the native copy, as untar/)
#   DATA/deep/    layers/00..99 (00 at the bottom): d/ and b/ in every layer
#   DATA/debian/  layers/{minbase,apt}: debootstrap --variant=minbase bookworm, and a
#                 layer made by apt-get in a chroot over a kernel overlay of it
#
# Each has its own stamp.json (its parameters), so changing one rebuilds only
# that one; each stack's native/ is a cp -a of a read-only kernel overlayfs
# mount of its layers, so it is exactly the merged tree.

DATA_VERSION = 2
DEEP_LAYERS = 100
DEBIAN_SUITE = "bookworm"
DEBIAN_TITLE = "Debian image (minbase + apt layer)"
# The test suite's cache of the same Debian image (tests/common/debian.rs):
# copied when present, instead of running debootstrap and apt again.
DEBIAN_SEED = "/var/cache/stratafs-tests"
DEBIAN_SEED_TREES = {"minbase": "bookworm-minbase-v1", "apt": "bookworm-layer1-v1"}
# The container layer, built the way image builders do (the same script as
# tests/common/debian.rs, so a copy of its cache is the same image): apt-get
# install, and deletions that leave kernel whiteouts and opaque directories.
DEBIAN_LAYER_SCRIPT = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "debian-layer.sh")).read()


class DataUnavailable(Exception):
    """A data set that could not be built (e.g. no Debian mirror)."""


class Stack:
    """Lower layers (top first) and the native copy of their merged view."""

    LAYERS = {"main": ["top", "mid", "base"],
              "deep": [f"{i:02d}" for i in reversed(range(DEEP_LAYERS))],
              "debian": ["apt", "minbase"]}

    def __init__(self, data, name):
        self.name = name
        self.root = os.path.join(data, name)
        self.lowers = [os.path.join(self.root, "layers", n) for n in self.LAYERS[name]]
        self.native = os.path.join(self.root, "native")

    def layer(self, name):
        return os.path.join(self.root, "layers", name)


def write_file(path, size, rnd):
    with open(path, "wb") as f:
        if size:
            f.write(rnd.randbytes(size))


def touch(path, content=b""):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    if content:
        os.write(fd, content)
    os.close(fd)


def whiteout(path):
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def opaque(path):
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def random_file(path, mib):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))


def build_tree(base, top, rnd):
    """~8k merged entries over 2 layers (base, top) under tree/: directories
    three levels deep, small files, symlinks; top adds files and directories,
    overrides files, whites some out and makes a few directories opaque."""
    dirs = []
    for a in range(12):
        for b in range(6):
            for c in range(4):
                dirs.append(f"tree/a{a:02d}/b{b}/c{c}")
    for d in dirs:
        os.makedirs(os.path.join(base, d), exist_ok=True)
    base_files = []
    for d in dirs:
        for i in range(20):
            p = f"{d}/f{i:02d}.txt"
            write_file(os.path.join(base, p), rnd.randrange(0, 4096), rnd)
            base_files.append(p)
        for i in range(2):
            os.symlink(f"f{i:02d}.txt", os.path.join(base, d, f"l{i}"))
    # top: new files in a third of the directories, overrides, whiteouts, opaque dirs
    for d in dirs[::3]:
        os.makedirs(os.path.join(top, d), exist_ok=True)
        for i in range(12):
            write_file(os.path.join(top, d, f"new{i:02d}.dat"), rnd.randrange(0, 2048), rnd)
    for p in rnd.sample(base_files, 600):
        os.makedirs(os.path.join(top, os.path.dirname(p)), exist_ok=True)
        write_file(os.path.join(top, p), rnd.randrange(0, 2048), rnd)
    overridden = set()
    for root, _, files in os.walk(os.path.join(top, "tree")):
        for f in files:
            overridden.add(os.path.relpath(os.path.join(root, f), top))
    for p in rnd.sample([p for p in base_files if p not in overridden], 300):
        os.makedirs(os.path.join(top, os.path.dirname(p)), exist_ok=True)
        whiteout(os.path.join(top, p))
    for a in range(12, 14):  # new directories only in top
        for b in range(6):
            d = os.path.join(top, f"tree/a{a:02d}/b{b}")
            os.makedirs(d)
            for i in range(25):
                write_file(os.path.join(d, f"g{i:02d}"), rnd.randrange(0, 1024), rnd)
    for a in (3, 7):  # opaque directories: hide base's b5 subtree
        d = os.path.join(top, f"tree/a{a:02d}/b5")
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(os.path.join(d, "c0"))
        write_file(os.path.join(d, "c0", "only-top"), 100, rnd)
        opaque(d)


def build_huge(base, mid, top, n):
    """huge/: n entries spread over 3 layers (round robin), plus 5% of base's
    names overridden in top and 1% extra base names whited out in mid."""
    for layer in (base, mid, top):
        os.makedirs(os.path.join(layer, "huge"), exist_ok=True)
    layers = (base, mid, top)
    for i in range(n):
        touch(os.path.join(layers[i % 3], "huge", f"entry-{i:06d}"))
    for i in range(0, n, 60):  # i % 3 == 0 -> base name; override in top
        touch(os.path.join(top, "huge", f"entry-{i:06d}"), b"top\n")
    for j in range(n // 100):
        name = f"gone-{j:06d}"
        touch(os.path.join(base, "huge", name))
        whiteout(os.path.join(mid, "huge", name))


def overlay_lowerdir(lowers):
    """lowerdir= for kernel overlayfs, relative to the layers' parent (the
    directory to run mount in): the whole option string must fit in one page,
    too short for 100 absolute paths."""
    cwd = os.path.dirname(lowers[0])
    return ":".join(os.path.relpath(lo, cwd) for lo in lowers), cwd


def merge_native(stack):
    """stack.native: cp -a of a read-only kernel overlayfs mount of its layers."""
    mnt = os.path.join(stack.root, "merge-mnt")
    os.makedirs(mnt)
    lowerdir, cwd = overlay_lowerdir(stack.lowers)
    MOUNTS.add("kernel", mnt)
    try:
        sh(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", mnt], cwd=cwd)
        sh(["cp", "-a", mnt, stack.native])
    finally:
        unmount("kernel", mnt)
    os.rmdir(mnt)


def build_main(stack, big_mib, huge_n):
    base, mid, top = (stack.layer(n) for n in ("base", "mid", "top"))
    for d in (base, mid, top):
        os.makedirs(d)
    rnd = random.Random(42)
    random_file(os.path.join(base, "big", "file"), big_mib)  # the large lower file
    random_file(os.path.join(mid, "big2", "file"), big_mib)  # the second reader's
    build_tree(base, top, rnd)
    build_huge(base, mid, top, huge_n)
    # small/: 2000 small files in base, for copy-up
    os.makedirs(os.path.join(base, "small"))
    for i in range(2000):
        write_file(os.path.join(base, "small", f"f{i:04d}"), rnd.randrange(100, 8192), rnd)
    # rmtree/: 10k files in 100 directories in base, plus a few in top
    for a in range(100):
        d = os.path.join(base, "rmtree", f"d{a:02d}")
        os.makedirs(d)
        for i in range(100):
            write_file(os.path.join(d, f"f{i:02d}"), rnd.randrange(0, 512), rnd)
    for a in range(0, 100, 10):
        d = os.path.join(top, "rmtree", f"d{a:02d}")
        os.makedirs(d)
        write_file(os.path.join(d, "top-only"), 10, rnd)
    merge_native(stack)


def untar_tarball(stack, files):
    return os.path.join(stack.root, f"untar-{files}.tar")


def ensure_tarball(stack, files):
    """The tarball to unpack: the first files/100 directories of the merged
    rmtree/ (100 files each, a tenth with one more), renamed untar/."""
    path = untar_tarball(stack, files)
    if not os.path.exists(path):
        dirs = [f"rmtree/d{a:02d}" for a in range(max(1, min(100, files // 100)))]
        sh(["tar", "-C", stack.native, "--sort=name", "--transform=s,^rmtree,untar,", "-cf", path + ".tmp"] + dirs)
        os.rename(path + ".tmp", path)


def build_deep(stack):
    """100 layers, each adding 20 files to the shared d/ and one to b/, and
    overriding d/common; the bottom one (00) also holds b/f0000..f0999, so a
    lookup of one of those misses in the 99 layers above first."""
    rnd = random.Random(7)
    for i in range(DEEP_LAYERS):
        layer = stack.layer(f"{i:02d}")
        for sub in ("d", "b"):
            os.makedirs(os.path.join(layer, sub))
        for j in range(20):
            write_file(os.path.join(layer, "d", f"l{i:02d}-{j:02d}"), rnd.randrange(0, 1024), rnd)
        touch(os.path.join(layer, "d", "common"), f"{i}\n".encode())
        touch(os.path.join(layer, "b", f"l{i:02d}"))
    for j in range(1000):
        write_file(os.path.join(stack.layer("00"), "b", f"f{j:04d}"), rnd.randrange(0, 1024), rnd)
    merge_native(stack)


def host_mirror():
    """The Debian mirror the host's apt uses (the first non-security .../debian URI)."""
    paths = ["/etc/apt/sources.list"]
    if os.path.isdir("/etc/apt/sources.list.d"):
        paths += sorted(os.path.join("/etc/apt/sources.list.d", f) for f in os.listdir("/etc/apt/sources.list.d"))
    for p in paths:
        try:
            text = open(p).read()
        except OSError:
            continue
        for uri in re.findall(r"(?m)^(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(https?://\S+)", text):
            uri = uri.rstrip("/")
            if uri.endswith("/debian") and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def build_apt_layer(minbase, upper, scratch):
    """upper: the upper directory of a kernel overlay over minbase in which
    DEBIAN_LAYER_SCRIPT ran in a chroot (kernel whiteouts and opaque xattrs)."""
    work, merged = os.path.join(scratch, "work"), os.path.join(scratch, "merged")
    for d in (upper, work, merged):
        os.makedirs(d)
    mounted = []  # (kind, path), unmounted in reverse order

    def mount(kind, path, argv):
        MOUNTS.add(kind, path)
        mounted.append((kind, path))
        sh(argv)
    try:
        mount("kernel", merged, ["mount", "-t", "overlay", "overlay", "-o",
                                 f"lowerdir={minbase},upperdir={upper},workdir={work}", merged])
        resolv = os.path.join(merged, "etc", "resolv.conf")
        if os.path.isfile(resolv) and not os.path.islink(resolv):
            mount("bind", resolv, ["mount", "--bind", "/etc/resolv.conf", resolv])
        r = subprocess.run(["chroot", merged, "/bin/sh", "-c", DEBIAN_LAYER_SCRIPT],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
        if r.returncode != 0:
            raise DataUnavailable(f"apt-get in the chroot failed ({r.returncode}): {r.stdout.strip()[-500:]}")
    finally:
        for kind, path in reversed(mounted):
            unmount(kind, path)
    rmtree(scratch)


def build_debian(stack, seed):
    """debootstrap --variant=minbase bookworm + a layer made with apt-get, or a
    copy of the test suite's cache of the same image (seed) when it holds it."""
    minbase, apt = stack.layer("minbase"), stack.layer("apt")
    seeds = {n: os.path.join(seed, d, "tree") for n, d in DEBIAN_SEED_TREES.items()} if seed else {}
    if seeds and all(os.path.isdir(p) for p in seeds.values()):
        log(f"copying the Debian image from {seed}")
        os.makedirs(os.path.dirname(minbase))
        for name, src in seeds.items():
            sh(["cp", "-a", src, stack.layer(name)])
    else:
        if not shutil.which("debootstrap"):
            raise DataUnavailable("debootstrap is not installed (scripts/setup.sh installs it)")
        mirror = host_mirror()
        probe = os.path.join(stack.root, "Release")
        r = subprocess.run(["/usr/lib/apt/apt-helper", "download-file", f"{mirror}/dists/{DEBIAN_SUITE}/Release",
                            probe], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise DataUnavailable(f"cannot reach the Debian mirror {mirror}: {(r.stdout + r.stderr).strip()[-300:]}")
        os.unlink(probe)
        log(f"debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror} (takes a minute or two)")
        r = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, minbase, mirror],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
        if r.returncode != 0:
            raise DataUnavailable(f"debootstrap failed ({r.returncode}): {r.stdout.strip()[-500:]}")
        log("apt-get install in a chroot over a kernel overlay of it")
        build_apt_layer(minbase, apt, os.path.join(stack.root, "apt-build"))
    if ROOTLESS_UID is not None:
        # the unprivileged daemon must read root-only directories (/root, apt's
        # partial/): the layers are the user's, as a rootless engine's own are
        sh(["chown", "-hR", f"{ROOTLESS_UID}:{ROOTLESS_GID}", minbase, apt])
    merge_native(stack)


def ensure_dataset(stack, want, build):
    """Build stack with build() unless its stamp says it is there with the same
    parameters (want); a failed build leaves nothing behind."""
    stamp = os.path.join(stack.root, "stamp.json")
    try:
        with open(stamp) as f:
            if json.load(f) == want:
                log(f"reusing {stack.root}")
                return
    except (OSError, ValueError):
        pass
    rmtree(stack.root)
    os.makedirs(stack.root)
    t0 = time.monotonic()
    log(f"building {stack.root}")
    try:
        build()
    except BaseException:
        rmtree(stack.root)
        raise
    os.sync()
    with open(stamp, "w") as f:
        json.dump(want, f)
    log(f"{stack.name} built in {time.monotonic() - t0:.1f}s")


def build_data(data, names, big_mib, huge_n, untar_files, debian_seed):
    """The stacks named in names, built (or reused); returns {name: Stack}, and
    a note for each one that could not be built."""
    stacks, notes = {}, []
    if os.path.exists(os.path.join(data, "stamp.json")):  # the one-stack layout of DATA_VERSION 1
        for old in ("layers", "native"):
            rmtree(os.path.join(data, old))
        os.unlink(os.path.join(data, "stamp.json"))
    for name in names:
        st = Stack(data, name)
        if name == "main":
            ensure_dataset(st, {"version": DATA_VERSION, "big_mib": big_mib, "huge_n": huge_n},
                           lambda: build_main(st, big_mib, huge_n))
            ensure_tarball(st, untar_files)
        elif name == "deep":
            ensure_dataset(st, {"version": DATA_VERSION, "layers": DEEP_LAYERS}, lambda: build_deep(st))
        elif name == "debian":
            try:
                ensure_dataset(st, {"version": DATA_VERSION, "suite": DEBIAN_SUITE, "owner": ROOTLESS_UID},
                               lambda: build_debian(st, debian_seed))
            except (DataUnavailable, subprocess.SubprocessError, OSError) as e:
                notes.append(f"the Debian image could not be built ({e}); its workloads ran on the synthetic tree/")
                log(f"WARNING: {notes[-1]}")
                continue
        stacks[name] = st
    return stacks, notes


# ---------------------------------------------------------------------------
# implementations: mount a fresh view, unmount it
# ---------------------------------------------------------------------------


class Mounts:
    """Everything currently mounted, so that exit handlers can undo it."""

    def __init__(self):
        self.active = []  # (kind, path)

    def add(self, kind, path):
        self.active.append((kind, path))

    def remove(self, path):
        self.active = [(k, p) for (k, p) in self.active if p != path]

    def cleanup(self):
        for kind, path in reversed(self.active):
            for argv in (umount_argv(kind, path), ["umount", "-l", path]):
                if not is_mountpoint(path):
                    break
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if is_mountpoint(path):
                log(f"warning: could not unmount {path}")
        self.active = []


def umount_argv(kind, path):
    if kind == "stratafs":
        return [STRATAFS, "umount", path]
    if kind in ROOTLESS_IMPLS:
        return as_user(["fusermount3", "-u", path])
    if kind == "fuse-overlayfs":
        return ["fusermount3", "-u", path]
    return ["umount", path]


def unmount(kind, path):
    """Unmount path (mounted as kind; lazily if that fails) and forget it."""
    r = subprocess.run(umount_argv(kind, path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 or is_mountpoint(path):
        log(f"warning: {kind} unmount of {path} failed ({r.stderr.strip()}); lazy unmount")
        subprocess.run(["umount", "-l", path])
    MOUNTS.remove(path)


MOUNTS = Mounts()
STRATAFS = os.path.join(REPO, "target", "release", "stratafs")
ROOTLESS_UID = ROOTLESS_GID = None


def mount_argv(impl, lowers, upper, work, mnt):
    """The command that mounts lowers (top first) with upper and work on mnt,
    and the directory to run it in."""
    if impl == "kernel":
        lowerdir, cwd = overlay_lowerdir(lowers)
        return ["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lowerdir},upperdir={upper},workdir={work}", mnt], cwd
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if impl == "fuse-overlayfs":
        return ["fuse-overlayfs", "-o", opts, mnt], None
    if impl == "stratafs":
        argv = [STRATAFS, "mount"]
        for lo in lowers:
            argv += ["--lower", lo]
        return argv + ["--upper", upper, "--work", work, mnt], None
    if impl == "stratafs-rootless":
        return as_user([STRATAFS, "-o", f"{opts},allow_other", mnt]), None
    if impl == "fuse-overlayfs-rootless":
        return as_user(["fuse-overlayfs", "-o", f"{opts},allow_other", mnt]), None
    raise ValueError(impl)


def mount_and_wait(impl, argv, cwd, mnt, timeout=60.0):
    """Run the mount command; return the seconds from its start until mnt is
    in /proc/self/mountinfo and a stat of it succeeds."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = None
    while elapsed is None:
        if is_mountpoint(mnt):
            try:
                os.stat(mnt)
                elapsed = time.perf_counter() - t0
                break
            except OSError:
                pass
        if p.poll() not in (None, 0) or time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.0005)
    try:
        err = p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        err = p.communicate()[1]
    if p.returncode != 0:
        raise RuntimeError(f"{impl}: mount failed ({p.returncode}): {err.strip()}")
    if not is_mountpoint(mnt):
        raise RuntimeError(f"{impl}: {mnt} is not a mount point after {argv}")
    return elapsed


class View:
    """One mounted (or native) view of a stack for one measurement."""

    def __init__(self, impl, stack, scratch, copy_native, native_scratch=False):
        self.impl = impl
        self.pid = None
        self.scratch = scratch
        self.mount_seconds = None
        self.mounted = False
        os.makedirs(scratch)
        if impl == "native":
            if copy_native or native_scratch:
                # a mutating workload: work on a fresh copy of what it changes
                self.root = os.path.join(scratch, "root")
                os.makedirs(self.root)
                for sub in copy_native:
                    sh(["cp", "-a", os.path.join(stack.native, sub), os.path.join(self.root, sub)])
            else:
                self.root = stack.native
            return
        upper, work, mnt = (os.path.join(scratch, n) for n in ("upper", "work", "mnt"))
        for d in (upper, work, mnt):
            os.makedirs(d)
        self.root = mnt
        if impl in ROOTLESS_IMPLS:
            # the user owns its upper, work directory and mount point
            for d in (scratch, upper, work, mnt):
                os.chown(d, ROOTLESS_UID, ROOTLESS_GID)
        argv, cwd = mount_argv(impl, lowers_for(impl, stack), upper, work, mnt)
        MOUNTS.add(impl, mnt)
        self.mounted = True
        self.mount_seconds = mount_and_wait(impl, argv, cwd, mnt)
        if impl in FUSE_IMPLS:
            exe = "fuse-overlayfs" if impl.startswith("fuse-overlayfs") else os.path.basename(STRATAFS)
            for _ in range(100):
                self.pid = find_daemon(exe, mnt)
                if self.pid:
                    break
                time.sleep(0.02)
            if not self.pid:
                log(f"warning: no daemon process found for {impl} at {mnt}")

    def close(self):
        if self.mounted:
            unmount(self.impl, self.root)
            wait_exit(self.pid)
            self.mounted = False
        rmtree(self.scratch)


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------

LS = ["env", "LC_ALL=C", "ls", "--color=never"]


class Workload:
    def __init__(self, name, title, argv, cold, unit="s", nbytes=None, copy_native=(), check=None,
                 warmup=None, native_scratch=False, parse=None, stack="main", sub="", prepare=None,
                 after=None):
        self.name = name
        self.title = title
        # function(path) -> argv, path being the view's root (or its sub/);
        # None: the measurement is the mount itself (not for native)
        self.argv = argv
        self.cold = cold
        self.unit = unit  # "s" (lower is better), "MB/s" or "IOPS" (higher is better)
        self.nbytes = nbytes
        self.copy_native = list(copy_native)
        self.check = check  # function(path) -> error string or None
        # warm workloads: function(path) -> argv run unmeasured first (default:
        # argv itself), or False for no warm-up at all
        self.warmup = warmup
        self.native_scratch = native_scratch  # native runs in a fresh empty directory
        self.parse = parse  # function(stdout) -> dict merged into the sample (e.g. iops)
        self.stack = stack  # the layer stack it runs on ("main", "deep", "debian")
        self.sub = sub  # the subdirectory of the view it works on
        # function(path) -> argv run unmeasured on the view before the caches
        # are dropped (cold) or the warm-up (warm)
        self.prepare = prepare
        # a warm workload measured on the same mount right after this cold one
        # (whose run is then its warm-up), when both are selected
        self.after = after

    def runs(self, impl):
        return self.argv is not None or impl != "native"

    def path(self, root):
        return os.path.join(root, self.sub) if self.sub else root

    def fall_back_to_tree(self):
        """The Debian image is not there: walk the synthetic tree/ instead."""
        if self.stack == "debian":
            self.stack, self.sub = "main", "tree"
            self.title = self.title.replace(DEBIAN_TITLE, "synthetic tree/ (FALLBACK: no Debian image)")


def cold_and_warm(name, title, argv, **kw):
    """NAME-cold and NAME-warm; the warm one is measured on the cold one's
    mount right after it (the cold run is its warm-up)."""
    return [Workload(f"{name}-cold", f"{title}, cold", argv, True, **kw),
            Workload(f"{name}-warm", f"{title}, warm", argv, False, after=f"{name}-cold", **kw)]


def dd_read(path):
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"]


def together(*argvs):
    """One command that starts all of argvs at once and waits for them all
    (exit status 1 if any failed)."""
    script = "".join(f'{shlex.join(a)} & pids="$pids $!"\n' for a in argvs)
    return ["bash", "-c", script + 's=0; for p in $pids; do wait "$p" || s=1; done; exit $s']


@functools.lru_cache(maxsize=None)
def sample_names(directory, n, seed, prefix=""):
    """n names from directory's listing (those starting with prefix), chosen
    with a seeded RNG: the same ones in every run with the same data."""
    names = sorted(x for x in os.listdir(directory) if x.startswith(prefix))
    return random.Random(seed).sample(names, min(n, len(names)))


def stat_argv(native_dir, sub, prefix=""):
    """One stat process over 1000 names of sub/, sampled from native_dir."""
    return lambda r: ["stat", "--format=%i"] + [os.path.join(r, sub, x)
                                                 for x in sample_names(native_dir, 1000, 1, prefix)]


def append_argv(root):
    script = 'for f in "$1"/small/f{0000..1999}; do printf x >>"$f" || exit 1; done'
    return ["bash", "-c", script, "append", root]


def untar_argv(tarball):
    # --no-same-owner: no chown to root, which the rootless daemon cannot do
    return lambda r: ["tar", "-C", r, "--no-same-owner", "-xf", tarball]


def check_gone(sub):
    return lambda r: f"{sub}/ still exists" if os.path.lexists(os.path.join(r, sub)) else None


def check_exists(*paths):
    def check(r):
        missing = [p for p in paths if not os.path.lexists(os.path.join(r, p))]
        return f"missing after the workload: {', '.join(missing)}" if missing else None
    return check


def check_appended(size, *paths):
    """Each of paths (relative) ends in the appended "x" (and has size, if given)."""
    def check(r):
        for p in paths:
            with open(os.path.join(r, p), "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"x" or (size is not None and f.tell() != size):
                    return f"{p} was not appended to"
        return None
    return check


def check_size(sub, size):
    def check(r):
        got = os.stat(os.path.join(r, sub)).st_size
        return None if got == size else f"{sub}: {got} bytes, want {size}"
    return check


def check_mode(path, mode):
    got = os.stat(path).st_mode & 0o7777
    return None if got == mode else f"{path}: mode {got:o}, want {mode:o}"


def count(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def workloads(data, big_mib, huge_n, untar_files):
    hn, tn = count(huge_n), count(untar_files)
    nb = big_mib * MiB
    main, deep = Stack(data, "main"), Stack(data, "deep")
    tarball = untar_tarball(main, untar_files)
    walk = {"find": ("find", lambda p: ["find", p]), "lsR": ("ls -lR", lambda p: LS + ["-lR", p])}
    wls = [
        *cold_and_warm("read", f"seq read {big_mib} MiB lower file", lambda r: dd_read(f"{r}/big/file"),
                       unit="MB/s", nbytes=nb),
        Workload("read2-cold", f"2 concurrent seq readers of two {big_mib} MiB lower files, cold",
                 lambda r: together(dd_read(f"{r}/big/file"), dd_read(f"{r}/big2/file")), True, "MB/s", 2 * nb),
        Workload("write-seq", f"seq write of a new {big_mib} MiB file, fsync at the end, cold",
                 lambda r: ["dd", "if=/dev/zero", f"of={r}/new", "bs=1M", f"count={big_mib}", "conv=fsync",
                            "status=none"], True, "MB/s", nb, native_scratch=True, check=check_size("new", nb)),
    ]
    for key, (what, cmd) in walk.items():
        wls += cold_and_warm(f"deb-{key}", f"{what}, {DEBIAN_TITLE}", cmd, stack="debian")
    wls.append(Workload("walk2-cold", f"2 concurrent ls -lR, {DEBIAN_TITLE}, cold",
                        lambda p: together(walk["lsR"][1](p), walk["lsR"][1](p)), True, stack="debian"))
    for opt, key in (("-f", "lsf"), ("-l", "lsl")):
        wls += cold_and_warm(f"huge-{key}", f"ls {opt}, {hn}-entry dir on 3 layers",
                             lambda p, opt=opt: LS + [opt, p], sub="huge")
    wls += [
        Workload("huge-stat-cold", f"stat of 1000 random names in the {hn}-entry dir, cold",
                 stat_argv(os.path.join(main.native, "huge"), "huge"), True),
        Workload("deep-mount", f"mount time, {DEEP_LAYERS}-layer stack, cold", None, True, stack="deep"),
        Workload("deep-lsl-warm", f"ls -l of a dir all {DEEP_LAYERS} layers add to (2k entries), warm",
                 lambda p: LS + ["-l", p], False, stack="deep", sub="d"),
        Workload("deep-stat-cold", f"stat of 1000 bottom-layer names under {DEEP_LAYERS} layers, cold",
                 stat_argv(os.path.join(deep.native, "b"), "b", "f"), True, stack="deep"),
        Workload("copyup-big", f"copy-up: append 1 byte to the {big_mib} MiB lower file, cold",
                 lambda r: ["bash", "-c", 'printf x >>"$1"/big/file', "append", r], True, copy_native=["big"],
                 check=check_appended(nb + 1, "big/file")),
        Workload("copyup-append", "copy-up: append 1 byte to 2000 small lower files, cold", append_argv, True,
                 copy_native=["small"], check=check_appended(None, "small/f0000", "small/f1999")),
        Workload("rm-lower", "rm -rf of a 10k-file lower tree, cold", lambda r: ["rm", "-rf", f"{r}/rmtree"], True,
                 copy_native=["rmtree"], check=check_gone("rmtree")),
        Workload("untar", f"untar of a {tn}-file tarball into a new dir, cold", untar_argv(tarball), True,
                 native_scratch=True, check=check_exists("untar/d00/f00", "untar/d00/top-only", "untar/d00/f99")),
        Workload("rm-untarred", f"rm -rf of those {tn} untarred files (in the upper), cold",
                 lambda r: ["rm", "-rf", f"{r}/untar"], True, native_scratch=True, prepare=untar_argv(tarball),
                 check=check_gone("untar")),
        Workload("chmod-big", f"copy-up: chmod of the {big_mib} MiB lower file, cold",
                 lambda r: ["chmod", "600", f"{r}/big/file"], True, copy_native=["big"],
                 check=lambda r: check_mode(os.path.join(r, "big", "file"), 0o600)),
        Workload("chmod-small", "copy-up: chmod of 2000 small lower files, cold",
                 lambda r: ["bash", "-c", 'chmod 600 "$1"/small/*', "chmod", r], True, copy_native=["small"],
                 check=lambda r: check_mode(os.path.join(r, "small", "f1999"), 0o600)),
    ]
    return wls


def fio_argv(name, path, rw, runtime, extra=()):
    """fio, one job, 4 KiB blocks, psync, buffered (--direct=0), JSON output."""
    return ["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", "--bs=4k",
            "--ioengine=psync", "--direct=0", "--numjobs=1", "--norandommap",
            "--randrepeat=1", "--time_based", f"--runtime={runtime}",
            "--output-format=json"] + list(extra)


def fio_iops(rw):
    def parse(stdout):
        job = json.loads(stdout[stdout.index(b"{"):])["jobs"][0]
        return {"iops": job[rw]["iops"], "fio_runtime_ms": job[rw]["runtime"]}
    return parse


def fio_workloads(big_mib, runtime):
    return [
        Workload("fio-randread-warm", f"fio 4k random read, {big_mib} MiB lower file, psync, warm, {runtime} s",
                 # --invalidate=0: fio would otherwise drop the file's page cache first
                 lambda r: fio_argv("randread", f"{r}/big/file", "randread", runtime,
                                    ["--readonly", "--invalidate=0"]),
                 False, "IOPS", parse=fio_iops("read"),
                 warmup=lambda r: ["dd", f"if={r}/big/file", "of=/dev/null", "bs=1M", "status=none"]),
        Workload("fio-randwrite", f"fio 4k random write, new {big_mib} MiB file in the upper, psync, {runtime} s",
                 lambda r: fio_argv("randwrite", f"{r}/fio-new", "randwrite", runtime,
                                    [f"--size={big_mib}M", "--fallocate=none"]),
                 False, "IOPS", parse=fio_iops("write"), warmup=False, native_scratch=True),
    ]


def run_timed(wl, view, warmed=False):
    """Run the workload's command on view (prepared, then cold or warm, unless
    warmed: it just ran on it); the sample, with the daemon's stats."""
    path = wl.path(view.root)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 600}
    if wl.prepare:
        sh(as_runner(view.impl, wl.prepare(path)), **quiet)
    argv = as_runner(view.impl, wl.argv(path))
    if wl.cold:
        drop_caches()
    elif wl.warmup is not False and not warmed:
        sh(as_runner(view.impl, wl.warmup(path)) if wl.warmup else argv, **quiet)
    cpu0 = proc_cpu_seconds(view.pid) if view.pid else None
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE if wl.parse else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=600)
    res = {"seconds": time.perf_counter() - t0}
    cpu1 = proc_cpu_seconds(view.pid) if view.pid else None
    if cpu0 is not None and cpu1 is not None:
        res["daemon_cpu"] = cpu1 - cpu0
    if r.returncode != 0:
        res["error"] = f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:300]}"
    elif wl.parse:
        try:
            res.update(wl.parse(r.stdout))
        except (ValueError, KeyError, IndexError) as e:
            res["error"] = f"cannot parse the output: {e!r}"
    if "error" not in res and wl.check:
        err = wl.check(path)
        if err:
            res["error"] = err
    if view.pid:
        res["vmhwm_kib"] = proc_status_kib(view.pid, "VmHWM")
    return res


def measure(impl, group, stack, scratch):
    """One measurement of each workload of group (one, or a cold one and its
    warm twin) on one fresh mount: mount, (warm up | drop caches), run, read
    the daemon's stats, unmount; the samples. A mount-time workload (argv None)
    drops the caches first and times the mount."""
    wl = group[0]
    # settle: write back what earlier measurements left dirty (their upper
    # directories were just deleted) so that it is not charged to this one
    os.sync()
    if wl.argv is None:
        drop_caches()
    try:
        view = View(impl, stack, scratch, wl.copy_native, wl.native_scratch)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        MOUNTS.cleanup()
        rmtree(scratch)
        return [{"seconds": float("nan"), "error": f"setup failed: {e}"} for _ in group]
    try:
        if wl.argv is None:
            return [mount_sample(view)]
        samples = []
        for i, w in enumerate(group):
            try:
                samples.append(run_timed(w, view, warmed=i > 0))
            except (subprocess.SubprocessError, OSError) as e:
                samples.append({"seconds": float("nan"), "error": f"{e}"[:300]})
        return samples
    finally:
        view.close()


def mount_sample(view):
    res = {"seconds": view.mount_seconds}
    if view.mount_seconds is None:
        res.update(seconds=float("nan"), error="the mount point never answered a stat")
    if view.pid:
        cpu = proc_cpu_seconds(view.pid)
        if cpu is not None:
            res["daemon_cpu"] = cpu  # all of it: the daemon is as old as the mount
        res["vmhwm_kib"] = proc_status_kib(view.pid, "VmHWM")
    return res


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def value(wl, sample):
    if wl.unit == "IOPS":
        return sample["iops"]
    if wl.unit == "MB/s":
        return wl.nbytes / 1e6 / sample["seconds"]
    return sample["seconds"]


def fmt_val(wl, v):
    if wl.unit == "MB/s":
        return f"{v:.0f}"
    if wl.unit == "IOPS":
        return f"{v / 1000:.0f}k" if v >= 100_000 else f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.01 else f"{v * 1000:.1f} ms"
    return f"{v:.2f} s"


def summarize(wl, samples):
    ok = [s for s in samples if "error" not in s]
    if not ok:
        return None
    vals = [value(wl, s) for s in ok]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals), "errors": len(samples) - len(ok),
            # the cost ratio's numerator: time, or time per I/O for IOPS
            "cost": statistics.median([1 / s["iops"] if wl.unit == "IOPS" else s["seconds"] for s in ok])}


def table(wls, results, impls):
    lines = []
    hdr = ["workload"] + [TITLES.get(i, i) for i in impls]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for wl in wls:
        row = [wl.title + {"MB/s": " (MB/s)", "IOPS": " (IOPS; ratio kernel IOPS / IOPS)"}.get(wl.unit, "")]
        sums = {i: summarize(wl, results[wl.name].get(i, [])) for i in impls}
        kern = sums.get("kernel")
        for i in impls:
            s = sums[i]
            samples = results[wl.name].get(i, [])
            if not samples:
                row.append("–")
                continue
            if s is None:
                row.append(f"ERROR ({samples[0].get('error', '?')[:60]})")
                continue
            cell = f"{fmt_val(wl, s['median'])} [{fmt_val(wl, s['min'])}–{fmt_val(wl, s['max'])}]"
            if kern and i != "kernel":
                cell += f" **{s['cost'] / kern['cost']:.2f}×**"
            if s["errors"]:
                cell += f" ({s['errors']} failed)"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def daemon_table(wls, results, impls):
    fuse = [i for i in impls if i in FUSE_IMPLS]
    if not fuse:
        return ""
    lines = ["| workload | " + " | ".join(f"{TITLES.get(i, i)} peak RSS" for i in fuse) + " | "
             + " | ".join(f"{TITLES.get(i, i)} CPU" for i in fuse) + " |"]
    lines.append("|" + "---|" * (1 + 2 * len(fuse)))
    for wl in wls:
        rss, cpu = [], []
        for i in fuse:
            ss = results[wl.name].get(i, [])
            h = [s["vmhwm_kib"] for s in ss if s.get("vmhwm_kib")]
            c = [s["daemon_cpu"] for s in ss if "daemon_cpu" in s]
            rss.append(f"{max(h) / 1024:.1f} MiB" if h else "–")
            cpu.append(f"{statistics.median(c):.2f} s" if c else "–")
        lines.append(f"| {wl.title} | " + " | ".join(rss) + " | " + " | ".join(cpu) + " |")
    return "\n".join(lines)


ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"


def round_trips(tmp):
    """One FUSE round trip's cost on this machine (bench/fuse-rtt.c): through
    /dev/fuse, as fuse-overlayfs talks to the kernel, and through FUSE over
    io_uring, which the kernel offers only while fuse.enable_uring is on
    (turned on for that one measurement if the run has it off)."""
    exe, mnt = os.path.join(tmp, "fuse-rtt"), os.path.join(tmp, "rtt")
    try:
        sh(["cc", "-O2", "-pthread", "-o", exe, os.path.join(HERE, "fuse-rtt.c")])
        os.makedirs(mnt, exist_ok=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"not measured ({e})"

    def measure(mode):
        try:
            text = subprocess.run([exe, mode, mnt, "20000"], check=True, capture_output=True, text=True,
                                  timeout=120).stdout
            return re.search(r"([0-9.]+) us per round trip", text).group(1) + " µs"
        except (subprocess.SubprocessError, AttributeError) as e:
            return f"failed ({e})"
        finally:
            if is_mountpoint(mnt):  # it was killed before its own lazy unmount
                subprocess.run(["umount", "-l", mnt])
    dev = measure("dev")
    try:
        with open(ENABLE_URING) as f:
            was = f.read().strip()
    except OSError:
        return f"/dev/fuse {dev}; no FUSE over io_uring in this kernel"
    try:
        with open(ENABLE_URING, "w") as f:
            f.write("Y\n")
        uring = measure("uring")
    finally:
        with open(ENABLE_URING, "w") as f:
            f.write(f"{was}\n")
    return f"/dev/fuse {dev}; FUSE over io_uring {uring}"


def busy_processes():
    """Builds and test runs on the machine (which would disturb the timings)."""
    names = set()
    for name in ("cargo", "rustc", "cargo-nextest", "cc", "ld"):
        if subprocess.run(["pgrep", "-x", name], stdout=subprocess.DEVNULL).returncode == 0:
            names.add(name)
    return sorted(names)


def machine_info(tmp):
    info = {}
    info["nproc"] = os.cpu_count()
    with open("/proc/meminfo") as f:
        info["memory"] = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info["cpu"] = model
    info["kernel"] = platform.release()
    info["loadavg"] = open("/proc/loadavg").read().split()[:3]
    try:
        info["filesystem"] = out(["findmnt", "-no", "FSTYPE,SOURCE", "-T", tmp]).strip()
    except subprocess.CalledProcessError:
        info["filesystem"] = "?"
    try:
        v = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True)
        info["fuse-overlayfs"] = next(ln for ln in (v.stdout + v.stderr).splitlines() if "fuse-overlayfs" in ln)
    except (FileNotFoundError, StopIteration):
        info["fuse-overlayfs"] = "?"
    try:
        head = out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).strip()
        dirty = out(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"]).strip()
        info["stratafs"] = f"{head}{' + uncommitted changes in src/' if dirty else ''}"
    except subprocess.CalledProcessError:
        info["stratafs"] = "?"
    try:
        mt = os.stat(STRATAFS).st_mtime
        newer = [os.path.join(d, f) for top in ("src", "Cargo.toml", "Cargo.lock")
                 for d, _, fs in (os.walk(os.path.join(REPO, top)) if top == "src" else [(REPO, [], [top])])
                 for f in fs if os.stat(os.path.join(d, f)).st_mtime > mt]
        if newer:
            info["stratafs"] += f" (WARNING: {len(newer)} source files are newer than the binary)"
        info["stratafs binary"] = (f"{os.path.relpath(STRATAFS, REPO)}, built "
                                   f"{datetime.datetime.fromtimestamp(mt, datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    except OSError:
        pass
    return info


def write_report(path, args, cmd, info, wls, results, impls, started, elapsed, mount_opts):
    raw = {wl.name: results[wl.name] for wl in wls}
    fo_rootless = ('; "fuse-overlayfs rootless": the same, run like stratafs rootless (below: its user, its '
                   'layers, fusermount3, allow_other)' if "fuse-overlayfs-rootless" in impls else "")
    text = f"""# Benchmark results

Produced by `bench/run.sh` (see [README.md](README.md) for what each workload does
and how to read this). Do not edit by hand; rerun the harness.

- date: {started:%Y-%m-%d %H:%M UTC}; run took {elapsed:.0f} s
- command: `{cmd}`
- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}
- layers and scratch on: {info['filesystem']}
- the machine's own settings: {info['tuning']}
- one FUSE round trip here (a getxattr loop on `bench/fuse-rtt.c`'s one-file file system): {info['rtt']}
- load average before the run: {' '.join(info['loadavg_before'])}; after: {' '.join(info['loadavg'])}
- {('**WARNING: builds/tests ran during the run, these numbers are disturbed**: '
    + '; '.join(f"{k}: {', '.join(v)}" for k, v in info['disturbed'].items()))
   if info['disturbed'] else 'no cargo/rustc/nextest seen running after any workload'}
{''.join(f"- **NOTE: {n}**{chr(10)}" for n in info['notes'])}- {info['fuse-overlayfs']}, as root{fo_rootless}
- stratafs: commit {info['stratafs']}; {info.get('stratafs binary', '?')}; "stratafs (root)": `stratafs mount`
  as root (FUSE passthrough for upper-layer files); "stratafs rootless": the drop-in command line
  (`stratafs -o lowerdir=…,upperdir=…,workdir=…,allow_other MNT`) run by the
  unprivileged `{ROOTLESS_USER}` through `setpriv`, mounted by fusermount3 (no
  passthrough possible), unmounted by `fusermount3 -u` as that user; its workloads
  run as that user too, who owns the layers as a rootless engine does (the Debian
  stack is chowned to it; the others, root's on disk, it mounts through idmapped
  bind mounts that show their files as its own), the mount and all in it; the
  other columns see the Debian stack through an idmapped bind mount that shows its
  files as root's, as an image's are
- mount options seen in /proc/mounts:
{chr(10).join(f'  - {k}: `{v}`' for k, v in mount_opts.items())}
- repetitions: {args.reps}, implementations interleaved (order rotated each repetition);
  every measurement on a fresh mount with an empty upper directory (a warm workload
  with its cold twin in the run: on the twin's mount, right after its cold sample)
- data: the stacks of bench/README.md; huge/ {args.huge} entries, big files
  {args.big_mib} MiB, tarball {args.untar_files} files

Each cell: median [min–max] of {args.reps} runs; **bold** is the cost ratio to
kernel overlayfs in the same run (time / kernel time, or for MB/s and IOPS
kernel MB/s / MB/s and kernel IOPS / IOPS: a time-equivalent ratio), so below 1×
is faster than the kernel and above 1× slower, in every row. Cold = `sync; echo 3 >
/proc/sys/vm/drop_caches` after mounting; warm = the command ran once, unmeasured,
on the same mount just before. Mount time: from starting the mount command until
the mount point is in /proc/self/mountinfo and answers a stat (caches dropped first).

{table(wls, results, impls)}

Daemon peak RSS (VmHWM, the maximum over the repetitions, read just before
unmounting) and CPU time used during the measured command (median), for the FUSE
implementations:

{daemon_table(wls, results, impls)}

<details><summary>raw samples (seconds; JSON)</summary>

```json
{json.dumps(raw, indent=1)}
```
</details>
"""
    # Sections other harnesses write into the same file (bench/import.sh) are kept.
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        kept = [m.group(0).rstrip("\n") + "\n" for m in re.finditer(
            r"<!-- (bench/[\w.]+): begin -->.*?<!-- \1: end -->", old, re.S)]
    with open(path, "w") as f:
        f.write("\n".join([text] + kept))


def prepare_root_views(stacks, tmp):
    """Stacks whose files are the rootless user's on disk (the Debian image)
    are shown to the other columns through idmapped mounts as root's, as an
    image's files are: walking another user's directories as root makes the
    kernel check their ACLs, which a FUSE mount asks the daemon for again after
    every refresh of a directory's attributes."""
    for st in stacks.values():
        if ROOTLESS_UID and os.stat(st.lowers[-1]).st_uid == ROOTLESS_UID:
            ROOT_LOWERS[st.name] = idmapped_lowers(st, os.path.join(tmp, "idmapped-root"),
                                                   (ROOTLESS_UID, 0), (ROOTLESS_GID, 0))


def prepare_rootless(stacks, tmp):
    """The unprivileged daemon cannot read trusted.overlay.* xattrs: give the
    opaque directories user.overlay.* markers too (kernel overlayfs, as root
    without userxattr, ignores them). Stacks whose files are root's are shown
    to the rootless column through idmapped mounts as its user's; check that
    the user can read the layers."""
    for st in stacks.values():
        sh([STRATAFS, "layer", "add-user-markers"] + st.lowers, stdout=subprocess.DEVNULL)
        if os.stat(st.lowers[-1]).st_uid == 0:
            ROOTLESS_LOWERS[st.name] = idmapped_lowers(st, os.path.join(tmp, "idmapped"),
                                                       (0, ROOTLESS_UID), (0, ROOTLESS_GID))
    probe = os.path.join(ROOTLESS_LOWERS.get("main", stacks["main"].lowers)[-1], "big", "file")
    if subprocess.run(as_user(["test", "-w", probe])).returncode != 0:
        raise SystemExit(f"{ROOTLESS_USER} cannot write {probe} (as the owner it would seem to be): every "
                         "directory above the layers must be searchable by it (--keep-data/--tmpdir in a "
                         "private place?)")


def idmapped_lowers(st, under, uids, gids):
    """The lowers of stack st seen through an idmapped mount of its layers
    made under directory under (see idmapped_layers)."""
    mapped = os.path.join(under, st.name)
    idmapped_layers(os.path.join(st.root, "layers"), mapped, uids, gids)
    return [os.path.join(mapped, os.path.basename(lo)) for lo in st.lowers]


def idmapped_layers(source, target, uids, gids):
    """Bind-mounts source at target with the files of one owner shown as
    another's: uids and gids are (on disk, seen) pairs (an idmapped mount:
    open_tree, mount_setattr with a user namespace mapping the one to the
    other, move_mount). Nothing on disk changes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    sys_open_tree, sys_move_mount, sys_mount_setattr = 428, 429, 442  # the same on every architecture
    at_fdcwd, at_empty_path, at_recursive = -100, 0x1000, 0x8000
    open_tree_clone, open_tree_cloexec = 1, os.O_CLOEXEC
    mount_attr_idmap, move_mount_f_empty_path = 0x100000, 0x4

    def check(r, what):
        if r < 0:
            e = ctypes.get_errno()
            raise SystemExit(f"idmapped mount of {source}: {what}: {os.strerror(e)}")
        return r

    holder = subprocess.Popen(["unshare", "--user", "sleep", "600"])
    try:
        own = os.readlink("/proc/self/ns/user")
        for _ in range(1000):
            if os.readlink(f"/proc/{holder.pid}/ns/user") != own:
                break
            time.sleep(0.005)
        with open(f"/proc/{holder.pid}/uid_map", "w") as f:
            f.write(f"{uids[0]} {uids[1]} 1\n")
        with open(f"/proc/{holder.pid}/gid_map", "w") as f:
            f.write(f"{gids[0]} {gids[1]} 1\n")
        userns = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()
    os.makedirs(target, exist_ok=True)
    tree = check(libc.syscall(sys_open_tree, at_fdcwd, os.fsencode(source),
                              open_tree_clone | open_tree_cloexec | at_recursive), "open_tree")
    try:
        attr = MountAttr(mount_attr_idmap, 0, 0, userns)
        check(libc.syscall(sys_mount_setattr, tree, b"", at_empty_path | at_recursive, ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")
        check(libc.syscall(sys_move_mount, tree, b"", at_fdcwd, os.fsencode(target), move_mount_f_empty_path),
              "move_mount")
    finally:
        os.close(tree)
        os.close(userns)
    IDMAPPED.append(target)


# idmapped mounts of the layers: kept for the whole run (not in MOUNTS, whose
# cleanup after a failed measurement must not take them away)
IDMAPPED = []


def unmount_idmapped():
    """Unmount the idmapped layers; False if one stays (then nothing below
    the scratch directory may be deleted: a bind mount shares its device
    number, so rm --one-file-system would go on into the real layers)."""
    for path in reversed(IDMAPPED):
        for argv in (["umount", path], ["umount", "-l", path]):
            if not is_mountpoint(path):
                break
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stuck = [p for p in IDMAPPED if is_mountpoint(p)]
    for p in stuck:
        log(f"warning: could not unmount {p}")
    IDMAPPED[:] = stuck
    return not stuck


def sample_mount_options(stack, tmp, impls):
    """Mount each implementation once to record the options the kernel shows."""
    opts = {}
    scratch = os.path.join(tmp, "opts")
    for impl in impls:
        if impl == "native":
            continue
        v = View(impl, stack, os.path.join(scratch, impl), [])
        try:
            with open("/proc/mounts") as f:
                for line in f:
                    parts = line.split()
                    if parts[1] == v.root:
                        o = parts[3]
                        # drop the long layer paths, keep the flags
                        o = ",".join(x for x in o.split(",")
                                     if not x.startswith(("lowerdir", "upperdir", "workdir")))
                        opts[impl] = f"{parts[2]} {o}"
        finally:
            v.close()
    rmtree(scratch)
    return opts


def listing(root, counted=()):
    """Every entry under root (name, type, size, mode, symlink target), sorted;
    the top-level directories in counted are only counted."""
    entries, counts = [], {}
    for d, dirs, files in os.walk(root):
        if d == root:
            for c in counted:
                if c in dirs:
                    dirs.remove(c)
                    counts[c] = len(os.listdir(os.path.join(root, c)))
        for name in dirs + files:
            path = os.path.join(d, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                entries.append(f"{rel} f {st.st_size} {st.st_mode:o}")
            elif stat.S_ISLNK(st.st_mode):
                entries.append(f"{rel} l {os.readlink(path)}")
            else:
                entries.append(f"{rel} {stat.S_IFMT(st.st_mode):o} {st.st_mode:o}")
    return sorted(entries), counts


def sanity_check(stacks, tmp, impls):
    """Every implementation must show the same merged trees as the native copies.
    Returns {stack: (entries, counts)} of the native copies and the differences."""
    want, bad = {}, []
    scratch = os.path.join(tmp, "sanity")
    for name, st in stacks.items():
        counted = ("huge",) if name == "main" else ()
        want[name] = listing(st.native, counted)
        for impl in impls:
            if impl == "native":
                continue
            v = View(impl, st, os.path.join(scratch, impl), [])
            try:
                got = listing(v.root, counted)
            finally:
                v.close()
            if got != want[name]:
                extra = set(got[0]) - set(want[name][0])
                missing = set(want[name][0]) - set(got[0])
                bad.append(f"{impl} on {name}: counts {got[1]} (want {want[name][1]}); "
                           f"{len(extra)} extra e.g. {sorted(extra)[:3]}, "
                           f"{len(missing)} missing e.g. {sorted(missing)[:3]}")
    rmtree(scratch)
    return want, bad


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main():
    global STRATAFS, ROOTLESS_USER, ROOTLESS_UID, ROOTLESS_GID
    p = argparse.ArgumentParser(description="Compare native / kernel overlayfs / fuse-overlayfs / stratafs.")
    p.add_argument("--quick", action="store_true", help="3 repetitions, 256 MiB file (< 5 minutes)")
    p.add_argument("--reps", type=int, help="repetitions per workload (default: 3 quick, 5 full)")
    p.add_argument("--big-mib", type=int, help="size of the large lower file (default: 256 quick, 1024 full)")
    p.add_argument("--huge", type=int,
                   help="entries in the large directory (default: 10000 quick, 100000 full)")
    p.add_argument("--untar-files", type=int,
                   help="files in the tarball of untar/rm-untarred, a multiple of 100 up to 10000 "
                        "(default: 2000 quick, 10000 full)")
    p.add_argument("--only", help="comma-separated workload names to run (default: all)")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated subset of {','.join(IMPLS)} (default: all but the last)")
    p.add_argument("--fio-runtime", type=int, help="seconds of each fio run (default: 1 quick, 5 full)")
    p.add_argument("--rootless-user", default=ROOTLESS_USER,
                   help=f"account that runs stratafs-rootless (default {ROOTLESS_USER})")
    p.add_argument("--stratafs", default=STRATAFS, help="stratafs binary (default: target/release/stratafs)")
    p.add_argument("--tmpdir", default="/var/tmp", help="where to build layers and mount (default /var/tmp)")
    p.add_argument("--keep-data", metavar="DIR",
                   help="build the layers in DIR and keep them; reused by later runs with the same sizes")
    p.add_argument("--debian-seed", default=DEBIAN_SEED, metavar="DIR",
                   help=f"copy the Debian image from the test suite's cache DIR if it holds it, instead of "
                        f"debootstrap + apt (default {DEBIAN_SEED}; '' to always build)")
    p.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"), help="report file (default bench/RESULTS.md)")
    p.add_argument("--no-report", action="store_true", help="print the table only, do not write the report")
    p.add_argument("--halt-poll-ns", type=int, default=None, metavar="NS",
                   help="set the guest's cpuidle halt polling (/sys/module/haltpoll/parameters/"
                        "guest_halt_poll_ns) for the run and restore it after; the report says so "
                        "(an experiment: FUSE round trips are cross-CPU wake-ups, which halt "
                        "polling makes cheaper; default: leave the machine as it is)")
    p.add_argument("--uring", choices=["on", "off"], default="on",
                   help="fuse.enable_uring for the run (default on: stratafs then serves requests through "
                        "FUSE over io_uring; fuse-overlayfs 1.10 does not use it); the machine's setting "
                        "is restored after")
    p.add_argument("--damon-off", action="store_true",
                   help="turn the machine's DAMON workers off for the run and back on after; the report "
                        "says so (an experiment: their pageout reclaims page cache the kernel just filled, "
                        "which makes FUSE \"warm\" rows reread from the daemon; default: leave the machine "
                        "as it is)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args()
    args.reps = args.reps or (3 if args.quick else 5)
    args.big_mib = args.big_mib or (256 if args.quick else 1024)
    args.fio_runtime = args.fio_runtime or (1 if args.quick else 5)  # full: 30-minute budget
    # quick: a smaller huge/ and tarball (ls -l of 100k entries, warm-up
    # included, is ~10 s a run on the slowest FUSE columns, untar + rm of 10k
    # files ~10 s: too much for the 5-minute budget)
    args.huge = args.huge or (10_000 if args.quick else 100_000)
    args.untar_files = args.untar_files or (2000 if args.quick else 10_000)
    STRATAFS = os.path.abspath(args.stratafs)
    ROOTLESS_USER = args.rootless_user

    def selected_workloads(data):
        wls = workloads(data, args.big_mib, args.huge, args.untar_files) + fio_workloads(args.big_mib,
                                                                                         args.fio_runtime)
        return [w for w in wls if w.name in args.only.split(",")] if args.only else wls
    if args.list:
        for wl in selected_workloads("DATA"):
            print(f"{wl.name:16} {wl.title}")
        return 0
    if args.only:
        unknown = set(args.only.split(",")) - {w.name for w in selected_workloads("DATA")}
        if unknown:
            p.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    impls = [i for i in args.impls.split(",") if i]
    for i in impls:
        if i not in IMPLS:
            p.error(f"unknown implementation {i}")
    if os.geteuid() != 0:
        p.error("run as root (kernel overlayfs, drop_caches)")
    if {"stratafs", "stratafs-rootless"} & set(impls) and not os.access(STRATAFS, os.X_OK):
        p.error(f"{STRATAFS} missing: cargo build --release")
    if any(w.unit == "IOPS" for w in selected_workloads("DATA")) and not shutil.which("fio"):
        p.error("fio missing: scripts/setup.sh (or apt-get install fio), or leave the fio-* workloads out with --only")
    try:  # also the owner of the Debian layers (build_debian), whether or not it runs
        pw = pwd.getpwnam(ROOTLESS_USER)
        ROOTLESS_UID, ROOTLESS_GID = pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    if ROOTLESS_IMPLS & set(impls):
        if ROOTLESS_UID is None:
            p.error(f"no account {ROOTLESS_USER} for the rootless columns (scripts/setup.sh makes it), "
                    "or leave it out with --impls")
        for tool in ("setpriv", "fusermount3"):
            if not shutil.which(tool):
                p.error(f"{tool} missing (rootless columns)")
    if args.halt_poll_ns is not None and not os.path.exists(HALT_POLL):
        p.error(f"--halt-poll-ns: no {HALT_POLL} (not a guest with the haltpoll cpuidle driver)")
    cmd = os.environ.get("STRATAFS_BENCH_CMD") or " ".join(sys.argv)

    # unmount everything on any exit, including SIGINT/SIGTERM/SIGHUP
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    tmp = tempfile.mkdtemp(prefix="stratafs-bench.", dir=args.tmpdir)
    os.chmod(tmp, 0o755)  # the rootless columns read the layers and own their scratch directories below

    tuning = machine_tuning()
    halt_poll = None
    if args.halt_poll_ns is not None:
        with open(HALT_POLL) as f:
            halt_poll = f.read().strip()
        with open(HALT_POLL, "w") as f:
            f.write(f"{args.halt_poll_ns}\n")
        log(f"guest_halt_poll_ns {halt_poll} -> {args.halt_poll_ns} for this run")

    uring_was = None
    if os.path.exists(ENABLE_URING):
        with open(ENABLE_URING) as f:
            uring_was = f.read().strip()
        with open(ENABLE_URING, "w") as f:
            f.write("Y\n" if args.uring == "on" else "N\n")
        log(f"fuse.enable_uring {uring_was} -> {'Y' if args.uring == 'on' else 'N'} for this run")

    damon = damon_running()
    if args.damon_off:
        for state in damon:
            with open(state, "w") as f:
                f.write("off\n")
        log(f"DAMON workers turned off for this run: {', '.join(damon) or 'none was on'}")

    def cleanup():
        MOUNTS.cleanup()
        if uring_was is not None:
            with open(ENABLE_URING, "w") as f:
                f.write(f"{uring_was}\n")
        if args.damon_off:
            for state in damon:
                with open(state, "w") as f:
                    f.write("on\n")
        if unmount_idmapped() and os.path.isdir(tmp):
            subprocess.run(["rm", "-rf", "--one-file-system", tmp])
        if halt_poll is not None:
            with open(HALT_POLL, "w") as f:
                f.write(f"{halt_poll}\n")
    atexit.register(cleanup)

    loadavg_before = open("/proc/loadavg").read().split()[:3]
    disturbed = {}
    if busy_processes():
        log(f"WARNING: {', '.join(busy_processes())} running; the numbers will be disturbed")
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    data = os.path.abspath(args.keep_data) if args.keep_data else os.path.join(tmp, "data")
    wls = selected_workloads(data)
    stacks, notes = build_data(data, ["main"] + sorted({w.stack for w in wls} - {"main"}),
                               args.big_mib, args.huge, args.untar_files, args.debian_seed)
    if args.damon_off and damon:
        notes.append(f"the machine's DAMON workers ({', '.join(sorted({a for acts in damon.values() for a in acts}))}) "
                     "turned off for this run")
    if uring_was is not None:
        notes.append(f"fuse.enable_uring {'Y' if args.uring == 'on' else 'N'} for this run (the machine's own "
                     f"setting: {uring_was}): stratafs serves "
                     + ("through FUSE over io_uring queues" if args.uring == "on" else "through /dev/fuse")
                     + "; kernel overlayfs and fuse-overlayfs 1.10 do not use it")
    if halt_poll is not None:
        notes.append(f"guest cpuidle halt polling set to {args.halt_poll_ns} ns for this run "
                     f"(guest_halt_poll_ns; the machine's own setting: {halt_poll})")
    for wl in wls:
        if wl.stack not in stacks:
            wl.fall_back_to_tree()
    if set(impls) - ROOTLESS_IMPLS - {"native"}:
        prepare_root_views(stacks, tmp)
    if ROOTLESS_IMPLS & set(impls):
        prepare_rootless(stacks, tmp)
    want, bad = sanity_check(stacks, tmp, impls)
    for name, (entries, counts) in want.items():
        log(f"merged view of {name}: {len(entries)} entries"
            + "".join(f", {n} more in {d}/" for d, n in counts.items()))
    for b in bad:
        log(f"WARNING: merged view differs from native: {b}")
    mount_opts = sample_mount_options(stacks["main"], tmp, impls)
    rtt = round_trips(tmp)
    log(f"one FUSE round trip (getxattr, bench/fuse-rtt.c): {rtt}")

    results = {wl.name: {i: [] for i in impls if wl.runs(i)} for wl in wls}
    selected = {wl.name for wl in wls}
    twins = {wl.after: wl for wl in wls if wl.after in selected}  # cold name -> warm twin
    n = 0
    for wl in wls:
        if wl.after in selected:
            continue  # measured with its cold twin
        group = [wl] + ([twins[wl.name]] if wl.name in twins else [])
        t_wl = time.monotonic()
        wl_impls = list(results[wl.name])
        for rep in range(args.reps):
            order = wl_impls[rep % len(wl_impls):] + wl_impls[:rep % len(wl_impls)]
            for impl in order:
                n += 1
                for w, res in zip(group, measure(impl, group, stacks[wl.stack], os.path.join(tmp, f"m{n}"))):
                    results[w.name][impl].append(res)
                    if "error" in res:
                        log(f"{w.name} {impl}: ERROR {res['error']}")
        b = busy_processes()
        for w in group:
            if b:
                disturbed[w.name] = b
                log(f"WARNING: {', '.join(b)} running during {w.name}")
            took = f"{time.monotonic() - t_wl:.1f}s" if w is wl else f"(with {wl.name})"
            log(f"{w.name}: {took}  " + "  ".join(
                f"{i}={fmt_val(w, summarize(w, results[w.name][i])['median'])}"
                if summarize(w, results[w.name][i]) else f"{i}=ERR" for i in wl_impls))
    elapsed = time.monotonic() - t_start
    print(table(wls, results, impls))
    print()
    print(daemon_table(wls, results, impls))
    if not args.no_report:
        info = machine_info(args.tmpdir)
        info["loadavg_before"] = loadavg_before
        info["tuning"] = tuning
        info["rtt"] = rtt
        info["disturbed"] = disturbed
        info["notes"] = notes
        write_report(args.output, args, cmd, info, wls, results, impls, started, elapsed, mount_opts)
        log(f"wrote {args.output}")
    for note in notes:
        log(f"NOTE: {note}")
    log(f"total {elapsed:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
