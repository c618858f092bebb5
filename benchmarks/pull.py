"""Pull from a local registry into an empty store: imgpipe vs skopeo (and a floor).

    .venv-bench/bin/python benchmarks/pull.py [--runs 5] [--images multi,random] [--dir DIR]
                                              [--max-concurrent N] [--no-floor] [--serve IMAGE]
                                              [--baseline OTHER/bin/imgpipe]

Starts Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, storage in the work
directory), pushes the images into it with skopeo, then alternates, image by image:

- imgpipe: ``imgpipe --quiet pull 127.0.0.1:PORT/bench/IMAGE:v1`` into an empty root
  (every blob streamed, hashed once while written, fsynced and committed by rename; the
  image recorded in SQLite);
- skopeo: ``skopeo copy docker://127.0.0.1:PORT/bench/IMAGE:v1 oci:DST:v1`` into an empty
  layout (also digest-checks while copying; it does not fsync);
- floor: the same bytes moved by the least a Python program can do (stdlib only:
  ``http.client``, 3 blobs at once on threads, sha256 while writing, fsync, rename; no
  manifest parsing beyond the layer list, no store, no database), to show what is left
  once imgpipe's own work is gone; "floor, no fsync" the same without the fsync (skopeo
  does not fsync: the difference is what durability costs on this disk); "floor, urllib3
  + sqlite3" the durable floor through the two libraries imgpipe's design chose (urllib3
  for HTTP, SQLite for the metadata: imported, used, one committed transaction);
- baseline (with ``--baseline BIN``): another imgpipe build, e.g. an older commit installed
  in a venv of its own, measured in the same rounds (before/after on a busy machine).

The images: ``multi`` is benchmarks/unpack.py's (four gzip layers shaped like a
distribution plus applications, 58 MB of blobs, ~12.8k entries: the "debian-multi" row
of issue 13); ``random`` is five layers of incompressible data (40/30/20/10/5 MB, 105 MB
of blobs). Every output is checked: the pulled blobs are the pushed ones.

Reports, per image and tool, median / min / max wall time, CPU time (user+sys) and peak
RSS from ``wait4``, and the machine's load average (``uptime``) before and after the
rounds: the machine may be shared. ``sync`` runs (untimed) before every command. The image
data is generated in a child process, so the measuring parent stays small.

``--serve IMAGE`` sets the registry up, prints the reference and waits (for profiling by
hand: ``py-spy record -- .venv/bin/imgpipe --root R pull REF``).
"""

from __future__ import annotations

import argparse
import contextlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYER_MB = (40, 30, 20, 10, 5)  # random payload per layer (incompressible)
TAG = "v1"
IMAGES = ("multi", "random")
IMGPIPE = Path(sys.executable).parent / "imgpipe"
READY_TIMEOUT = 30.0

#: The floor: fetch a manifest's blobs with the standard library only, 3 at once, each
#: hashed while written, fsynced, checked and renamed. Run as ``python -c FLOOR HOST
#: REPO TAG DIR fsync|nofsync`` (plain interpreter start-up, no imgpipe import).
#: With ``design`` as a 7th argument, the same through what imgpipe's design chose: one
#: urllib3 PoolManager for the requests and the blob names recorded in SQLite (one
#: transaction, committed): the floor of any pull built on those two.
FLOOR = r"""
import hashlib, http.client, json, os, sys, threading
host, repo, tag, out, durable = sys.argv[1:5] + [sys.argv[5] == "fsync"]
design = sys.argv[6:] == ["design"]
os.makedirs(out + "/blobs/sha256")
def get(path, accept=None):
    c = http.client.HTTPConnection(host)
    c.request("GET", path, headers={"Accept": accept} if accept else {})
    return c, c.getresponse()
if design:
    import sqlite3, urllib3
    pool = urllib3.PoolManager()
    def get(path, accept=None):
        r = pool.request("GET", f"http://{host}{path}", preload_content=False,
                         headers={"Accept": accept} if accept else {})
        return r, r
mt = "application/vnd.oci.image.manifest.v1+json"
c, r = get(f"/v2/{repo}/manifests/{tag}", mt)
m = json.loads(r.read()); c.close()
todo = [m["config"]] + m["layers"]
lock = threading.Lock()
def worker():
    buf = bytearray(1 << 20); view = memoryview(buf)
    while True:
        with lock:
            if not todo: return
            d = todo.pop(0)
        c, r = get(f"/v2/{repo}/blobs/{d['digest']}")
        h = hashlib.sha256(); tmp = f"{out}/{d['digest'][7:]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)
        while n := r.readinto(buf):
            h.update(view[:n]); os.write(fd, view[:n])
        if durable: os.fsync(fd)
        os.close(fd); c.close()
        assert "sha256:" + h.hexdigest() == d["digest"], d
        os.rename(tmp, f"{out}/blobs/sha256/{d['digest'][7:]}")
ts = [threading.Thread(target=worker) for _ in range(3)]
for t in ts: t.start()
for t in ts: t.join()
if design:
    db = sqlite3.connect(out + "/metadata.db")
    db.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER)")
    db.executemany("INSERT INTO blobs VALUES (?, ?)",
                   [(d["digest"], d["size"]) for d in [m["config"]] + m["layers"]])
    db.commit(); db.close()
"""


def _put(layout: Path, path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    size = path.stat().st_size
    path.replace(layout / "blobs" / "sha256" / h.hexdigest())
    return f"sha256:{h.hexdigest()}", size


def make_random_layout(layout: Path) -> None:
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


def make_layout(image: str, layout: Path) -> None:
    if image == "random":
        make_random_layout(layout)
        return
    import unpack as unpack_bench  # benchmarks/unpack.py's image

    unpack_bench.make_layout(layout)
    # unpack.py tags its image "bench": retag as ours
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = TAG
    (layout / "index.json").write_text(json.dumps(index))


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
    (home / "tmp").mkdir(parents=True, exist_ok=True)
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


def _blob_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def check_output(tool: str, dst: Path, src_blobs: set[str], layers: set[str]) -> None:
    """The pulled blobs are the pushed ones (names are digests; imgpipe and the floor
    checked the bytes against them, skopeo too)."""
    if tool in ("imgpipe", "baseline"):
        got = _blob_names(dst / "content" / "blobs" / "sha256")
        ok = got == src_blobs
    elif tool == "skopeo":
        got = _blob_names(dst / "blobs" / "sha256")
        ok = layers <= got  # skopeo writes its own index; the layers are the same bytes
    else:
        got = _blob_names(dst / "blobs" / "sha256")
        ok = layers <= got
    if not ok:
        raise SystemExit(
            f"{tool}: pulled blobs {sorted(got)} are not the pushed {sorted(src_blobs)}"
        )


def _layers_of(src: Path) -> set[str]:
    index = json.loads((src / "index.json").read_text())
    m = json.loads((src / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return {d["digest"][7:] for d in [m["config"], *m["layers"]]}


def _load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--images", default=",".join(IMAGES), help="comma-separated: multi,random")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument(
        "--max-concurrent", type=int, default=None, help="imgpipe's --max-concurrent-downloads"
    )
    ap.add_argument("--no-floor", action="store_true", help="skip the stdlib floor")
    ap.add_argument("--baseline", type=Path, help="another imgpipe executable to compare")
    ap.add_argument("--serve", choices=IMAGES, help="set up IMAGE, print its reference, wait")
    ap.add_argument("--make-layout", nargs=2, metavar=("IMAGE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_layout:
        make_layout(args.make_layout[0], Path(args.make_layout[1]))
        return 0
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    images = [args.serve] if args.serve else args.images.split(",")
    if unknown := set(images) - set(IMAGES):
        raise SystemExit(f"unknown images: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-pull-", dir=args.dir))
    registry = None
    try:
        registry, host = start_registry(work)
        refs: dict[str, tuple[str, int, set[str], set[str]]] = {}
        env: dict[str, str] = {}
        policy = Path()
        for image in images:
            src = work / f"src-{image}"
            subprocess.run([sys.executable, __file__, "--make-layout", image, str(src)], check=True)
            blobs = _blob_names(src / "blobs" / "sha256")
            total = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
            ref = f"{host}/bench/{image}:{TAG}"
            env, policy = push_with_skopeo(work, src, TAG, ref)
            refs[image] = (ref, total, blobs, _layers_of(src))
        if args.serve:
            print(f"{refs[args.serve][0]} (registry in {work}; Enter or Ctrl-C ends)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                sys.stdin.readline()
            return 0
        extra = (
            []
            if args.max_concurrent is None
            else ["--max-concurrent-downloads", str(args.max_concurrent)]
        )
        tools = (
            ("imgpipe", "skopeo")
            + (() if args.no_floor else ("floor", "floor, no fsync", "floor, urllib3 + sqlite3"))
            + (("baseline",) if args.baseline else ())
        )
        rows = []
        for image in images:
            ref, total, blobs, layers = refs[image]
            repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
            results: dict[str, list[tuple[float, float, int]]] = {t: [] for t in tools}
            load0 = _load()
            for i in range(args.runs):
                order = tools if i % 2 == 0 else tuple(reversed(tools))
                for tool in order:
                    dst = work / f"dst-{tool.replace(', ', '-').replace(' ', '-')}-{i}"
                    if tool in ("imgpipe", "baseline"):
                        exe = IMGPIPE if tool == "imgpipe" else args.baseline
                        argv = [str(exe), "--root", str(dst), "--quiet", "pull", *extra, ref]
                    elif tool == "skopeo":
                        argv = [
                            "skopeo", "--policy", str(policy), "copy", "--quiet",
                            "--src-tls-verify=false", f"docker://{ref}", f"oci:{dst}:{TAG}",
                        ]  # fmt: skip
                    else:
                        durable = "nofsync" if tool.endswith("no fsync") else "fsync"
                        argv = [sys.executable, "-c", FLOOR, host, repo, TAG, str(dst), durable]
                        if tool.endswith("sqlite3"):
                            argv.append("design")
                    subprocess.run(["sync"], check=True)
                    results[tool].append(timed(argv, env))
                    check_output(tool, dst, blobs, layers)
                    shutil.rmtree(dst)
            rows.append((image, total, results, load0, _load()))
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(
            f"{args.runs} runs each, alternating; filesystem {fs}; {os.cpu_count()} cores; "
            f"imgpipe {' '.join(extra) or 'defaults'}"
        )
        print(
            "| image | tool | median s | min s | max s | MB/s (median) | CPU s (median) "
            "| peak RSS MiB (max) | / skopeo (median) | load avg before-after |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for image, total, results, load0, load1 in rows:
            med = {t: statistics.median(w for w, _, _ in rs) for t, rs in results.items()}
            for tool, rs in results.items():
                walls = [w for w, _, _ in rs]
                print(
                    f"| {image} ({total / 1e6:.0f} MB) | {tool} | {med[tool]:.3f} | "
                    f"{min(walls):.3f} | {max(walls):.3f} | {total / 1e6 / med[tool]:.0f} | "
                    f"{statistics.median(c for _, c, _ in rs):.3f} | "
                    f"{max(r for _, _, r in rs) / 1024:.0f} | "
                    f"{med[tool] / med['skopeo']:.2f} | {load0:.2f}-{load1:.2f} |"
                )
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
