"""Import a ~100 MB, 4-layer OCI layout into an empty store: imgpipe vs skopeo.

    .venv/bin/python benchmarks/import_layout.py [--runs 5] [--dir DIR]

Both tools read the same source layout and write to an empty destination on the same
filesystem, alternating, in one run. imgpipe: ``imgpipe pull oci:SRC:TAG`` into a new
root (verifies every digest, records the image in SQLite). skopeo: ``skopeo copy
--preserve-digests oci:SRC:TAG oci:DST:TAG`` (also verifies digests while copying).
Reports the median wall time and the peak RSS of each command (``wait4`` rusage).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LAYER_MB = (40, 30, 20, 10)  # uncompressed random payload per layer; random data does not compress
TAG = "bench"
IMGPIPE = Path(sys.executable).parent / "imgpipe"


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / h).write_bytes(data)
    return f"sha256:{h}", len(data)


def make_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True)
    rng = random.Random(42)
    layers, diff_ids = [], []
    for i, mb in enumerate(LAYER_MB):
        tar_buf = io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            payload = rng.randbytes(mb * 1_000_000)
            info = tarfile.TarInfo(f"data/layer{i}.bin")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        raw = tar_buf.getvalue()
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        digest, size = _blob(layout, gzip.compress(raw, compresslevel=1, mtime=0))
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cdigest, csize = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cdigest,
            "size": csize,
        },
        "layers": layers,
    }
    mdigest, msize = _blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": msize,
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, rusage.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--make-layout", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_layout:
        make_layout(args.make_layout)
        return 0
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-", dir=args.dir))
    try:
        src = work / "src"
        # in a child process: a forked child's peak RSS counts the parent's pages, so the
        # parent that measures must stay small
        subprocess.run([sys.executable, __file__, "--make-layout", str(src)], check=True)
        total = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        policy = work / "policy.json"
        policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        env = dict(os.environ, HOME=str(work), TMPDIR=str(work))
        results: dict[str, list[tuple[float, int]]] = {"imgpipe": [], "skopeo": []}
        for i in range(args.runs):
            for tool in ("imgpipe", "skopeo") if i % 2 == 0 else ("skopeo", "imgpipe"):
                dst = work / f"dst-{tool}-{i}"
                if tool == "imgpipe":
                    argv = [str(IMGPIPE), "--root", str(dst), "--quiet", "pull", f"oci:{src}:{TAG}"]
                else:
                    argv = [
                        "skopeo",
                        "--policy",
                        str(policy),
                        "copy",
                        "--quiet",
                        "--preserve-digests",
                        f"oci:{src}:{TAG}",
                        f"oci:{dst}:{TAG}",
                    ]
                subprocess.run(["sync"], check=True)
                results[tool].append(timed(argv, env))
                shutil.rmtree(dst)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(
            f"image: {len(LAYER_MB)} layers, {total / 1e6:.1f} MB compressed; "
            f"{args.runs} runs each, "
            f"alternating; filesystem {fs}; {os.cpu_count()} cores"
        )
        print("| tool | median s | min s | max s | MB/s (median) | peak RSS MiB (max) |")
        print("|---|---|---|---|---|---|")
        med = {}
        for tool, rs in results.items():
            walls = [w for w, _ in rs]
            med[tool] = statistics.median(walls)
            print(
                f"| {tool} | {med[tool]:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
                f"{total / 1e6 / med[tool]:.0f} | {max(r for _, r in rs) / 1024:.0f} |"
            )
        print(f"ratio imgpipe/skopeo (median): {med['imgpipe'] / med['skopeo']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
