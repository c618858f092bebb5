"""``pull --unpack`` from a local registry against its peer, ``skopeo copy`` + ``tar -xzf``.

    .venv-bench/bin/python benchmarks/pull_unpack.py [--runs 5] [--dir DIR] [--snapshotters LIST]
                                                     [--modes cli,peer,sequential,overlap]

The image is benchmarks/unpack.py's (four gzip layers, 58 MB of blobs, 135 MB / 12,780
entries uncompressed: issue 13's "debian-multi"), pushed with skopeo into Debian's
``docker-registry`` on 127.0.0.1 (plain HTTP, storage under DIR). Each case is a whole
job (process start-up included) into an empty directory on DIR's file system:

* ``cli`` (default): ``imgpipe --root R -q pull --unpack REF --snapshotter S``, the
  command a user runs (every blob verified, DiffIDs checked, snapshots committed);
  ``--imgpipe NAME=COMMAND`` (repeatable) runs other commands in its place, e.g. two
  trees of imgpipe compared in one run;
* ``peer`` (default): ``skopeo copy docker://REF oci:DIR:TAG`` (its blob-info cache
  removed first), then GNU ``tar -xzf`` of each layer blob in the manifest's order into
  one directory (``--same-owner -p`` as root): no whiteouts, no DiffID check, a floor;
* ``sequential``: the pipeline as issue 5 found it, ``Pipeline.pull().insert_after(
  "record", Unpack())``: every blob downloaded, the image recorded, then the layers;
* ``overlap``: :func:`imgpipe.unpacking.pull_unpack` called from Python (FetchUnpack:
  layer *k* applied while blob *k* downloads, read from its ingest as it is written,
  committed once the blob is stored).

The cases alternate within each run (order flipped every run); medians with min and max
of wall and CPU time (user+sys of the job's processes, from ``wait4``), peak RSS, the
ratio to the peer, and ``uptime``'s load before and after. ``sync`` between cases
(not timed). Checked: every imgpipe case commits one snapshot per layer (its DiffIDs
verified); the peer's extracted file count is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pull as pull_bench
import unpack as unpack_bench

REPO = "bench/pull-unpack"
MODES = ("cli", "peer", "sequential", "overlap")
DEFAULT_MODES = "cli,peer"
PEER = "peer"


def child(mode: str, ref: str, root: str, sn: str) -> None:
    """One pull --unpack, the way ``mode`` says (runs in its own process)."""
    from imgpipe.formats.reference import parse_transport
    from imgpipe.pipeline import Pipeline
    from imgpipe.store import Store
    from imgpipe.unpacking import Unpack, pull_unpack

    if mode == "overlap":
        pull_unpack(ref, snapshotter=sn, root=root)
        return
    pipeline = Pipeline.pull().insert_after("record", Unpack(snapshotter=sn))
    with Store(root) as store:
        pipeline.run(parse_transport(ref), store=store)


def _wait(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """CPU seconds and peak RSS (KiB) of one command, which must succeed."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err[-2000:]}")
    return rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss


def peer(ref: str, out: Path, env: dict[str, str], policy: Path) -> tuple[float, float, int]:
    """skopeo copy to an OCI layout, then tar -xzf of each layer in order: (wall, CPU,
    peak RSS KiB)."""
    shutil.rmtree(Path(env["HOME"]) / ".local/share/containers/cache", ignore_errors=True)
    layout, tree = out / "layout", out / "tree"
    tree.mkdir(parents=True)
    t0 = time.perf_counter()
    cpu, rss = _wait(
        [
            "skopeo", "--policy", str(policy), "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{ref}", f"oci:{layout}:{unpack_bench.TAG}",
        ],
        env,
    )  # fmt: skip
    owner = ["--same-owner", "-p"] if os.geteuid() == 0 else []
    for blob in unpack_bench.layer_blobs(layout):
        c, r = _wait(["tar", "-xzf", str(blob), "-C", str(tree), *owner], env)
        cpu, rss = cpu + c, max(rss, r)
    return time.perf_counter() - t0, cpu, rss


def _committed(root: Path) -> int:
    with sqlite3.connect(root / "metadata.db") as db:
        (n,) = db.execute("SELECT count(*) FROM snapshots WHERE kind = 'committed'").fetchone()
    return int(n)


def _files(tree: Path) -> int:
    return sum(len(fs) for _, _, fs in os.walk(tree))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--snapshotters", default="overlay", help="comma-separated (overlay,native)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated of {','.join(MODES)}")
    ap.add_argument(
        "--imgpipe",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="the cli mode's command (repeatable: trees compared in one run; default: "
        "this venv's imgpipe)",
    )
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--make-layout", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.make_layout:
        print(json.dumps(unpack_bench.make_layout(args.make_layout)))
        return 0
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-pull-unpack-", dir=args.dir))
    registry = None
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        src = work / "src"
        # made in a child: a parent holding the image's bytes would count in every
        # measured child's peak RSS (a forked child starts with the parent's pages)
        made = subprocess.run(
            [sys.executable, __file__, "--make-layout", str(src)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        total, entries = json.loads(made.stdout)
        blobs = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        registry, host = pull_bench.start_registry(work)
        ref = f"{host}/{REPO}:{unpack_bench.TAG}"
        env, policy = pull_bench.push_with_skopeo(work, src, unpack_bench.TAG, ref)
        # byte code cached, as an installed package has it (compiling costs every start)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        binaries = dict(b.split("=", 1) for b in args.imgpipe) or {
            "cli": str(Path(sys.executable).parent / "imgpipe")
        }
        lib_modes = [m for m in modes if m not in (PEER, "cli")]
        cases = [
            (sn, m)
            for sn in args.snapshotters.split(",")
            for m in ([*binaries] if "cli" in modes else []) + lib_modes
        ]
        if PEER in modes:
            cases.append(("-", PEER))
        for name, binary in binaries.items():  # warm-up: byte code, page cache
            warm = work / f"warm-{name}"
            _wait([binary, "--root", str(warm), "-q", "pull", "--unpack", ref], env)
            shutil.rmtree(warm)
        results: dict[tuple[str, str], list[tuple[float, float, int]]] = {c: [] for c in cases}
        counted: dict[str, int] = {}
        for i in range(args.runs):
            for sn, mode in cases if i % 2 == 0 else list(reversed(cases)):
                out = work / f"out-{sn}-{mode}-{i}"
                subprocess.run(["sync"], check=True)
                if mode == PEER:
                    results[(sn, mode)].append(peer(ref, out, env, policy))
                    counted.setdefault("peer files", _files(out / "tree"))
                else:
                    if mode in binaries:
                        argv = [binaries[mode], "--root", str(out), "-q", "pull", "--unpack",
                                ref, "--snapshotter", sn]  # fmt: skip
                    else:
                        argv = [sys.executable, __file__, "--child", mode, ref, str(out), sn]
                    results[(sn, mode)].append(pull_bench.timed(argv, env))
                    if _committed(out) != len(unpack_bench.LAYERS):
                        raise SystemExit(f"{mode} {sn}: not every layer was committed")
                shutil.rmtree(out)
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(
            f"image: 4 gzip layers, {blobs / 1e6:.1f} MB of blobs, {total / 1e6:.0f} MB / "
            f"{entries} entries uncompressed; {args.runs} runs each, alternating; "
            f"filesystem {fs}; {os.cpu_count()} cores; load average before "
            f"{' '.join(load_before)}, after {' '.join(load_after)}"
        )
        if counted:
            print(f"checked: {json.dumps(counted)}")
        med_peer = statistics.median(w for w, _, _ in results.get(("-", PEER), [(0.0, 0, 0)]))
        print("| job | median s | min s | max s | CPU s (median) | peak RSS MiB | / peer |")
        print("|---|---|---|---|---|---|---|")
        for (sn, mode), rs in results.items():
            walls = [w for w, _, _ in rs]
            med = statistics.median(walls)
            name = "skopeo copy + tar -xzf" if mode == PEER else f"imgpipe {mode} ({sn})"
            if mode in binaries and mode != "cli":
                name = f"imgpipe pull --unpack: {mode} ({sn})"
            ratio = f"{med / med_peer:.2f}" if med_peer else "-"
            print(
                f"| {name} | {med:.3f} | {min(walls):.3f} | {max(walls):.3f} "
                f"| {statistics.median(c for _, c, _ in rs):.3f} "
                f"| {max(r for _, _, r in rs) / 1024:.0f} | {ratio} |"
            )
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
