#!/usr/bin/env python3
"""Startup overhead of `stratafs run` (mount, run `true`, unmount, clean up)
against doing the same by hand with kernel overlayfs and fuse-overlayfs.

Usage: sudo python3 bench/run_overhead.py [--reps N] [--bin PATH] [--no-write]
Writes its own section of bench/RESULTS.md (kept by bench/run.sh).
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time

BEGIN = "<!-- bench/run_overhead.py: begin -->"
END = "<!-- bench/run_overhead.py: end -->"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def by_hand(mount_cmd, umount_cmd, mnt):
    t = time.perf_counter()
    subprocess.run(mount_cmd, check=True, stderr=subprocess.DEVNULL)
    subprocess.run(["true"], cwd=mnt, check=True)
    subprocess.run(umount_cmd, check=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/stratafs"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (kernel overlayfs and the unprivileged column need it)")
    tmp = tempfile.mkdtemp(prefix="stratafs-run-bench.")
    os.chmod(tmp, 0o755)
    try:
        lower = os.path.join(tmp, "lower")
        os.makedirs(os.path.join(lower, "etc"))
        for i in range(200):
            with open(os.path.join(lower, "etc", f"f{i}"), "w") as f:
                f.write("x\n")
        for d in ["upper", "work", "mnt"]:
            os.makedirs(os.path.join(tmp, d))
        up, wk, mnt = (os.path.join(tmp, d) for d in ["upper", "work", "mnt"])

        def reset():
            for d in (up, wk):
                shutil.rmtree(d)
                os.makedirs(d)

        user = "stratafs-test"
        have_user = subprocess.run(["id", user], capture_output=True).returncode == 0
        impls = {
            "true alone": lambda: timed(["true"]),
            "stratafs run (root)": lambda: timed([a.bin, "run", "--lower", lower, "--", "true"]),
            "kernel overlayfs by hand": lambda: (reset(), by_hand(
                ["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={lower},upperdir={up},workdir={wk}", mnt],
                ["umount", mnt], mnt))[1],
        }
        if shutil.which("fuse-overlayfs"):
            impls["fuse-overlayfs by hand"] = lambda: (reset(), by_hand(
                ["fuse-overlayfs", "-o", f"lowerdir={lower},upperdir={up},workdir={wk}", mnt],
                ["fusermount3", "-u", mnt], mnt))[1]
        if have_user:
            impls["stratafs run (unprivileged)"] = lambda: timed(
                ["setpriv", "--reuid", user, "--regid", user, "--clear-groups",
                 a.bin, "run", "--lower", lower, "--", "true"],
                env={**os.environ, "TMPDIR": "/tmp"})
        samples = {k: [] for k in impls}
        for _ in range(a.reps):
            for k, f in impls.items():
                samples[k].append(f())
        base = statistics.median(samples["kernel overlayfs by hand"])
        rows = []
        for k, v in samples.items():
            med = statistics.median(v)
            rows.append(f"| {k} | {med * 1000:.1f} ms | {min(v) * 1000:.1f}–{max(v) * 1000:.1f} ms | {med / base:.2f}× |")
        table = "\n".join(["| what | median | min–max | ratio to kernel by hand |",
                           "|---|---|---|---|"] + rows)
        print(table)
        if a.no_write:
            return
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        section = f"""{BEGIN}
## `stratafs run` startup overhead (`bench/run_overhead.py`)

Mount a one-layer view with a writable layer, run `true` inside it, unmount
and clean up; {a.reps} repetitions, interleaved. "By hand" is the same with the
peer's own mount and unmount commands (and a fresh upper/work each time).
Target (issue 7): under 50 ms.

Machine: {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()};
{datetime.date.today()}; commit {rev}; `sudo python3 bench/run_overhead.py --reps {a.reps}`.

{table}
{END}
"""
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        old = open(path).read() if os.path.exists(path) else ""
        if BEGIN in old:
            new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", section, old, flags=re.S)
        else:
            new = old.rstrip("\n") + "\n\n" + section
        with open(path, "w") as f:
            f.write(new)
    finally:
        subprocess.run(["umount", "-l", os.path.join(tmp, "mnt")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
