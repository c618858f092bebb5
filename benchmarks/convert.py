"""Convert between registries: imgpipe vs skopeo, gzip -> zstd, encrypt, decrypt.

    .venv/bin/python benchmarks/convert.py [--runs 5] [--dir DIR] [--jobs N]

Starts Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, storage in the work
directory) and puts a generated 5-layer gzip image (~110 MB of blobs, ~150 MB of tars:
files of base64 text, which compress like real layers do, about 4:3) into it. Then, in
one run, alternating, each into a fresh destination repository:

- **zstd**: ``imgpipe convert --zstd SRC DST`` vs ``skopeo copy --dest-compress-format
  zstd docker://SRC docker://DST``;
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

Reports median wall time, CPU (user+sys) and peak RSS of each command (``wait4``), and
the ratio imgpipe/skopeo of the medians.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pull import start_registry, timed

LAYER_MB = (50, 40, 30, 20, 10)  # uncompressed tar payload per layer (base64 text)
FILE_MB = 2  # split into files of this size
NOBODY = 65534
CLI_SHIM = """
import argparse, sys
from imgpipe.cli import cmd_convert, main as m
build = m.build_parser
def build_parser():
    p = build()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "convert" not in sub.choices:
        cmd_convert.register(sub)
    return p
m.build_parser = build_parser
sys.exit(m.main(sys.argv[1:]))
"""
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def make_layout(layout: Path) -> None:
    """The source image: gzip (level 6) layers of base64 files, as an OCI layout."""
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
    for i, mb in enumerate(LAYER_MB):
        tar_path = layout / "layer.tar"
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


def manifest_layers(host: str, repo: str, tag: str) -> list[str]:
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
    return [layer["mediaType"] for layer in json.loads(body)["layers"]]


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


def report(name: str, results: dict[str, list[tuple[float, float, int]]], mb: float) -> None:
    print(f"\n{name}")
    print(
        "| tool | median s | min s | max s | MB/s (median) | CPU s (median) | peak RSS MiB (max) |"
    )
    print("|---|---|---|---|---|---|---|")
    med = {}
    for tool, rows in results.items():
        walls = [r[0] for r in rows]
        med[tool] = statistics.median(walls)
        print(
            f"| {tool} | {med[tool]:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
            f"{mb / med[tool]:.0f} | {statistics.median(r[1] for r in rows):.3f} | "
            f"{max(r[2] for r in rows) / 1024:.0f} |"
        )
    print(f"\nratio imgpipe/skopeo (median): **{med['imgpipe'] / med['skopeo']:.2f}**")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--jobs", type=int, default=None, help="imgpipe's --jobs")
    ap.add_argument("--only", choices=("zstd", "encrypt", "decrypt"), action="append")
    ap.add_argument("--make-layout", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_layout:
        make_layout(args.make_layout)
        return 0
    work = Path(tempfile.mkdtemp(prefix="imgpipe-bench-convert-", dir=args.dir))
    work.chmod(0o755)
    registry = None
    try:
        src = work / "src"
        subprocess.run([sys.executable, __file__, "--make-layout", str(src)], check=True)
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
            c.convert(source, f"{host}/bench/enc:v1",
                      imgpipe.conversion.ConvertOptions(recipients=[f"jwe:{pub}"]))  # fmt: skip
        encrypted = f"{host}/bench/enc:v1"
        print(
            f"image: {len(LAYER_MB)} layers, {mb:.1f} MB of gzip blobs, {sum(LAYER_MB)} MB of tars"
        )
        env = {**os.environ, "HOME": str(work / "imgpipe-home")}
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        imgpipe_cli = [sys.executable, "-c", CLI_SHIM, "--quiet", "--root", str(work / "root")]
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
            results: dict[str, list[tuple[float, float, int]]] = {"imgpipe": [], "skopeo": []}
            for run in range(args.runs):
                order = ("imgpipe", "skopeo") if run % 2 == 0 else ("skopeo", "imgpipe")
                for tool in order:
                    n += 1
                    repo = f"bench/{name}-{tool}-{n}"  # a fresh repository every run
                    if tool == "imgpipe":
                        argv, run_env = [*imgpipe_cli, *ours, f"{host}/{repo}:v1"], env
                    else:
                        skopeo.fresh()
                        argv, run_env = skopeo.argv(*theirs(f"{host}/{repo}:v1")), skopeo.env()
                    results[tool].append(timed(argv, run_env))
                    types = manifest_layers(host, repo, "v1")
                    if not check(types):
                        raise SystemExit(f"{tool} {name}: unexpected layer types {types}")
            report(f"{name} ({args.runs} runs each, alternating)", results, mb)
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
