"""Pull a ~105 MB, 5-layer image from a local registry: imgpipe vs skopeo.

    .venv/bin/python benchmarks/pull.py [--runs 7] [--dir DIR] [--max-concurrent N]

Starts Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, storage in the work
directory), pushes a generated image into it with skopeo, then alternates, in one run:

- imgpipe: ``imgpipe --quiet pull 127.0.0.1:PORT/bench/pull:v1`` into an empty root (every
  blob streamed, hashed once while written, committed by rename; the image recorded);
- skopeo: ``skopeo copy docker://127.0.0.1:PORT/bench/pull:v1 oci:DST:v1`` into an empty
  layout (also digest-checks while copying).

Both write to the same filesystem (``--dir``). Reports median wall time, CPU time
(user+sys) and peak RSS of each command from ``wait4``. The image data is generated in a
child process: the parent that measures stays small, so a forked child's RSS is its own.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LAYER_MB = (40, 30, 20, 10, 5)  # random payload per layer (incompressible)
TAG = "v1"
REPO = "bench/pull"
IMGPIPE = Path(sys.executable).parent / "imgpipe"
READY_TIMEOUT = 30.0


def _put(layout: Path, path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    size = path.stat().st_size
    path.replace(layout / "blobs" / "sha256" / h.hexdigest())
    return f"sha256:{h.hexdigest()}", size


def make_layout(layout: Path) -> None:
    """The image: tar+gzip (level 1) layers of one random file each, as an OCI layout."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    rng = random.Random(42)
    layers, diff_ids = [], []
    for i, mb in enumerate(LAYER_MB):
        payload = layout / "payload.tmp"
        payload.write_bytes(rng.randbytes(mb * 1_000_000))
        tar_path = layout / "layer.tar"
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
            info = tf.gettarinfo(str(payload), arcname=f"data/layer{i}.bin")
            info.mtime = 0
            with payload.open("rb") as pf:
                tf.addfile(info, pf)
        payload.unlink()
        diff_ids.append(f"sha256:{hashlib.sha256(tar_path.read_bytes()).hexdigest()}")
        gz = layout / "layer.tgz"
        with tar_path.open("rb") as src, gzip.GzipFile(gz, "wb", compresslevel=1, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tar_path.unlink()
        digest, size = _put(layout, gz)
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        )
    doc = layout / "doc.tmp"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    doc.write_text(json.dumps(config))
    cdigest, csize = _put(layout, doc)
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
    doc.write_text(json.dumps(manifest))
    mdigest, msize = _put(layout, doc)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("docker-registry is missing: apt-get install docker-registry")
    host = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "registry")}},
        "http": {"addr": host},
    }
    cfg = work / "registry.yml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    with (work / "registry.log").open("wb") as log:
        proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, timeout=2)
        try:
            conn.request("GET", "/v2/")
            if conn.getresponse().status == 200:
                return proc, host
        except OSError:
            pass
        finally:
            conn.close()
        try:
            proc.wait(timeout=0.05)
            raise SystemExit(f"docker-registry exited: {(work / 'registry.log').read_text()}")
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    raise SystemExit("docker-registry did not become ready")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+sys) and peak RSS (KiB) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err}")
    return wall, rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss


def push_with_skopeo(work: Path, src: Path, tag: str, ref: str) -> tuple[dict[str, str], Path]:
    """Push the layout ``src:tag`` to ``ref`` with skopeo, under a private HOME (never the
    machine's credentials or policy). Returns that environment and the policy file, for
    the measured commands to use the same way."""
    policy = work / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    home = work / "home"
    (home / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), XDG_RUNTIME_DIR=str(home))
    subprocess.run(
        [
            "skopeo", "--policy", str(policy), "copy", "--quiet", "--preserve-digests",
            "--dest-tls-verify=false", f"oci:{src}:{tag}", f"docker://{ref}",
        ],
        check=True,
        env=env,
    )  # fmt: skip
    return env, policy


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument(
        "--max-concurrent", type=int, default=None, help="imgpipe's --max-concurrent-downloads"
    )
    ap.add_argument("--make-layout", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_layout:
        make_layout(args.make_layout)
        return 0
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-pull-", dir=args.dir))
    registry = None
    try:
        src = work / "src"
        subprocess.run([sys.executable, __file__, "--make-layout", str(src)], check=True)
        total = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        registry, host = start_registry(work)
        ref = f"{host}/{REPO}:{TAG}"
        env, policy = push_with_skopeo(work, src, TAG, ref)
        extra = (
            []
            if args.max_concurrent is None
            else ["--max-concurrent-downloads", str(args.max_concurrent)]
        )
        results: dict[str, list[tuple[float, float, int]]] = {"imgpipe": [], "skopeo": []}
        for i in range(args.runs):
            for tool in ("imgpipe", "skopeo") if i % 2 == 0 else ("skopeo", "imgpipe"):
                dst = work / f"dst-{tool}-{i}"
                if tool == "imgpipe":
                    argv = [str(IMGPIPE), "--root", str(dst), "--quiet", "pull", *extra, ref]
                else:
                    argv = [
                        "skopeo",
                        "--policy",
                        str(policy),
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"oci:{dst}:{TAG}",
                    ]
                subprocess.run(["sync"], check=True)
                results[tool].append(timed(argv, env))
                shutil.rmtree(dst)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(
            f"image: {len(LAYER_MB)} layers, {total / 1e6:.1f} MB of blobs; {args.runs} runs each, "
            f"alternating; filesystem {fs}; {os.cpu_count()} cores"
        )
        print(
            "| tool | median s | min s | max s | MB/s (median) | CPU s (median) "
            "| peak RSS MiB (max) |"
        )
        print("|---|---|---|---|---|---|---|")
        med = {}
        for tool, rs in results.items():
            walls = [w for w, _, _ in rs]
            med[tool] = statistics.median(walls)
            print(
                f"| {tool} | {med[tool]:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
                f"{total / 1e6 / med[tool]:.0f} | {statistics.median(c for _, c, _ in rs):.3f} | "
                f"{max(r for _, _, r in rs) / 1024:.0f} |"
            )
        print(f"ratio imgpipe/skopeo (median): {med['imgpipe'] / med['skopeo']:.2f}")
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
