"""``pull --unpack`` from a local registry: fetch-then-unpack vs unpack-while-fetching.

    .venv/bin/python benchmarks/pull_unpack.py [--runs 5] [--dir DIR] [--snapshotters LIST]

The image is benchmarks/unpack.py's (four gzip layers, ~150 MB / ~12k entries
uncompressed), pushed with skopeo into Debian's ``docker-registry`` on 127.0.0.1 (plain
HTTP, storage under DIR). Each case is a whole process (start-up included) pulling into
an empty root on DIR's file system:

* ``sequential``: the pipeline as it was, ``Pipeline.pull().insert_after("record",
  Unpack())``: every blob downloaded, the image recorded, then the layers applied;
* ``overlap``: :func:`imgpipe.unpacking.pull_unpack` (FetchUnpack): layer *k* applied
  as soon as blob *k* is stored while later blobs download.

The two alternate within each run (order flipped every run); medians of wall and CPU
time (user+sys, from ``wait4``). ``sync`` between cases (not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pull as pull_bench
import unpack as unpack_bench

REPO = "bench/pull-unpack"
MODES = ("sequential", "overlap")


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


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--snapshotters", default="overlay,native")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-pull-unpack-", dir=args.dir))
    registry = None
    try:
        src = work / "src"
        total, entries = unpack_bench.make_layout(src)
        blobs = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        registry, host = pull_bench.start_registry(work)
        ref = f"{host}/{REPO}:{unpack_bench.TAG}"
        env, _ = pull_bench.push_with_skopeo(work, src, unpack_bench.TAG, ref)
        sns = args.snapshotters.split(",")
        results: dict[tuple[str, str], list[tuple[float, float, int]]] = {
            (sn, m): [] for sn in sns for m in MODES
        }
        for i in range(args.runs):
            for sn in sns:
                for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):
                    root = work / f"root-{sn}-{mode}-{i}"
                    argv = [sys.executable, __file__, "--child", mode, ref, str(root), sn]
                    subprocess.run(["sync"], check=True)
                    results[(sn, mode)].append(pull_bench.timed(argv, env))
                    shutil.rmtree(root)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(
            f"image: 4 gzip layers, {blobs / 1e6:.1f} MB of blobs, {total / 1e6:.0f} MB / "
            f"{entries} entries uncompressed; {args.runs} runs each, alternating; "
            f"filesystem {fs}; {os.cpu_count()} cores"
        )
        print("| snapshotter | mode | median s | min s | max s | CPU s (median) |")
        print("|---|---|---|---|---|---|")
        for sn in sns:
            med = {}
            for mode in MODES:
                rs = results[(sn, mode)]
                walls = [w for w, _, _ in rs]
                med[mode] = statistics.median(walls)
                print(
                    f"| {sn} | {mode} | {med[mode]:.3f} | {min(walls):.3f} | {max(walls):.3f} "
                    f"| {statistics.median(c for _, c, _ in rs):.3f} |"
                )
            print(
                f"ratio overlap/sequential ({sn}, median): {med['overlap'] / med['sequential']:.2f}"
            )
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
