#!/usr/bin/env python3
"""Layer store import and verify throughput (standard library only; run through
bench/import.sh). See bench/README.md, "Import and verify".

Input: the Debian image the test suite caches in /var/cache/stratafs-tests
(debootstrap bookworm minbase + a layer made with apt in a kernel overlay), as
two OCI layer tars made by GNU tar (the top layer's char 0/0 whiteouts and
opaque xattrs converted to `.wh.` files first), uncompressed and gzip -6. The
same bytes go to every contender:

  stratafs layer import   `layer import` of both tars into a fresh store
  stratafs image import   `image import` of an OCI layout holding them (also
                          checks blob digests and diff_ids), fresh store
  umoci unpack            `umoci unpack` of that layout, as root
  tar -x                  GNU tar --xattrs --numeric-owner -xp of both tars into
                          one directory (no whiteout processing: a floor)

and, on a store holding both layers, `stratafs layer verify --all` against
single-core baselines: the same file content (each inode once) through
`xargs -0 cat` into `sha256sum`, and into `openssl dgst -sha256`.

Every import is timed with a final `sync` (stratafs flushes a layer before
publishing it, the others do not). Cold: `sync; echo 3 > drop_caches` just
before; warm: right after the cold run of the same command (the input is in the
page cache). Contenders interleaved, order rotated each repetition.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import bench as B  # noqa: E402  (shared helpers: log, drop_caches, busy_processes, machine info)

CACHE = "/var/cache/stratafs-tests"
ROOTFS = os.path.join(CACHE, "bookworm-minbase-v1", "tree")
LAYER = os.path.join(CACHE, "bookworm-layer1-v1", "tree")
MB = 1e6
BEGIN = "<!-- bench/import.sh: begin -->"
END = "<!-- bench/import.sh: end -->"
IMPORTERS = ["stratafs layer import", "stratafs image import", "umoci unpack", "tar -x"]
VERIFIERS = ["stratafs layer verify --all", "sha256sum (xargs cat)", "openssl sha256 (xargs cat)"]


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)


# ---------------------------------------------------------------------------
# input
# ---------------------------------------------------------------------------


def to_oci(src, dst):
    """Copies a kernel-dialect layer to the OCI dialect (what a layer tar holds)."""
    run(["cp", "-a", "--", src, dst])

    def marker(p):
        with open(p, "wb"):
            pass
        os.chmod(p, 0o644)
        os.lchown(p, 0, 0)
        os.utime(p, ns=(0, 0), follow_symlinks=False)

    def drop_overlay_xattrs(p):
        opaque = False
        for name in os.listxattr(p, follow_symlinks=False):
            if name.startswith("trusted.overlay."):
                if name == "trusted.overlay.opaque" and os.getxattr(p, name, follow_symlinks=False) == b"y":
                    opaque = True
                os.removexattr(p, name, follow_symlinks=False)
        return opaque

    def fix(s, d):
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.unlink(p)
                marker(os.path.join(d, ".wh." + name))
            elif stat.S_ISDIR(st.st_mode):
                fix(os.path.join(s, name), p)
            else:
                drop_overlay_xattrs(p)
        if drop_overlay_xattrs(d):
            marker(os.path.join(d, ".wh..wh..opq"))
        sst = os.lstat(s)
        os.utime(d, ns=(sst.st_atime_ns, sst.st_mtime_ns), follow_symlinks=False)

    fix(src, dst)


def gnu_tar(src, out):
    run(["tar", "--create", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner",
         "--sort=name", "--pax-option=delete=atime,delete=ctime", "--file", out, "--directory", src, "."])


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def put_json(layout, v):
    b = json.dumps(v, separators=(",", ":")).encode()
    d = "sha256:" + hashlib.sha256(b).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d[7:]), "wb") as f:
        f.write(b)
    return {"digest": d, "size": len(b)}


def make_layout(layout, blobs, diff_ids, media_type):
    """An OCI layout (tag `t`) whose layers are the given files (hard-linked in)."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    layers = []
    for p in blobs:
        d = sha256_file(p)
        os.link(p, os.path.join(layout, "blobs", "sha256", d[7:]))
        layers.append({"mediaType": media_type, "digest": d, "size": os.path.getsize(p)})
    config = put_json(layout, {"architecture": "amd64", "os": "linux", "config": {},
                               "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = put_json(layout, {"schemaVersion": 2,
                                 "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                                 "layers": layers})
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


def build_input(tmp):
    B.log("converting the top layer to .wh. markers, making the tars")
    top = os.path.join(tmp, "top-oci")
    to_oci(LAYER, top)
    tars = [os.path.join(tmp, "rootfs.tar"), os.path.join(tmp, "top.tar")]
    gnu_tar(ROOTFS, tars[0])
    gnu_tar(top, tars[1])
    B.rmtree(top)
    gzs = []
    for t in tars:
        with open(t + ".gz", "wb") as f:
            subprocess.run(["gzip", "-6", "-n", "-c", t], check=True, stdout=f)
        gzs.append(t + ".gz")
    diff_ids = [sha256_file(t) for t in tars]
    inputs = {}
    for name, files, mt in (("uncompressed", tars, "application/vnd.oci.image.layer.v1.tar"),
                            ("gzip", gzs, "application/vnd.oci.image.layer.v1.tar+gzip")):
        layout = os.path.join(tmp, f"layout-{name}")
        make_layout(layout, files, diff_ids, mt)
        inputs[name] = {"files": files, "layout": layout, "gzip": name == "gzip",
                        "bytes": sum(os.path.getsize(f) for f in files)}
    tar_bytes = inputs["uncompressed"]["bytes"]
    for i in inputs.values():
        i["tar_bytes"] = tar_bytes
    return inputs


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------


def importer_argvs(who, inp, stratafs, out):
    if who == "stratafs layer import":
        return [[stratafs, "--store", out, "layer", "import", f] for f in inp["files"]]
    if who == "stratafs image import":
        return [[stratafs, "--store", out, "image", "import", inp["layout"] + ":t"]]
    if who == "umoci unpack":
        return [["umoci", "unpack", "--image", inp["layout"] + ":t", out]]
    if who == "tar -x":
        z = ["-z"] if inp["gzip"] else []
        return [["tar", "--extract", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                 "--preserve-permissions", *z, "--file", f, "--directory", out] for f in inp["files"]]
    raise ValueError(who)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argvs, cold, sync=True):
    """Runs the commands one after the other; returns (wall seconds, CPU seconds of them)."""
    if cold:
        B.drop_caches()
    else:
        os.sync()
    c0 = children_cpu()
    t0 = time.monotonic()
    for a in argvs:
        run(a)
    if sync:
        os.sync()
    return time.monotonic() - t0, children_cpu() - c0


def measure_import(who, inp, stratafs, out, cold):
    """One timed import into `out` (left in place: deleting it would load the next run)."""
    if who == "tar -x":
        os.makedirs(out)
    try:
        secs, cpu = timed(importer_argvs(who, inp, stratafs, out), cold)
        digests = None
        if who.startswith("stratafs"):
            v = json.loads(subprocess.run([stratafs, "--store", out, "layer", "ls", "--json"], check=True,
                                          capture_output=True, text=True).stdout)
            digests = sorted(x["digest"] for x in v)
        return {"seconds": secs, "cpu": cpu, "digests": digests}
    except subprocess.CalledProcessError as e:
        return {"error": str(e)}


def clean(paths):
    """Removes outputs between measurements, then lets the file system settle (the root file
    system may be mounted with `discard`: freed blocks are trimmed when the deletion commits)."""
    for p in paths:
        B.rmtree(p)
    os.sync()
    time.sleep(1)


def unique_files(roots, listfile):
    """Writes a NUL-separated list of the regular files below roots, each inode once."""
    seen = set()
    total = 0
    with open(listfile, "wb") as f:
        for r in roots:
            for d, dirs, files in os.walk(r):
                dirs.sort()
                for n in sorted(files):
                    p = os.path.join(d, n)
                    st = os.lstat(p)
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
                    f.write(p.encode() + b"\0")
    return total


def verifier_argv(who, store, stratafs, listfile):
    if who == "stratafs layer verify --all":
        return [stratafs, "--store", store, "layer", "verify", "--all"]
    if who.startswith("sha256sum"):
        return ["sh", "-c", 'xargs -0 -a "$0" cat | sha256sum', listfile]
    return ["sh", "-c", 'xargs -0 -a "$0" cat | openssl dgst -sha256', listfile]


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def stats(samples):
    ok = [s["seconds"] for s in samples if "seconds" in s]
    if not ok:
        return None
    cpu = [s["cpu"] for s in samples if "cpu" in s]
    return {"median": statistics.median(ok), "min": min(ok), "max": max(ok), "n": len(ok),
            "cpu": statistics.median(cpu) if cpu else None}


def fmt_s(v):
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def cell(s, nbytes, refs, cpu=False):
    if s is None:
        return "ERROR"
    c = f"{fmt_s(s['median'])} [{fmt_s(s['min'])}–{fmt_s(s['max'])}], {nbytes / MB / s['median']:.0f} MB/s"
    if cpu and s["cpu"] is not None:
        c += f", CPU {fmt_s(s['cpu'])}"
    for name, r in refs:
        if r:
            c += f", **{s['median'] / r['median']:.2f}× {name}**"
    return c


def import_table(inputs, res):
    lines = ["| input | " + " | ".join(IMPORTERS) + " |", "|" + "---|" * (len(IMPORTERS) + 1)]
    for name, inp in inputs.items():
        for mode in ("cold", "warm"):
            r = res[name][mode]
            s = {w: stats(r[w]) for w in IMPORTERS}
            row = [f"{name} ({inp['bytes'] / MB:.0f} MB), {mode}"]
            for w in IMPORTERS:
                refs = [] if w == "tar -x" else ([("tar", s["tar -x"])] if w == "umoci unpack"
                                                 else [("umoci", s["umoci unpack"]), ("tar", s["tar -x"])])
                row.append(cell(s[w], inp["tar_bytes"], refs))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verify_table(vbytes, vres):
    lines = ["| cache | " + " | ".join(VERIFIERS) + " |", "|" + "---|" * (len(VERIFIERS) + 1)]
    for mode in ("cold", "warm"):
        s = {w: stats(vres[mode][w]) for w in VERIFIERS}
        row = [mode]
        for w in VERIFIERS:
            refs = [("sha256sum", s[VERIFIERS[1]])] if w != VERIFIERS[1] else []
            row.append(cell(s[w], vbytes, refs, cpu=True))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def section(args, cmd, info, inputs, res, vbytes, vres, started, elapsed, digests, bad):
    # Seconds and CPU seconds only (the digests were checked).
    raw = {"import": {n: {m: {w: [{k: v for k, v in x.items() if k != "digests"} for x in xs]
                              for w, xs in ws.items()} for m, ws in ms.items()} for n, ms in res.items()},
           "verify": vres}
    return f"""{BEGIN}
## Import and verify (`bench/import.sh`)

Written by `bench/import.sh` into this section only (see [README.md](README.md),
"Import and verify"); `bench/run.sh` keeps it. Do not edit by hand; rerun it.

- date: {started:%Y-%m-%d %H:%M UTC}; run took {elapsed:.0f} s
- command: `{cmd}`
- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}; scratch on {info['filesystem']}
- load average before the run: {' '.join(info['loadavg_before'])}; after: {' '.join(info['loadavg'])}
- {('**WARNING: builds/tests ran during the run, these numbers are disturbed**: '
    + '; '.join(f"{k}: {', '.join(v)}" for k, v in info['disturbed'].items()))
   if info['disturbed'] else 'no cargo/rustc/nextest seen running during the run'}
- stratafs: commit {info['stratafs']}; {info.get('stratafs binary', '?')}; as root
- {info['umoci']}; {info['tar']}; {info['gzip']}; {info['sha256sum']}; {info['openssl']}
- input: the cached Debian image (bookworm minbase + an apt layer), 2 layers as GNU tar
  (`--format=pax --xattrs --numeric-owner --sort=name`), {inputs['uncompressed']['bytes'] / MB:.0f} MB;
  gzip -6: {inputs['gzip']['bytes'] / MB:.0f} MB. Layer digests (those of the original
  directories): {', '.join(f'`{d[:19]}…`' for d in digests)};
  {f'**WARNING: some imports stored other layers: {sorted(bad)}**' if bad else 'every stratafs import stored exactly these'}
- repetitions: {args.reps}, contenders interleaved (order rotated each repetition)

Each cell: median [min–max] of {args.reps} runs, throughput in MB of **uncompressed
tar** per second (so the gzip rows compare decompression too), and in bold the time
ratio to umoci / to tar in the same run (below 1× is faster). Imports are timed
with a final `sync`; each stratafs import goes to a fresh store. Cold = `sync;
echo 3 > /proc/sys/vm/drop_caches` just before; warm = right after the cold run.

{import_table(inputs, res)}

Verification of the stored layers ({vbytes / MB:.0f} MB of file content, each inode
once): `stratafs layer verify --all` (which also rebuilds and hashes each layer's
manifest) vs the same files through `xargs -0 cat` into one hash process: coreutils
`sha256sum` (the baseline of the ratios) and `openssl dgst -sha256` (which, like
stratafs' sha2 crate, uses the CPU's SHA extensions when there are any). CPU =
user + system time of the command and its children (one core's worth or less
means single-threaded):

{verify_table(vbytes, vres)}

<details><summary>raw samples (seconds; JSON)</summary>

```json
{json.dumps(raw)}
```
</details>
{END}
"""


def write_section(path, text):
    old = open(path).read() if os.path.exists(path) else ""
    pat = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pat.search(old):
        new = pat.sub(lambda _m: text, old, count=1)
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    with open(path, "w") as f:
        f.write(new)


def version(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


# ---------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description="Layer store import/verify throughput vs umoci and tar.")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--stratafs", default=B.STRATAFS, help="stratafs binary (default: target/release/stratafs)")
    p.add_argument("--tmpdir", default="/var/tmp", help="scratch directory (default /var/tmp)")
    p.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"),
                   help="report file (default bench/RESULTS.md; only this harness's section is replaced)")
    p.add_argument("--no-report", action="store_true", help="print the tables only")
    args = p.parse_args()
    stratafs = os.path.abspath(args.stratafs)
    B.STRATAFS = stratafs
    if os.geteuid() != 0:
        p.error("run as root (drop_caches, umoci unpack with real owners)")
    if not os.access(stratafs, os.X_OK):
        p.error(f"{stratafs} missing: cargo build --release")
    for tool in ("umoci", "tar", "gzip", "sha256sum", "openssl"):
        if not shutil.which(tool):
            p.error(f"{tool} not found (scripts/setup.sh installs umoci)")
    if not (os.path.isdir(ROOTFS) and os.path.isdir(LAYER)):
        p.error(f"the Debian image is not cached in {CACHE}: run `cargo nextest run --test debian_image` once")
    cmd = os.environ.get("STRATAFS_BENCH_CMD") or " ".join(sys.argv)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    tmp = tempfile.mkdtemp(prefix="stratafs-import-bench.", dir=args.tmpdir)
    atexit.register(lambda: B.rmtree(tmp))

    loadavg_before = open("/proc/loadavg").read().split()[:3]
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    busy = set(B.busy_processes())
    inputs = build_input(tmp)

    res = {name: {mode: {w: [] for w in IMPORTERS} for mode in ("cold", "warm")} for name in inputs}
    digests = set()
    n = 0
    for rep in range(args.reps):
        for name, inp in inputs.items():
            order = IMPORTERS[rep % len(IMPORTERS):] + IMPORTERS[:rep % len(IMPORTERS)]
            for who in order:
                outs = []
                for mode in ("cold", "warm"):
                    n += 1
                    outs.append(os.path.join(tmp, f"m{n}"))
                    r = measure_import(who, inp, stratafs, outs[-1], mode == "cold")
                    res[name][mode][who].append(r)
                    if r.get("digests"):
                        digests.add(tuple(r["digests"]))
                    if "error" in r:
                        B.log(f"{name} {who} {mode}: ERROR {r['error']}")
                clean(outs)
            busy.update(B.busy_processes())
        B.log(f"import repetition {rep + 1}/{args.reps} done")

    # The store verified below holds the original directories: their digests are what every
    # import of the tars must have stored.
    store = os.path.join(tmp, "verify-store")
    expected = tuple(sorted(subprocess.run([stratafs, "--store", store, "layer", "import", d], check=True,
                                           capture_output=True, text=True).stdout.split()[0]
                            for d in (ROOTFS, LAYER)))
    bad = digests - {expected}
    if bad:
        B.log(f"WARNING: stratafs imports stored {bad}, the layer directories are {expected}")
    listfile = os.path.join(tmp, "files.list")
    vbytes = unique_files(sorted(os.path.join(store, "layers", "sha256", d, "tree")
                                 for d in os.listdir(os.path.join(store, "layers", "sha256"))), listfile)
    vres = {mode: {w: [] for w in VERIFIERS} for mode in ("cold", "warm")}
    for rep in range(args.reps):
        order = VERIFIERS[rep % len(VERIFIERS):] + VERIFIERS[:rep % len(VERIFIERS)]
        for who in order:
            for mode in ("cold", "warm"):
                argv = verifier_argv(who, store, stratafs, listfile)
                try:
                    secs, cpu = timed([argv], mode == "cold", sync=False)
                    vres[mode][who].append({"seconds": secs, "cpu": cpu})
                except subprocess.CalledProcessError as e:
                    vres[mode][who].append({"error": str(e)})
        busy.update(B.busy_processes())
    elapsed = time.monotonic() - t_start

    print(import_table(inputs, res))
    print()
    print(verify_table(vbytes, vres))
    if not args.no_report:
        info = B.machine_info(args.tmpdir)
        info["loadavg_before"] = loadavg_before
        info["disturbed"] = {"run": sorted(busy)} if busy else {}
        info["umoci"] = version(["umoci", "--version"])
        info["tar"] = version(["tar", "--version"])
        info["gzip"] = version(["gzip", "--version"])
        info["sha256sum"] = version(["sha256sum", "--version"])
        info["openssl"] = version(["openssl", "version"])
        text = section(args, cmd, info, inputs, res, vbytes, vres, started, elapsed, expected, bad)
        write_section(args.output, text)
        B.log(f"wrote the import section of {args.output}")
    B.log(f"total {elapsed:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
