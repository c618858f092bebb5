"""``imgpipe run --rm IMAGE /bin/true`` against ``runc run`` of a prepared bundle.

    .venv/bin/python benchmarks/run.py [--runs 30] [--dir DIR]

As root, with runc installed. Builds the busybox fixture image, pulls it into a fresh
root under ``--dir`` and runs it once (so it is unpacked: the benchmark measures the run,
not the unpack). Then alternates, in one run:

- imgpipe: ``imgpipe --root R run --rm busybox /bin/true``: Python start-up and imports,
  image and config lookup, an active snapshot on the unpacked top layer, mount, user
  resolution, spec, ``runc create``/``start``, wait, ``runc delete``, unmount, snapshot
  removal;
- the floor: ``runc run`` of a bundle prepared once (a plain directory rootfs and the
  very config.json imgpipe wrote), i.e. the runtime's own cost for the same container.

Byte-code caching: the interpreter is run with ``PYTHONPYCACHEPREFIX`` in the work
directory and ``PYTHONDONTWRITEBYTECODE`` unset, after a warm-up run, as an installed
package has its ``.pyc`` files (compiling on every start would add ~40 ms).

Reports median, min and max wall time of each, and the median overhead of imgpipe over
the floor, in milliseconds; ``imgpipe --version`` is timed too (the CLI's start-up).
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
sys.path.insert(0, str(REPO))
IMGPIPE = Path(sys.executable).parent / "imgpipe"
CTR_RUN_MS = 135  # issue 6: containerd's `ctr run --rm` here, for scale


def _timed(argv: Sequence[str | os.PathLike[str]], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _stats(name: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |"


def bench(work: Path, runs: int) -> str:
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

    ours, floor, version = [], [], []
    run_cmd = [*imgpipe, "run", "--rm", "busybox", "/bin/true"]
    floor_cmd = [*runc, "run", "--bundle", str(bundle), "floor"]
    for argv in (run_cmd, floor_cmd, [*imgpipe, "--version"]):  # warm-up (.pyc, caches)
        _timed(argv, env)
    for _ in range(runs):
        ours.append(_timed(run_cmd, env))
        floor.append(_timed(floor_cmd, env))
        version.append(_timed([*imgpipe, "--version"], env))
    overhead = (statistics.median(ours) - statistics.median(floor)) * 1000
    return "\n".join(
        [
            f"{runs} runs each, alternating; wall time in ms; work dir {work}",
            "",
            "| command | median ms | min ms | max ms |",
            "|---|---|---|---|",
            _stats("imgpipe run --rm busybox /bin/true", ours),
            _stats("runc run (prepared bundle, the floor)", floor),
            _stats("imgpipe --version (CLI start-up)", version),
            "",
            f"imgpipe overhead over runc run (median): **{overhead:.1f} ms**; "
            f"imgpipe run / ctr run --rm ({CTR_RUN_MS} ms): "
            f"**{statistics.median(ours) * 1000 / CTR_RUN_MS:.2f}**",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /tmp)")
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
        print(bench(work, args.runs))
    finally:
        subprocess.run(
            ["runc", "--root", str(work / "runc"), "delete", "-f", "floor"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
