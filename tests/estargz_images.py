"""Source images for the lazy-read tests: two tar layers with every kind of entry.

Layer 0 holds a directory, small files, an empty file, a symlink, a hardlink, a file with
an xattr and uid 1000, a file the next layer deletes, and a large incompressible file
(``big.bin``, ``big`` bytes, several 4 MiB eStargz chunks). Layer 1 overrides one file,
whites another out and adds one. The layers are uncompressed tars, so every peer has to
compress them itself (skopeo reuses nothing, ctr-remote converts everything).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

MTIME = 1_700_000_000


@dataclass(frozen=True)
class SourceImage:
    layout: Path
    tag: str
    files: dict[str, bytes]  # what the merged rootfs holds (regular files)
    big: bytes


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _special(name: str, kind: bytes, **kw: object) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o777
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def write_tar_layout(
    layout: Path, tag: str, tars: list[bytes], config: dict[str, object]
) -> list[dict[str, object]]:
    """An OCI layout at ``layout`` of one amd64 image tagged ``tag``: ``tars`` as its
    uncompressed layers (bottom first), ``config`` its container config; the layers'
    ``{"digest", "size"}``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = [put(t) for t in tars]
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [str(d["digest"]) for d in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **put(image_config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", **d} for d in layers
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **put(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return layers


def make_source(layout: Path, *, big: int, seed: int, tag: str = "src") -> SourceImage:
    """Write the two-layer image as an OCI layout at ``layout`` (tag ``tag``)."""
    rng = random.Random(seed)
    big_data = rng.randbytes(big)
    marker = f"seed {seed}\n".encode()  # makes every blob of this image its own
    x = tarfile.TarInfo("etc/x")
    x.pax_headers = {"SCHILY.xattr.user.test": "v1"}
    layer0 = _tar(
        [
            _special("etc/", tarfile.DIRTYPE),
            _file("etc/hello.txt", b"hello world\n"),
            _file("etc/empty", b""),
            _special("etc/link", tarfile.SYMTYPE, linkname="hello.txt"),
            _special("etc/hard", tarfile.LNKTYPE, linkname="etc/hello.txt"),
            _file("etc/x", b"v1", uid=1000, pax_headers=x.pax_headers),
            _file("etc/deleted.txt", b"soon gone\n"),
            _file("etc/seed", marker),
            _file("big.bin", big_data),
        ]
    )
    layer1 = _tar(
        [
            _special("etc/", tarfile.DIRTYPE),
            _file("etc/hello.txt", b"hello again\n"),
            _file("etc/.wh.deleted.txt", b""),
            _file("top.txt", b"from the top layer\n" + marker),
        ]
    )
    write_tar_layout(layout, tag, [layer0, layer1], {"Cmd": ["/bin/sh"]})
    files = {
        "etc/hello.txt": b"hello again\n",
        "etc/empty": b"",
        "etc/x": b"v1",
        "etc/seed": marker,
        "top.txt": b"from the top layer\n" + marker,
        "big.bin": big_data,
    }
    return SourceImage(layout, tag, files, big_data)
