"""Convert to eStargz between registries: imgpipe vs ctr-remote (stargz-snapshotter 0.12).

    .venv/bin/python benchmarks/estargz.py [--runs 3] [--dir DIR] [--zstdchunked]
        [--image text|multi] [--imgpipe-only] [--before IMGPIPE]

Starts Debian's ``docker-registry`` on 127.0.0.1 and puts one of benchmarks/convert.py's
generated gzip images into it: ``text`` (the default: 5 layers, ~110 MB of blobs, 150 MB
of tars of base64 text) or ``multi`` (debian-multi: 4 layers, 64 MB, 148 MB of tars).
Then, in one run, alternating, each into a fresh destination repository:

- **imgpipe**: ``imgpipe convert --estargz SRC DST`` (registry to registry, streaming,
  no store; gzip level 9, 4 MiB chunks: the defaults, ctr-remote's);
- **ctr-remote**: from a clean private containerd 1.6 (started before the clock, as
  tests/containerd_fixture.py does it), ``ctr content fetch`` (pull without unpack) +
  ``ctr-remote images convert --estargz --oci SRC DST`` + ``ctr images push DST``:
  the time is the sum of the three commands (the same level 9, chunk size 4 MiB).

With ``--zstdchunked`` both write zstd:chunked instead (level 3 on both sides:
ctr-remote's zstd "SpeedDefault" and imgpipe's default).

Every output is checked (every layer has a ``toc.digest`` annotation). Reports median
wall time, CPU (user+sys) and peak RSS (``wait4``; for ctr-remote the client commands
only: the daemon's CPU is measured from /proc for its whole run) and the ratio
imgpipe/ctr-remote of the medians, with the load average before each run.
``--imgpipe-only`` leaves ctr-remote out (its runs take half a minute each);
``--before`` adds another imgpipe command (e.g. main's) as a tool, alternated.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from containerd_fixture import start_containerd  # noqa: E402
from convert import LAYER_MB, MULTI_LAYERS, load, uptime  # noqa: E402
from pull import start_registry, timed  # noqa: E402

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
IMGPIPE = Path(sys.executable).parent / "imgpipe"


def layer_annotations(host: str, repo: str, tag: str) -> list[dict[str, str]]:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(
            "GET",
            f"/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{repo}:{tag}: HTTP {resp.status}")
    finally:
        conn.close()
    return [layer.get("annotations", {}) for layer in json.loads(body)["layers"]]


def daemon_cpu(pid: int) -> float:
    """User+system CPU seconds a running process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ctr_remote(fmt: str, source: str, dest: str) -> tuple[float, float, int]:
    """fetch + convert + push from a clean containerd: (wall, CPU incl. daemon, RSS KiB)."""
    with start_containerd(namespace="bench") as ctd:
        base = ["--address", ctd.address, "--namespace", ctd.ns]
        env = ctd.env()
        cpu0 = daemon_cpu(ctd.process.pid)  # type: ignore[union-attr]
        steps = [
            ["ctr", *base, "content", "fetch", "--plain-http", source],
            ["ctr-remote", *base, "images", "convert", f"--{fmt}", "--oci", source, dest],
            ["ctr", *base, "images", "push", "--plain-http", dest],
        ]
        wall = cpu = 0.0
        rss = 0
        for argv in steps:
            w, c, r = timed(argv, env)
            wall, cpu, rss = wall + w, cpu + c, max(rss, r)
        cpu += daemon_cpu(ctd.process.pid) - cpu0  # type: ignore[union-attr]
    return wall, cpu, rss


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--zstdchunked", action="store_true", help="zstd:chunked instead of eStargz")
    ap.add_argument("--image", choices=("text", "multi"), default="text")
    ap.add_argument("--imgpipe-only", action="store_true", help="leave ctr-remote out")
    ap.add_argument("--before", type=Path, help="another imgpipe command, run as a tool")
    args = ap.parse_args()
    n_layers = len(LAYER_MB) if args.image == "text" else len(MULTI_LAYERS)
    fmt = "zstdchunked" if args.zstdchunked else "estargz"
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-estargz-", dir=args.dir))
    registry = None
    try:
        src = work / "src"
        subprocess.run(
            [sys.executable, str(HERE / "convert.py"), "--image", args.image,
             "--make-layout", str(src)],
            check=True,
        )  # fmt: skip
        total = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        mb = total / 1e6
        registry, host = start_registry(work)
        source = f"{host}/bench/src:v1"
        env = {**os.environ, "HOME": str(work / "imgpipe-home")}
        subprocess.run(
            [str(IMGPIPE), "--quiet", "convert", f"oci:{src}:v1", source], check=True, env=env
        )
        print(f"image {args.image!r}: {n_layers} layers, {mb:.1f} MB of gzip blobs")
        print(f"format: {fmt}; CPUs: {os.cpu_count()}; uptime: {uptime()}")
        tools = ["imgpipe"] + ([] if args.imgpipe_only else ["ctr-remote"])
        tools += ["before"] if args.before else []
        results: dict[str, list[tuple[float, float, int, float]]] = {t: [] for t in tools}
        n = 0
        for run in range(args.runs):
            for tool in tools if run % 2 == 0 else tools[::-1]:
                n += 1
                repo = f"bench/{fmt}-{tool}-{n}"
                dest = f"{host}/{repo}:v1"
                before = load()
                if tool in ("imgpipe", "before"):
                    exe = str(IMGPIPE if tool == "imgpipe" else args.before)
                    row = timed([exe, "--quiet", "convert", f"--{fmt}", source, dest], env)
                else:
                    row = run_ctr_remote(fmt, source, dest)
                anns = layer_annotations(host, repo, "v1")
                if len(anns) != n_layers or not all(TOC_DIGEST in a for a in anns):
                    raise SystemExit(f"{tool}: {dest} is not {fmt}: {anns}")
                results[tool].append((*row, before))
                print(f"  run {run} {tool}: {row[0]:.2f} s (load {before:.2f})", flush=True)
        print(f"\n{fmt}, registry to registry, {args.runs} runs each")
        print(
            "| tool | median s | min s | max s | MB/s (median) | CPU s (median) "
            "| peak RSS MiB (max) | load before (min-max) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        med = {}
        for tool, rows in results.items():
            walls = [r[0] for r in rows]
            loads = [r[3] for r in rows]
            med[tool] = statistics.median(walls)
            print(
                f"| {tool} | {med[tool]:.2f} | {min(walls):.2f} | {max(walls):.2f} | "
                f"{mb / med[tool]:.1f} | {statistics.median(r[1] for r in rows):.2f} | "
                f"{max(r[2] for r in rows) / 1024:.0f} | {min(loads):.2f}-{max(loads):.2f} |"
            )
        for tool, wall in med.items():
            if tool != "imgpipe":
                print(f"\nratio imgpipe/{tool} (median): **{med['imgpipe'] / wall:.2f}**")
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
