"""`imgpipe content get [--decode]` on the fixture images, and flat memory on a big layer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import IMGPIPE, run_cli

from imgpipe.formats.mediatype import OCI_LAYER


def get(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [IMGPIPE, "--root", root, "content", "get", *args], capture_output=True, timeout=120
    )


@pytest.mark.parametrize(
    "image", ["layered", "layered-zstd", "layered-docker", "busybox-uncompressed"]
)
def test_content_get_decode_gives_the_diff_ids(
    fixture_dir: Path, tmp_path: Path, image: str
) -> None:
    root = tmp_path / "root"
    r = run_cli("pull", f"oci:{fixture_dir / image}:{image}", "--name", "img", root=root)
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", "img", "--json", root=root)
    [manifest] = json.loads(r.stdout)["manifests"]
    layers, diff_ids = manifest["layers"], manifest["diffIDs"]
    assert len(layers) == len(diff_ids) > 0
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        out = get(root, "--decode", layer["digest"])
        assert out.returncode == 0, out.stderr
        assert "sha256:" + hashlib.sha256(out.stdout).hexdigest() == diff_id
        raw = get(root, layer["digest"])
        assert raw.returncode == 0 and len(raw.stdout) == layer["size"]
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == layer["digest"]


def test_content_get_errors(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("pull", f"oci:{fixture_dir / 'layered'}:layered", root=root).returncode == 0
    manifest = json.loads(run_cli("inspect", "layered", "--json", root=root).stdout)
    config = manifest["manifests"][0]["config"]["digest"]
    out = get(root, "--decode", config)  # a config has no decoder
    assert out.returncode == 11, out.stderr
    assert b"no processor to decode media type application/vnd.oci.image.config" in out.stderr
    out = get(root, "--decode", "sha256:" + "0" * 64)
    assert out.returncode == 5  # not found
    out = get(root, "--media-type", OCI_LAYER, config)  # --media-type needs --decode
    assert out.returncode == 2


# ---------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent(
    """
    import hashlib, io, os, sys, zlib
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.digest import Digest
    from imgpipe.formats.mediatype import MediaType
    from imgpipe.processors import ProcessorRegistry

    kind, total = sys.argv[1], int(sys.argv[2])
    pattern = (os.urandom(4096) + bytes(60 * 1024))  # compressible, not trivially

    class Source(io.RawIOBase):
        # a gzip/zstd stream of `total` bytes, compressed on the fly (never all in memory)
        def __init__(self):
            self.left = total
            self.buf = b""
            if kind == "gzip":
                self.c = zlib.compressobj(1, zlib.DEFLATED, 31)
            else:
                import zstandard
                self.c = zstandard.ZstdCompressor(level=1).compressobj()
            self.done = False
        def readable(self):
            return True
        def read(self, n=-1):
            while len(self.buf) < max(n, 1) and not self.done:
                if self.left <= 0:
                    self.buf += self.c.flush()
                    self.done = True
                    break
                chunk = pattern * 16
                chunk = chunk[: self.left]
                self.left -= len(chunk)
                self.buf += self.c.compress(chunk)
            out, self.buf = self.buf[:n], self.buf[n:]
            return out

    mt = "application/vnd.oci.image.layer.v1.tar+" + kind
    desc = Descriptor(MediaType(mt), Digest.from_bytes(b""), 0)
    reg = ProcessorRegistry(entry_points=False)
    h = hashlib.sha256()
    n = 0
    with reg.open_decoded(Source(), desc) as out:
        while chunk := out.read(1 << 20):
            n += len(chunk)
            h.update(chunk)
    # VmHWM is this process image's own peak: ru_maxrss would also count the pages the
    # forked parent (a big pytest process) had before exec.
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(n, hwm_kib)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_decoding_1_gib_keeps_memory_flat(kind: str, tmp_path: Path) -> None:
    total = 1 << 30
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", MEMORY_SCRIPT, kind, str(total)], stdout=out, stderr=err
        )
    proc.wait()
    assert proc.returncode == 0, err_path.read_text()
    decoded, hwm_kib = map(int, out_path.read_text().split())
    assert decoded == total
    peak_mib = hwm_kib / 1024
    assert peak_mib < 100, f"peak RSS {peak_mib:.0f} MiB decoding 1 GiB of {kind}"
