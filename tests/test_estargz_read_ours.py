"""``imgpipe estargz ls|cat`` on imgpipe's own ``convert --estargz`` / ``--zstdchunked``.

The same reads as on the peers' layers (test_estargz_read_peers.py), over OCI layouts
(read by seeking): what our writer makes, our reader verifies and serves.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import IMGPIPE, run_cli
from estargz_images import SourceImage, make_source


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(IMGPIPE), *args], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    # 9 MiB: three 4 MiB chunks and a short one
    return make_source(tmp_path_factory.mktemp("ours-src"), big=9 << 20, seed=3)


@pytest.mark.parametrize("flag", ["--estargz", "--zstdchunked"])
def test_our_conversions_read_by_range(flag: str, source: SourceImage, tmp_path: Path) -> None:
    dst = f"oci:{tmp_path / 'dst'}:lazy"
    converted = run_cli("convert", flag, f"oci:{source.layout}:{source.tag}", dst)
    assert converted.returncode == 0, converted.stderr
    listing = cli("estargz", "ls", "--json", dst)
    assert listing.returncode == 0, listing.stderr
    entries = {(e["layer"], e["name"]): e for e in json.loads(listing.stdout)}
    assert entries[(0, "big.bin")]["chunks"] == 3
    assert entries[(0, "etc/link")]["linkName"] == "hello.txt"
    for path, want in source.files.items():
        out = cli("estargz", "cat", dst, path)
        assert out.returncode == 0, (path, out.stderr)
        assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(want).digest(), path
    assert cli("estargz", "cat", dst, "etc/deleted.txt").returncode == 5
