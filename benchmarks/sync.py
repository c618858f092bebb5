"""A catalogue sync: imgpipe sync vs skopeo sync (copy) and a skopeo copy loop (zstd).

    .venv/bin/python benchmarks/sync.py [--runs 3] [--repos 50] [--dir DIR]

Starts Debian's ``docker-registry`` on 127.0.0.1 and pushes a generated catalogue into
it (tests/sync_catalogue.py: ``--repos`` repositories of one tag each; every image has
two small gzip base layers shared by the catalogue and one small layer of its own).
Then, in one run, tools alternating, each into a fresh destination prefix:

- **copy**: ``skopeo sync --src yaml --dest docker`` vs ``imgpipe sync SPEC`` with no
  conversion (``--executor threads:8``); then the **no-op re-run** of each into the
  destination it just filled;
- **zstd**: a shell loop of ``skopeo copy --dest-compress-format zstd`` (one process per
  image, an empty blob-info cache for each so that skopeo really recompresses; as root
  skopeo runs as ``nobody``, as in convert.py) vs ``imgpipe sync`` with
  ``convert: {compression: zstd, oci: true}``; every destination layer is checked;
- **scaling**: the zstd sync on a Dask LocalCluster of 1, 2 and 4 worker processes.

Reports median wall seconds and images per second.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from convert import Skopeo  # noqa: E402
from pull import start_registry  # noqa: E402
from sync_catalogue import make_catalogue  # noqa: E402

IMGPIPE = Path(sys.executable).parent / "imgpipe"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, check=False, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return took


def layer_types(host: str, repo: str, tag: str) -> list[str]:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        accept = ", ".join(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ]
        )
        conn.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{repo}:{tag}: HTTP {resp.status}")
    finally:
        conn.close()
    return [x["mediaType"] for x in json.loads(body)["layers"]]


def spec(path: Path, host: str, target: str, convert: str) -> Path:
    path.write_text(
        f"version: 1\nsync:\n  - type: registry\n    source: {host}\n"
        f"    repos: {{allow: ['^cat/']}}\n    target: {host}/{target}\n"
        + (f"    convert: {convert}\n" if convert else "")
    )
    return path


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repos", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-sync-", dir=args.dir))
    work.chmod(0o755)
    registry = None
    try:
        registry, host = start_registry(work)
        cat = make_catalogue(host, repos=args.repos, tags=1)
        n_img = len(cat.images)
        skopeo = Skopeo(work)
        env = {**os.environ, "HOME": str(work / "imgpipe-home")}
        ours = [str(IMGPIPE), "-q", "sync", "--executor", f"threads:{args.threads}"]
        yaml = work / "skopeo.yaml"
        yaml.write_text(
            f"{host}:\n  tls-verify: false\n  images:\n"
            + "".join(f"    {r}: []\n" for r in cat.repos)
        )

        def skopeo_sync(dest: str) -> list[str]:
            # skopeo.argv() is "[setpriv ...] skopeo --policy P copy --quiet <tls flags>"
            head = skopeo.argv()
            at = head.index("copy")
            return [*head[:at], "sync", "--src", "yaml", "--dest", "docker",
                    "--dest-tls-verify=false", str(yaml), dest]  # fmt: skip

        times: dict[str, list[float]] = {}
        n = 0
        for run in range(args.runs):
            order = ("imgpipe", "skopeo") if run % 2 == 0 else ("skopeo", "imgpipe")
            for tool in order:
                n += 1
                dest = f"copy-{tool}-{n}"
                if tool == "imgpipe":
                    s = spec(work / f"copy{n}.yaml", host, dest, "")
                    times.setdefault("copy imgpipe", []).append(wall([*ours, str(s)], env))
                    times.setdefault("no-op imgpipe", []).append(wall([*ours, str(s)], env))
                else:
                    skopeo.fresh()
                    argv = skopeo_sync(f"{host}/{dest}")
                    times.setdefault("copy skopeo", []).append(wall(argv, skopeo.env()))
                    times.setdefault("no-op skopeo", []).append(wall(argv, skopeo.env()))
            for tool in order:
                n += 1
                dest = f"zstd-{tool}-{n}"
                if tool == "imgpipe":
                    s = spec(work / f"z{n}.yaml", host, dest, "{compression: zstd, oci: true}")
                    times.setdefault("zstd imgpipe", []).append(wall([*ours, str(s)], env))
                else:
                    took = 0.0
                    for repo, tag in cat.images:
                        skopeo.fresh()  # not timed: an empty cache, so it recompresses
                        argv = skopeo.argv(
                            "--dest-compress-format", "zstd",
                            f"docker://{host}/{repo}:{tag}", f"docker://{host}/{dest}/{repo}:{tag}",
                        )  # fmt: skip
                        took += wall(argv, skopeo.env())
                    times.setdefault("zstd skopeo loop", []).append(took)
                for repo, tag in cat.images:
                    types = layer_types(host, f"{dest}/{repo}", tag)
                    if set(types) != {ZSTD}:
                        raise SystemExit(f"{tool}: {dest}/{repo}:{tag} not zstd: {types}")
        for workers in (1, 2, 4):
            n += 1
            s = spec(
                work / f"d{n}.yaml", host, f"dask{workers}-{n}", "{compression: zstd, oci: true}"
            )
            argv = [str(IMGPIPE), "-q", "sync", "--executor", f"dask-local:{workers}", str(s)]
            times[f"zstd imgpipe dask-local:{workers}"] = [wall(argv, env)]

        load = os.getloadavg()[0]
        print(f"\ncatalogue: {n_img} images ({args.repos} repositories x 1 tag), "
              f"{args.runs} runs, load average at the end {load:.1f}")  # fmt: skip
        print("\n| case | median s | min s | max s | images/s (median) |")
        print("|---|---|---|---|---|")
        for case, walls in times.items():
            med = statistics.median(walls)
            print(
                f"| {case} | {med:.2f} | {min(walls):.2f} | {max(walls):.2f} | {n_img / med:.1f} |"
            )
        for a, b in (("copy", "copy"), ("no-op", "no-op"), ("zstd", "zstd")):
            ours_m = statistics.median(times[f"{a} imgpipe"])
            key = f"{b} skopeo" if b != "zstd" else "zstd skopeo loop"
            print(f"\n{a}: imgpipe {statistics.median(times[key]) / ours_m:.2f}x skopeo")
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
