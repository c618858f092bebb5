"""Lazy pull: time to the container's first output line, and the bytes fetched.

    .venv/bin/python benchmarks/lazy.py [--runs 3] [--rate 4000000] [--dir DIR]

Builds ``debian-multi`` (tests/lazy_images.py: five layers from this host's Debian 12
packages, ~96 MB of tars), pushes it to Debian's ``docker-registry`` on 127.0.0.1 and
converts it with ``imgpipe convert --estargz`` (gzip 9, 4 MiB chunks: the defaults).
Then, for ``cat /etc/os-release``, in one run, alternating, each from an empty store:

- **lazy**: ``imgpipe run --rm --lazy --lazy-background=false REF cat /etc/os-release``;
- **full**: ``imgpipe run --rm REF cat /etc/os-release`` (pull + unpack + run);
- **skopeo+umoci+runc**: ``skopeo copy docker://REF oci:DIR:t``, ``umoci unpack``,
  ``runc run`` of that bundle with the command set in its config.json.

The clock runs from the first command's start to the first line the container prints
(checked: it must be ``PRETTY_NAME=...``). Each is measured on loopback (straight to the
registry) and behind tests/faultproxy.py throttled to ``--rate`` bytes/s (the 4 MB/s
link), which also counts the body bytes the registry served during each run. Medians
with min/max; the load (``uptime``) is printed with the table.
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
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from faultproxy import FaultProxy  # noqa: E402
from lazy_images import make_debian_multi  # noqa: E402
from registry_fixtures import Registry, start_registry  # noqa: E402

IMGPIPE = Path(sys.executable).parent / "imgpipe"
CMD = ["cat", "/etc/os-release"]
REPO = "bench/debian-multi"


def _first_line(steps: list[list[str]], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``steps`` in order; the last one's first stdout line and the seconds from
    the first step's start to it. Every step must succeed."""
    start = time.perf_counter()
    for argv in steps[:-1]:
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=900)
    proc = subprocess.Popen(
        steps[-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    _out, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{steps[-1][:6]}... failed ({proc.returncode}): {err.strip()}")
    if not line.startswith("PRETTY_NAME="):
        raise SystemExit(f"{steps[-1][:6]}...: unexpected first line {line!r}")
    return elapsed, err


def _imgpipe(work: Path, ref: str, *, lazy: bool) -> Callable[[], tuple[float, str]]:
    def run() -> tuple[float, str]:
        root = work / "root"
        shutil.rmtree(root, ignore_errors=True)
        flags = ["--lazy", "--lazy-background=false"] if lazy else []
        try:
            return _first_line(
                [[str(IMGPIPE), "--root", str(root), "run", "--rm", *flags, ref, *CMD]]
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return run


def _peers(work: Path, ref: str) -> Callable[[], tuple[float, str]]:
    def run() -> tuple[float, str]:
        layout, bundle = work / "layout", work / "bundle"
        for p in (layout, bundle):
            shutil.rmtree(p, ignore_errors=True)
        script = (
            "import json,sys; p=sys.argv[1]; c=json.load(open(p)); "
            f"c['process']['args']={CMD!r}; c['process']['terminal']=False; "
            "json.dump(c,open(p,'w'))"
        )
        steps = [
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--src-no-creds",
                f"docker://{ref}",
                f"oci:{layout}:t",
            ],
            ["umoci", "unpack", "--image", f"{layout}:t", str(bundle)],
            [sys.executable, "-c", script, str(bundle / "config.json")],
            [
                "runc",
                "--root",
                str(work / "runc"),
                "run",
                "-b",
                str(bundle),
                f"bench-{os.getpid()}",
            ],
        ]
        try:
            return _first_line(steps)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.rmtree(layout, ignore_errors=True)

    return run


def _row(name: str, xs: list[float], fetched: list[int]) -> str:
    med = statistics.median(xs)
    got = statistics.median(fetched)
    mb = f"{got / 1e6:.1f} MB" if got >= 0 else "(see 4 MB/s)"
    return f"| {name} | {med:.2f} s | {min(xs):.2f}-{max(xs):.2f} s | {mb} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=4e6, help="throttled link, bytes/s")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--no-throttle", action="store_true", help="loopback only")
    ap.add_argument("--tools", default="lazy,full,peers", help="which of lazy,full,peers")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="lazybench-"))
    work.mkdir(parents=True, exist_ok=True)
    registry: Registry = start_registry(work / "registry")
    try:
        image = make_debian_multi(work / "debian-multi")
        registry.push_layout(image.layout, image.tag, REPO, "src")
        subprocess.run(
            [
                str(IMGPIPE),
                "convert",
                "--estargz",
                registry.ref(REPO, "src"),
                registry.ref(REPO, "esgz"),
            ],
            check=True,
            capture_output=True,
        )
        manifest = json.loads(registry.manifest(REPO, "esgz"))
        blob_bytes = sum(layer["size"] for layer in manifest["layers"])
        print(
            f"debian-multi eStargz: {len(manifest['layers'])} layers, "
            f"{blob_bytes / 1e6:.1f} MB of blobs"
        )
        links = [("loopback", None)] + ([] if args.no_throttle else [("4 MB/s", args.rate)])
        for link, rate in links:
            # loopback: straight to the registry (the proxy's own per-request cost would
            # weigh on the many small requests of a lazy run); the bytes are counted
            # behind the throttled proxy, the same requests
            proxy = FaultProxy(registry.host).start()
            proxy.throttle(rate)
            ref = proxy.ref(REPO, "esgz") if rate else registry.ref(REPO, "esgz")
            every = {
                "lazy": ("imgpipe run --lazy", _imgpipe(work, ref, lazy=True)),
                "full": ("imgpipe run (full)", _imgpipe(work, ref, lazy=False)),
                "peers": ("skopeo copy + umoci unpack + runc run", _peers(work, ref)),
            }
            tools = dict(every[k] for k in args.tools.split(","))
            times: dict[str, list[float]] = {k: [] for k in tools}
            fetched: dict[str, list[int]] = {k: [] for k in tools}
            try:
                for _ in range(args.runs):
                    for name, fn in tools.items():
                        proxy.reset_counters()
                        t, _err = fn()
                        times[name].append(t)
                        fetched[name].append(proxy.served("/blobs/") if rate else -1)
            finally:
                proxy.close()
            load = subprocess.run(
                ["uptime"], check=False, capture_output=True, text=True
            ).stdout.strip()
            print(f"\n{link}, {args.runs} runs alternating; {load}")
            print("| to the first output line | median | min-max | blob bytes fetched |")
            print("|---|---|---|---|")
            for name in tools:
                print(_row(name, times[name], fetched[name]))
            if "lazy" in args.tools and "full" in args.tools:
                lazy, full = (statistics.median(times[every[k][0]]) for k in ("lazy", "full"))
                print(f"lazy / full: {lazy / full:.3f}")
    finally:
        registry.stop()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
