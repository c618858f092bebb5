"""Hostile and corrupt eStargz layers, made by hand in an OCI layout, read by the CLI.

The peers never write these, so the test writes the layout itself: a gzip member per tar
header and per payload, the TOC member, the 51-byte footer, exactly as the format says,
then lies in one place. The TOC digest annotation is computed over the lying TOC (the
attacker controls the manifest too), so only the reader's own checks stand in the way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE

from imgpipe.formats.estargz import estargz_footer

Entries = list[dict[str, Any]]
FILES = [("etc/", None), ("etc/hello.txt", b"hello world\n"), ("big", b"0123456789" * 1000)]
CHUNK = 4096


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o755 if directory else 0o644
    if directory:
        info.type = tarfile.DIRTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _member(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def estargz(mutate: Callable[[Entries], None] = lambda e: None) -> tuple[bytes, str, bytes]:
    """(blob, toc digest, uncompressed tar) of FILES as eStargz, the TOC passed to
    ``mutate`` before it is written."""
    blob = bytearray()
    tar = bytearray()
    entries: Entries = []
    for name, data in FILES:
        if data is None:
            head = _header(name, 0, directory=True)
            entries.append({"name": name, "type": "dir", "mode": 0o755})
        else:
            head = _header(name, len(data))
        blob += _member(head)
        tar += head
        if data is None:
            continue
        entry: dict[str, Any] = {"name": name, "type": "reg", "size": len(data), "mode": 0o644}
        entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        for at in range(0, len(data), CHUNK):
            piece = data[at : at + CHUNK]
            chunk = {
                "offset": len(blob),
                "chunkDigest": "sha256:" + hashlib.sha256(piece).hexdigest(),
            }
            if len(data) > CHUNK:
                chunk["chunkSize"] = len(piece)
            if at:
                chunk.update(name=name, type="chunk", chunkOffset=at)
                entries.append(chunk)
            else:
                entries.append(entry | chunk)
            last = at + CHUNK >= len(data)
            # the tar padding goes with the payload's last member, as ctr-remote writes it
            blob += _member(piece + (b"\0" * (-len(data) % 512) if last else b""))
        tar += data + b"\0" * (-len(data) % 512)
    mutate(entries)
    raw = json.dumps({"version": 1, "entries": entries}, indent="\t").encode()
    toc_offset = len(blob)
    toc = _header("stargz.index.json", len(raw)) + raw + b"\0" * (-len(raw) % 512)
    toc += b"\0" * 1024
    blob += _member(toc)
    tar += toc
    blob += estargz_footer(toc_offset)
    return bytes(blob), "sha256:" + hashlib.sha256(raw).hexdigest(), bytes(tar)


def write_layout(path: Path, blob: bytes, annotations: dict[str, str], tar: bytes) -> str:
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(blob),
                    "annotations": annotations}],
    }).encode()  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **put(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}  # fmt: skip
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return f"oci:{path}:t"


def layout_of(tmp_path: Path, mutate: Callable[[Entries], None] = lambda e: None) -> str:
    blob, toc_digest, tar = estargz(mutate)
    notes = {"containerd.io/snapshot/stargz/toc.digest": toc_digest}
    return write_layout(tmp_path / "layout", blob, notes, tar)


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(IMGPIPE), *args], capture_output=True, timeout=120)


def test_the_hand_made_layer_reads(tmp_path: Path) -> None:
    ref = layout_of(tmp_path)
    assert gzip.decompress(estargz()[0])[:100] == estargz()[2][:100]  # a valid tar.gz too
    out = cli("estargz", "cat", ref, "big")
    assert out.returncode == 0, out.stderr
    assert out.stdout == dict(FILES)["big"]
    assert cli("estargz", "cat", ref, "etc/hello.txt").stdout == b"hello world\n"


def _rename(n: int, name: str) -> Callable[[Entries], None]:
    def mutate(entries: Entries) -> None:
        entries[n]["name"] = name

    return mutate


def _set(n: int, **kw: Any) -> Callable[[Entries], None]:
    def mutate(entries: Entries) -> None:
        entries[n].update(kw)

    return mutate


def _duplicate(entries: Entries) -> None:
    entries.append(dict(entries[1]))


HOSTILE = [
    ("dotdot", _rename(1, "etc/../../escape"), "climbs out"),
    ("absolute", _rename(1, "/etc/shadow"), "absolute"),
    ("duplicate", _duplicate, "listed twice"),
    ("overlap", _set(3, offset=0), "overlap"),
    ("size-disagrees", _set(2, size=10_001), "cover"),
    ("past-the-toc", _set(1, offset=10**6), "past the data"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_toc_is_refused(
    tmp_path: Path, mutate: Callable[[Entries], None], message: str
) -> None:
    out = cli("estargz", "ls", layout_of(tmp_path, mutate))
    assert out.returncode == 4, out.stderr
    assert message.encode() in out.stderr and b"TOC" in out.stderr
    assert out.stdout == b""


def test_a_chunk_that_lies_is_exit_8(tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    out = cli("estargz", "cat", layout_of(tmp_path, _set(2, chunkDigest=wrong)), "big")
    assert out.returncode == 8, out.stderr
    assert b"corrupt chunk" in out.stderr and b"'big' at 0" in out.stderr
    assert out.stdout == b""  # the bad chunk is the first: nothing was written


def test_a_wrong_toc_digest_is_exit_8(tmp_path: Path) -> None:
    blob, _, tar = estargz()
    notes = {"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "1" * 64}
    out = cli("estargz", "ls", write_layout(tmp_path / "l", blob, notes, tar))
    assert out.returncode == 8, out.stderr
    assert b"corrupt TOC" in out.stderr


def test_a_plain_gzip_layer_is_not_read(tmp_path: Path) -> None:
    _, _, tar = estargz()
    out = cli("estargz", "ls", write_layout(tmp_path / "l", gzip.compress(tar), {}, tar))
    assert out.returncode == 11, out.stderr
    assert b"not an eStargz or zstd:chunked layer" in out.stderr


def test_a_truncated_chunk_member_is_exit_8(tmp_path: Path) -> None:
    # the TOC says the hello.txt chunk is 12 bytes; make its member hold 3
    blob, _, tar = estargz()
    entries = json.loads(_toc_json(blob))["entries"]
    start = entries[1]["offset"]
    end = entries[2]["offset"]
    short = _member(b"hel")
    blob2 = blob[:start] + short + b"\0" * (end - start - len(short)) + blob[end:]
    notes = {
        "containerd.io/snapshot/stargz/toc.digest": "sha256:"
        + hashlib.sha256(_toc_json(blob)).hexdigest()
    }
    out = cli("estargz", "cat", write_layout(tmp_path / "l", blob2, notes, tar), "etc/hello.txt")
    assert out.returncode == 8, out.stderr
    assert out.stdout == b""


def _toc_json(blob: bytes) -> bytes:
    offset = int(blob[-51:][16:32], 16)
    member = gzip.GzipFile(fileobj=io.BytesIO(blob[offset:-51])).read()
    with tarfile.open(fileobj=io.BytesIO(member)) as t:
        f = t.extractfile("stargz.index.json")
        assert f is not None
        return f.read()
