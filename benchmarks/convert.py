"""Convert between registries: imgpipe vs skopeo, gzip -> zstd, encrypt, decrypt, copy.

    .venv-bench/bin/python benchmarks/convert.py [--runs 5] [--dir DIR] [--jobs N]
        [--image multi|text] [--only zstd --only copy ...] [--floor]

Starts Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, storage in the work
directory) and puts a generated gzip image into it:

- ``multi`` (the default; "debian-multi"): 4 layers shaped like a distribution base and
  three application layers, 64 MB of gzip blobs, 148 MB / 13.1k entries of tars, one
  layer of 120 MB (benchmarks/unpack.py's generator: thousands of small text files, a
  few large ones, symlinks, hardlinks, whiteouts);
- ``text``: 5 layers of 2 MB files of base64 text (~110 MB of blobs, ~150 MB of tars).

Then, in one run, alternating, each into a fresh destination repository:

- **zstd**: ``imgpipe convert --zstd SRC DST`` vs ``skopeo copy --dest-compress-format
  zstd docker://SRC docker://DST``;
- **copy** (the floor both share: every blob streamed unchanged into the registry):
  ``imgpipe convert SRC DST`` vs ``skopeo copy``;
- **encrypt**: ``imgpipe encrypt --recipient jwe:PUB SRC DST`` vs ``skopeo copy
  --encryption-key jwe:PUB``;
- **decrypt** (of an image encrypted once beforehand): ``imgpipe decrypt --key KEY`` vs
  ``skopeo copy --decryption-key KEY``.

skopeo keeps a blob-info cache and reuses blobs it has seen, which can silently skip the
recompression; as root that cache is system-wide whatever HOME says. So skopeo runs as
``nobody`` (setpriv) with a HOME of its own, emptied before every run; when the
benchmark itself is not root, a private HOME is enough. Every output is checked: zstd
layers, encrypted layers, decrypted layers. imgpipe runs as the invoking user with its
default 3 layers at once.

Reports, per case and tool, the median wall time with min and max, CPU (user+sys, from
``wait4``), the load average (``/proc/loadavg``, 1 min) before each run (min-max: the
machine may be shared), and the ratio imgpipe/skopeo of the medians. ``--floor`` adds,
in-process, what the largest layer costs alone: its gzip decode, and its zstd encode
with the workers imgpipe uses by default and with none.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import http.client
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pull import start_registry, timed

LAYER_MB = (50, 40, 30, 20, 10)  # ``text``: uncompressed tar payload per layer (base64)
#: ``multi``: (small files, large files, MB per large file) per layer (unpack.py's shapes)
MULTI_LAYERS = ((9700, 7, 12), (1500, 1, 8), (800, 1, 6), (300, 1, 4))
FILE_MB = 2  # split into files of this size
NOBODY = 65534
IMGPIPE = Path(sys.executable).parent / "imgpipe"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _text_tar(tar_path: Path, i: int, mb: int, rng: random.Random, layout: Path) -> None:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for j in range(max(1, mb // FILE_MB)):
            data = base64.b64encode(rng.randbytes(FILE_MB * 750_000))
            payload = layout / "payload.tmp"
            payload.write_bytes(data)
            info = tf.gettarinfo(str(payload), arcname=f"layer{i}/file{j}.txt")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with payload.open("rb") as pf:
                tf.addfile(info, pf)
            payload.unlink()


def multi_tars() -> list[bytes]:
    """The ``multi`` image's layer tars (seeded: the same bytes every time)."""
    import unpack

    rng = random.Random(42)
    words = unpack._Words(rng)
    assert len(MULTI_LAYERS) == len(unpack.LAYERS)  # its last layer holds the whiteouts
    return [unpack._layer_tar(i, spec, rng, words) for i, spec in enumerate(MULTI_LAYERS)]


def make_multi_tars(directory: Path) -> list[Path]:
    """The ``multi`` image's layer tars written as files (for benchmarks/zstd_workers.py)."""
    paths = []
    for i, tar in enumerate(multi_tars()):
        path = directory / f"multi-layer{i}.tar"
        path.write_bytes(tar)
        paths.append(path)
    return paths


def make_layout(layout: Path, image: str = "text") -> None:
    """The source image (``text`` or ``multi``): gzip (level 6) layers, an OCI layout."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    rng = random.Random(7)

    def put(path: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        size = path.stat().st_size
        path.replace(blobs / h.hexdigest())
        return f"sha256:{h.hexdigest()}", size

    layers, diff_ids = [], []
    sources: list[bytes] | tuple[int, ...] = multi_tars() if image == "multi" else LAYER_MB
    for i, source in enumerate(sources):
        tar_path = layout / "layer.tar"
        if isinstance(source, bytes):
            tar_path.write_bytes(source)
        else:
            _text_tar(tar_path, i, source, rng, layout)
        h = hashlib.sha256()
        with tar_path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        diff_ids.append(f"sha256:{h.hexdigest()}")
        gz = layout / "layer.tgz"
        with tar_path.open("rb") as src, gzip.GzipFile(gz, "wb", compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tar_path.unlink()
        digest, size = put(gz)
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        )
    doc = layout / "doc.tmp"
    doc.write_text(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        )
    )
    cdigest, csize = put(doc)
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
    mdigest, msize = put(doc)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": msize,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def manifest_layers(host: str, repo: str, tag: str) -> tuple[list[str], list[str]]:
    """The media types and digests of the layers of ``repo:tag``."""
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
    layers = json.loads(body)["layers"]
    return [layer["mediaType"] for layer in layers], [layer["digest"] for layer in layers]


def keypair(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = directory / "key.pem", directory / "key.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for p in (directory, priv, pub):
        p.chmod(0o755 if p.is_dir() else 0o644)  # skopeo may run as nobody
    return priv, pub


class Skopeo:
    """skopeo with an empty blob-info cache for every run (see the module docstring)."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("skopeo")
        if exe is None:
            raise SystemExit("skopeo is missing: apt-get install skopeo")
        self.exe = exe
        self.as_nobody = os.geteuid() == 0
        self.home = work / "skopeo-home"
        self.policy = work / "policy.json"
        self.policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        self.policy.chmod(0o644)

    def fresh(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        (self.home / "tmp").mkdir(parents=True)
        if self.as_nobody:
            for p in (self.home, self.home / "tmp"):
                os.chown(p, NOBODY, NOBODY)

    def argv(self, *args: str) -> list[str]:
        prefix = []
        if self.as_nobody:
            prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return [*prefix, self.exe, "--policy", str(self.policy), "copy", "--quiet",
                "--src-tls-verify=false", "--dest-tls-verify=false", *args]  # fmt: skip

    def env(self) -> dict[str, str]:
        h = str(self.home)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": h,
                "TMPDIR": f"{h}/tmp", "XDG_DATA_HOME": f"{h}/data",
                "XDG_CONFIG_HOME": f"{h}/config", "XDG_RUNTIME_DIR": h}  # fmt: skip


Row = tuple[float, float, int, float]  # wall s, CPU s, peak RSS KiB, load average before


def load() -> float:
    """The 1-minute load average now (the machine may be shared: every figure carries it)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def report(name: str, results: dict[str, list[Row]], mb: float) -> str:
    """The case's table (Markdown), printed and returned."""
    lines = [
        f"\n{name}",
        "| tool | median s | min s | max s | MB/s (median) | CPU s (median) "
        "| peak RSS MiB (max) | load before (min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    med = {}
    for tool, rows in results.items():
        walls = [r[0] for r in rows]
        loads = [r[3] for r in rows]
        med[tool] = statistics.median(walls)
        lines.append(
            f"| {tool} | {med[tool]:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
            f"{mb / med[tool]:.0f} | {statistics.median(r[1] for r in rows):.3f} | "
            f"{max(r[2] for r in rows) / 1024:.0f} | {min(loads):.2f}-{max(loads):.2f} |"
        )
    lines.append(f"\nratio imgpipe/skopeo (median): **{med['imgpipe'] / med['skopeo']:.2f}**")
    for tool, wall in med.items():
        if tool not in ("imgpipe", "skopeo"):
            lines.append(f"ratio {tool}/skopeo (median): {wall / med['skopeo']:.2f}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def uptime() -> str:
    return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()


def _drain(stream: Any) -> bytes:
    out = []
    with stream:
        while chunk := stream.read(1 << 20):
            out.append(chunk)
    return b"".join(out)


def _timed_in(job: Callable[[], object], runs: int = 3) -> tuple[float, float, float]:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        job()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), min(walls), max(walls)


def floor(layout: Path) -> str:
    """In-process, the largest layer alone: gzip decode, zstd encode (3 runs, median)."""
    from imgpipe.processors import ZSTD_LEVEL
    from imgpipe.processors.gzip import GzipDecoder
    from imgpipe.processors.zstd import ZstdEncoder, default_workers

    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    raw = blob.read_bytes()
    tar = _drain(GzipDecoder(io.BytesIO(raw)))
    rows = [
        ("gzip decode (isal)", _timed_in(lambda: _drain(GzipDecoder(io.BytesIO(raw))))),
        ("sha256 of the tar (the DiffID)", _timed_in(lambda: hashlib.sha256(tar).digest())),
    ]
    for w in (0, default_workers()):
        enc = lambda w=w: _drain(ZstdEncoder(io.BytesIO(tar), level=ZSTD_LEVEL, threads=w))  # noqa: E731
        rows.append((f"zstd -{ZSTD_LEVEL} encode, workers={w}", _timed_in(enc)))
    lines = [
        f"\nfloor: the largest layer alone, in-process ({len(raw) / 1e6:.1f} MB gzip, "
        f"{len(tar) / 1e6:.1f} MB tar; {uptime()})",
        "| step | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {what} | {m:.3f} | {lo:.3f} | {hi:.3f} |" for what, (m, lo, hi) in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--jobs", type=int, default=None, help="imgpipe's --jobs")
    ap.add_argument("--image", choices=("multi", "text"), default="multi")
    ap.add_argument("--only", choices=("zstd", "copy", "encrypt", "decrypt"), action="append")
    ap.add_argument("--floor", action="store_true", help="also time the largest layer alone")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="also run imgpipe with these extra options as tool NAME (zstd case only), "
        "e.g. 'single=--zstd-threads 0'",
    )
    ap.add_argument(
        "--before",
        type=Path,
        help="another imgpipe command (e.g. main's .venv/bin/imgpipe), run as a third tool",
    )
    ap.add_argument("--make-layout", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_layout:
        make_layout(args.make_layout, args.image)
        return 0
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-convert-", dir=args.dir))
    work.chmod(0o755)
    registry = None
    tables: list[str] = []
    try:
        src = work / "src"
        subprocess.run(
            [sys.executable, __file__, "--image", args.image, "--make-layout", str(src)],
            check=True,
        )
        total = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
        mb = total / 1e6
        registry, host = start_registry(work)
        skopeo = Skopeo(work)
        keys = work / "keys"
        keys.mkdir()
        priv, pub = keypair(keys)
        import imgpipe.conversion

        source = f"{host}/bench/src:v1"
        with imgpipe.conversion.Converter() as c:  # the source image, and an encrypted one
            c.convert(f"oci:{src}:v1", source)
            if not args.only or "decrypt" in args.only:
                c.convert(source, f"{host}/bench/enc:v1",
                          imgpipe.conversion.ConvertOptions(recipients=[f"jwe:{pub}"]))  # fmt: skip
        encrypted = f"{host}/bench/enc:v1"
        n_layers = len(MULTI_LAYERS) if args.image == "multi" else len(LAYER_MB)
        print(
            f"image {args.image!r}: {n_layers} layers, {mb:.1f} MB of gzip blobs; "
            f"{os.cpu_count()} CPUs; {args.runs} runs per tool, alternating; "
            f"uptime: {uptime()}"
        )
        env = {**os.environ, "HOME": str(work / "imgpipe-home")}
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        imgpipe_cli = [str(IMGPIPE), "--quiet", "--root", str(work / "root")]
        cases: dict[
            str, tuple[list[str], Callable[[str], list[str]], Callable[[list[str]], bool]]
        ] = {
            "zstd": (
                ["convert", "--zstd", *jobs, source],
                lambda dst: [
                    "--dest-compress-format",
                    "zstd",
                    f"docker://{source}",
                    f"docker://{dst}",
                ],
                lambda types: set(types) == {ZSTD},
            ),
            "copy": (
                ["convert", *jobs, source],
                lambda dst: [f"docker://{source}", f"docker://{dst}"],
                lambda types: set(types) == {GZIP},
            ),
            "encrypt": (
                ["encrypt", "--recipient", f"jwe:{pub}", *jobs, source],
                lambda dst: [
                    "--encryption-key",
                    f"jwe:{pub}",
                    f"docker://{source}",
                    f"docker://{dst}",
                ],
                lambda types: all(t.endswith("+encrypted") for t in types),
            ),
            "decrypt": (
                ["decrypt", "--key", str(priv), *jobs, encrypted],
                lambda dst: [
                    "--decryption-key",
                    str(priv),
                    f"docker://{encrypted}",
                    f"docker://{dst}",
                ],
                lambda types: not any(t.endswith("+encrypted") for t in types),
            ),
        }
        n = 0
        for name, (ours, theirs, check) in cases.items():
            if args.only and name not in args.only:
                continue
            variants = dict(v.split("=", 1) for v in args.variant) if name == "zstd" else {}
            tools = ["imgpipe", "skopeo", *variants] + (["before"] if args.before else [])
            results: dict[str, list[Row]] = {t: [] for t in tools}
            digests: dict[str, set[str]] = {t: set() for t in tools}
            for run in range(args.runs):
                order = tools if run % 2 == 0 else tools[::-1]
                for tool in order:
                    n += 1
                    repo = f"bench/{name}-{tool}-{n}"  # a fresh repository every run
                    if tool == "imgpipe":
                        argv, run_env = [*imgpipe_cli, *ours, f"{host}/{repo}:v1"], env
                    elif tool in variants:
                        extra = variants[tool].split()
                        argv = [*imgpipe_cli, *ours[:-1], *extra, ours[-1], f"{host}/{repo}:v1"]
                        run_env = env
                    elif tool == "before":
                        before_cli = [str(args.before), *imgpipe_cli[1:]]
                        argv, run_env = [*before_cli, *ours, f"{host}/{repo}:v1"], env
                    else:
                        skopeo.fresh()
                        argv, run_env = skopeo.argv(*theirs(f"{host}/{repo}:v1")), skopeo.env()
                    before = load()
                    results[tool].append((*timed(argv, run_env), before))
                    types, layer_digests = manifest_layers(host, repo, "v1")
                    if not check(types):
                        raise SystemExit(f"{tool} {name}: unexpected layer types {types}")
                    digests[tool].add(",".join(layer_digests))
            same = (
                "the same layer digests every run"
                if len(digests["imgpipe"]) == 1
                else (f"{len(digests['imgpipe'])} different sets of layer digests")
            )
            tables.append(report(f"{name} ({args.runs} runs each, alternating; imgpipe: {same})",
                                 results, mb))  # fmt: skip
        if args.floor:
            tables.append(floor(src))
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
