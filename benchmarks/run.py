"""``imgpipe run --rm IMAGE /bin/true`` against ``runc run`` of a prepared bundle.

    .venv-bench/bin/python benchmarks/run.py [--runs 30] [--dir DIR] [--baseline IMGPIPE]

As root, with runc installed. Builds the busybox fixture image, pulls it into a fresh
root under ``--dir`` and runs it once (so it is unpacked: the benchmark measures the run,
not the unpack). Then alternates, in one run:

- imgpipe: ``imgpipe --root R run --rm busybox /bin/true``: Python start-up and imports,
  image and config lookup, an active snapshot on the unpacked top layer, mount, user
  resolution, spec, ``runc create``/``start``, wait, ``runc delete``, unmount, snapshot
  removal;
- the floor: ``runc run`` of a bundle prepared once (a plain directory rootfs and the
  very config.json imgpipe wrote), i.e. the runtime's own cost for the same container;
- two rows that split the overhead: ``runc create/start/delete`` (the three calls
  imgpipe makes, as containerd's shim does, on the same bundle) and ``python + runc
  create/start/delete`` (the same interpreter, importing only what driving runc needs:
  json, sqlite3, subprocess, ctypes, as a subreaper), the floor of this design before
  any imgpipe code runs; and the same with the standard-library packages ``imgpipe run``
  really imports (found by running it once) imported first: what is left is imgpipe's own.

``--baseline IMGPIPE`` adds another tree's installed ``imgpipe`` (same root, same
args) as one more alternating row: before and after in one run.

Byte-code caching: the interpreter is run with ``PYTHONPYCACHEPREFIX`` in the work
directory and ``PYTHONDONTWRITEBYTECODE`` unset, after a warm-up run, as an installed
package has its ``.pyc`` files (compiling on every start would add ~40 ms).

Reports median, min and max wall time and the median CPU time (user+sys of the
command and the processes it waited for, from ``wait4``) of each, the machine's load
average before and after, and the median overhead of imgpipe over the floor, in
milliseconds; ``imgpipe --version`` is timed too (the CLI's start-up).
containerd's ``ctr run --rm ... /bin/true`` took 135 ms on this machine (issue 6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # fixtures/; the installed imgpipe comes first
IMGPIPE = Path(sys.executable).parent / "imgpipe"
CTR_RUN_MS = 135  # issue 6: containerd's `ctr run --rm` here, for scale


#: What `python + runc create/start/delete` runs: the interpreter, the imports driving
#: runc takes, a subreaper, three runc calls and the wait for the container's init.
_DRIVER = """
import ctypes, json, os, sqlite3, subprocess, sys
runc, bundle, cid = sys.argv[1:4]
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0
rt = [*runc.split(), "--log", os.path.join(bundle, "log.json"), "--log-format", "json"]
pid_file = os.path.join(bundle, "init.pid")
subprocess.run([*rt, "create", "--bundle", bundle, "--pid-file", pid_file, cid],
               check=True, stdin=subprocess.DEVNULL)
pid = int(open(pid_file).read())
subprocess.run([*rt, "start", cid], check=True)
os.waitpid(pid, 0)
subprocess.run([*rt, "delete", "--force", cid], check=True)
"""


#: Prints the top-level standard-library modules ``imgpipe ARGV`` imports (public ones).
_STDLIB_PROBE = """
import sys
before = set(sys.modules)
from imgpipe.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code:
        raise
new = {m.split(".")[0] for m in sys.modules if m not in before}
print(" ".join(sorted(m for m in new if m in sys.stdlib_module_names and m[0] != "_")))
"""


def _stdlib_of(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """The standard-library packages the imgpipe command ``argv`` loads beyond start-up."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", _STDLIB_PROBE, *argv],  # -P: not this tree's imgpipe/
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"probe of {' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout.split()


def _timed(argv: Sequence[str | os.PathLike[str]], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user+sys, with the children it waited for) of a command."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, argv))}: exit {os.waitstatus_to_exitcode(status)}")
    return wall, rusage.ru_utime + rusage.ru_stime


def _stats(name: str, xs: list[tuple[float, float]]) -> str:
    ms = [w * 1000 for w, _ in xs]
    cpu = statistics.median(c * 1000 for _, c in xs)
    return f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} | {cpu:.1f} |"


def _run_three(runc: list[str], bundle: Path) -> list[str]:
    return ["sh", "-c", 'r="$1"; b="$2"; $r create --bundle "$b" c3 </dev/null && '
            '$r start c3 && $r delete --force c3', "-", " ".join(runc), str(bundle)]  # fmt: skip


def bench(work: Path, runs: int, baseline: Path | None = None) -> str:
    from fixtures.build import build_image

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    root = work / "root"
    layout = build_image("busybox", work / "fixtures")
    imgpipe = [str(IMGPIPE), "--root", str(root)]
    subprocess.run([*imgpipe, "-q", "pull", f"oci:{layout}:busybox"], check=True, env=env)
    # unpack, and keep one container to copy its config.json for the floor's bundle
    subprocess.run([*imgpipe, "run", "--name", "spec", "busybox", "/bin/true"], check=True, env=env)
    spec = json.loads((root / "tasks" / "spec" / "config.json").read_text())
    bundle = work / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=work) as mnt:
        from imgpipe.store import Store
        from imgpipe.unpacking import prepare_rootfs

        with Store(root) as store:
            sn, mounts = prepare_rootfs("busybox", "bench-copy", read_only=True, store=store)
            from imgpipe.snapshots import mount_all, unmount

            mount_all(mounts, mnt)
            try:
                shutil.copytree(mnt, bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
            finally:
                unmount(mnt)
                sn.remove("bench-copy")
    spec["root"] = {"path": "rootfs"}
    spec["linux"]["cgroupsPath"] = "/imgpipe-bench/floor"
    (bundle / "config.json").write_text(json.dumps(spec))
    subprocess.run([*imgpipe, "rm", "spec"], check=True, env=env, stdout=subprocess.DEVNULL)
    runc = ["runc", "--root", str(work / "runc")]
    stdlib = _stdlib_of(["--root", str(root), "run", "--rm", "busybox", "/bin/true"], env)

    commands = {
        "imgpipe run --rm busybox /bin/true": [*imgpipe, "run", "--rm", "busybox", "/bin/true"],
        "runc run (prepared bundle, the floor)": [*runc, "run", "--bundle", str(bundle), "floor"],
        "runc create/start/delete (same bundle)": _run_three(runc, bundle),
        "python + runc create/start/delete": [
            sys.executable, "-c", _DRIVER, " ".join(runc), str(bundle), "drv",
        ],
        "python + run's stdlib imports + runc create/start/delete": [
            sys.executable, "-c", f"import {', '.join(stdlib)}\n{_DRIVER}", " ".join(runc),
            str(bundle), "drv2",
        ],
        "python -c pass (the interpreter)": [sys.executable, "-c", "pass"],
        "imgpipe --version (CLI start-up)": [*imgpipe, "--version"],
    }  # fmt: skip
    if baseline is not None:  # another tree's imgpipe on the same root, alternating too
        commands["baseline: imgpipe run --rm busybox /bin/true"] = [
            str(baseline), "--root", str(root), "run", "--rm", "busybox", "/bin/true",
        ]  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for argv in commands.values():  # warm-up (.pyc, caches)
        _timed(argv, env)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    names = list(commands)
    for i in range(runs):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(_timed(commands[name], env))
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    med = {k: statistics.median(w for w, _ in v) * 1000 for k, v in times.items()}
    ours, floor = med[names[0]], med[names[1]]
    return "\n".join(
        [
            f"{runs} runs each, alternating; ms; work dir {work}; load average before "
            f"{load_before}, after {load_after}",
            "",
            "| command | median ms | min ms | max ms | CPU ms (median) |",
            "|---|---|---|---|---|",
            *(_stats(k, v) for k, v in times.items()),
            "",
            f"imgpipe overhead over runc run (median): **{ours - floor:.1f} ms**; the design's "
            f"floor (python + create/start/delete) is {med[names[3]] - floor:.1f} ms over it; "
            f"imgpipe run / ctr run --rm ({CTR_RUN_MS} ms): **{ours / CTR_RUN_MS:.2f}**; with "
            f"the standard library run imports ({len(stdlib)} packages: {' '.join(stdlib)}) "
            f"the floor is {med[names[4]] - floor:.1f} ms over it",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /tmp)")
    parser.add_argument(
        "--baseline", type=Path, help="another imgpipe executable (e.g. an older tree's), timed too"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("runc") is None:
        print("needs root and runc (apt-get install runc)", file=sys.stderr)
        return 1
    probe = subprocess.run([IMGPIPE, "run", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        print("`imgpipe run` is not available (cli/cmd_run.py not registered)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="imgpipe-run-bench-", dir=args.dir))
    try:
        print(bench(work, args.runs, args.baseline))
    finally:
        for cid in ("floor", "c3", "drv", "drv2"):
            subprocess.run(
                ["runc", "--root", str(work / "runc"), "delete", "-f", cid],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
