"""Unpack a ~150 MB, 4-layer, ~12k-entry image into an empty snapshotter: imgpipe vs peers.

    .venv/bin/python benchmarks/unpack.py [--runs 5] [--dir DIR] [--append RESULTS.md]

The image is generated once (seeded, so every run builds the same bytes): four gzip
layers shaped like a distribution base plus application layers, thousands of small
files (0.2-16 KB of text-like data, which compresses like real files) and a few large
ones, directories, symlinks and hardlinks; the last layer deletes and replaces some of
the first layer's files (whiteouts). Each case is a whole command, process start
included, writing into an empty directory on DIR's file system:

* ``imgpipe overlay`` / ``imgpipe native``: ``imgpipe --root R unpack bench
  --snapshotter S`` where R already holds the pulled image (blobs), but no snapshots;
* ``umoci unpack``: ``umoci unpack --image LAYOUT:bench BUNDLE`` (as root it applies
  ownership like we do; it also writes an mtree manifest of the result);
* ``tar -xzf``: the four layer blobs extracted in order by GNU tar into one directory
  (``--same-owner -p`` as root; no whiteout handling and no DiffID check, a floor).

Cases alternate within each run; the reported figure is the median wall time. Between
runs the outputs are deleted and ``sync`` is called (not timed), so write-back of one
case does not land on the next.
"""

from __future__ import annotations

import argparse
import array
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TAG = "bench"
IMGPIPE = Path(sys.executable).parent / "imgpipe"
#: (small files, large files, MB per large file) per layer.
LAYERS = ((6000, 4, 12), (3500, 2, 10), (2000, 2, 8), (500, 1, 6))
GZIP_LEVEL = 6


class _Words:
    def __init__(self, rng: random.Random) -> None:
        alphabet = "abcdefghijklmnopqrstuvwxyz_/.0123456789"
        self.rng = rng
        self.words = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12))) for _ in range(4096)
        ]

    def text(self, size: int) -> bytes:
        n = max(1, size // 7)
        idx = array.array("H", self.rng.randbytes(2 * n))
        data = (" ".join(self.words[i & 4095] for i in idx) + "\n").encode()
        return data[:size]


def _layer_tar(i: int, spec: tuple[int, int, int], rng: random.Random, words: _Words) -> bytes:
    small, large, large_mb = spec
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> tarfile.TarInfo:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1704067200
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
            return ti

        dirs = [f"l{i}/d{j:03d}" for j in range(max(1, small // 40))]
        add(f"l{i}", type=tarfile.DIRTYPE, mode=0o755)
        for d in dirs:
            add(d, type=tarfile.DIRTYPE, mode=0o755)
        for j in range(small):
            d = dirs[j % len(dirs)]
            size = int(rng.lognormvariate(7.5, 1.0)) % 16384 + 200
            name = f"{d}/f{j:05d}.txt"
            add(name, words.text(size), mode=0o644)
            if j % 50 == 0:
                add(f"{d}/s{j:05d}", type=tarfile.SYMTYPE, linkname=f"f{j:05d}.txt", mode=0o777)
            if j % 97 == 0:
                add(f"{d}/h{j:05d}", type=tarfile.LNKTYPE, linkname=name, mode=0o644)
        for j in range(large):
            add(f"l{i}/big{j}.bin", words.text(large_mb * 1_000_000), mode=0o755)
        if i == len(LAYERS) - 1:  # delete and replace some of the base layer
            for j in range(0, 200, 2):
                add(f"l0/d{j % 150:03d}/.wh.f{j:05d}.txt", b"")
            add("l0/d001/.wh..wh..opq", b"")
            add("l0/d001/replaced.txt", b"new\n", mode=0o644)
    return buf.getvalue()


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / h).write_bytes(data)
    return f"sha256:{h}", len(data)


def make_layout(layout: Path) -> tuple[int, int]:
    """Write the image; returns (uncompressed bytes, tar entries)."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    rng = random.Random(42)
    words = _Words(rng)
    layers, diff_ids = [], []
    total = entries = 0
    for i, spec in enumerate(LAYERS):
        tar = _layer_tar(i, spec, rng, words)
        total += len(tar)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            entries += len(tf.getmembers())
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        digest, size = _put(layout, gzip.compress(tar, GZIP_LEVEL, mtime=0))
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
        "config": {},
    }
    cdigest, csize = _put(layout, json.dumps(config).encode())
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
    mdigest, msize = _put(layout, json.dumps(manifest).encode())
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
    return total, entries


def layer_blobs(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    m = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return [layout / "blobs/sha256" / layer["digest"][7:] for layer in m["layers"]]


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def _rm(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def cases(work: Path, layout: Path, roots: dict[str, Path]) -> dict[str, Callable[[], Path]]:
    """name -> a function that runs the case once and returns what to delete after."""
    blobs = layer_blobs(layout)
    root_flags = ["--same-owner", "-p"] if os.geteuid() == 0 else []

    def imgpipe(sn: str) -> Callable[[], Path]:
        def run() -> Path:
            _run([str(IMGPIPE), "--root", str(roots[sn]), "-q", "unpack", TAG, "--snapshotter", sn])
            return roots[sn] / "snapshots"

        return run

    def umoci() -> Path:
        bundle = work / "umoci-bundle"
        _run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)])
        return bundle

    def tar() -> Path:
        out = work / "tar-out"
        out.mkdir()
        for b in blobs:
            _run(["tar", "-xzf", str(b), "-C", str(out), *root_flags])
        return out

    out: dict[str, Callable[[], Path]] = {}
    if os.geteuid() == 0:
        out["imgpipe overlay"] = imgpipe("overlay")
    out["imgpipe native"] = imgpipe("native")
    out["umoci unpack"] = umoci
    out["tar -xzf (layers in order)"] = tar
    return out


def _clean_snapshots(root: Path) -> None:
    """Back to an empty snapshotter: the pulled blobs stay, snapshots and labels go."""
    _rm(root / "snapshots")
    import sqlite3

    with sqlite3.connect(root / "metadata.db") as db:
        db.execute("DELETE FROM snapshots")
        db.execute("DELETE FROM lease_resources")
        db.execute("DELETE FROM leases")


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--append", type=Path, help="append the table to this Markdown file")
    ap.add_argument("--label", default="", help="a heading note, e.g. 'tmpfs'")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgpipe-unpack-bench-", dir=args.dir))
    try:
        layout = work / "layout"
        t0 = time.monotonic()
        total, entries = make_layout(layout)
        blob_bytes = sum(b.stat().st_size for b in layer_blobs(layout))
        print(
            f"image: {total / 1e6:.0f} MB uncompressed, {entries} entries, "
            f"{blob_bytes / 1e6:.0f} MB gzip, built in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
        roots = {sn: work / f"root-{sn}" for sn in ("overlay", "native")}
        for r in roots.values():
            _run(
                [str(IMGPIPE), "--root", str(r), "-q", "pull", f"oci:{layout}:{TAG}", "--name", TAG]
            )
        all_cases = cases(work, layout, roots)
        times: dict[str, list[float]] = {k: [] for k in all_cases}
        for n in range(args.runs):
            order = list(all_cases.items())
            if n % 2:
                order.reverse()
            for name, fn in order:
                subprocess.run(["sync"], check=True)
                t = time.perf_counter()
                produced = fn()
                times[name].append(time.perf_counter() - t)
                if name.startswith("imgpipe"):
                    _clean_snapshots(produced.parent)
                else:
                    _rm(produced)
            print(
                f"run {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                file=sys.stderr,
            )
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        tar_med = statistics.median(times["tar -xzf (layers in order)"])
        umoci_med = statistics.median(times["umoci unpack"])
        lines = [
            "",
            f"{time.strftime('%Y-%m-%d')}, {fs}{' (' + args.label + ')' if args.label else ''}, "
            f"{args.runs} runs each; image {total / 1e6:.0f} MB uncompressed, {entries} tar "
            f"entries, 4 gzip layers ({blob_bytes / 1e6:.0f} MB); {machine()}:",
            "",
            "| tool | median s | min s | max s | / tar -xzf | / umoci |",
            "|---|---|---|---|---|---|",
        ]
        for name, ts in times.items():
            med = statistics.median(ts)
            lines.append(
                f"| {name} | {med:.2f} | {min(ts):.2f} | {max(ts):.2f} | "
                f"{med / tar_med:.2f} | {med / umoci_med:.2f} |"
            )
        table = "\n".join(lines) + "\n"
        print(table)
        if args.append:
            with open(args.append, "a") as f:
                f.write(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
