"""A generated catalogue for the sync tests: many small images pushed by raw HTTP.

Each image has two base layers shared by the whole catalogue and one small layer of its
own (gzip tars, DiffIDs right), a config, and a manifest: Docker schema 2 for even
repositories, OCI for odd ones. Pushing by hand with a few threads takes about a second
for 120 images (skopeo would take a process per image).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

DOCKER = {
    "manifest": "application/vnd.docker.distribution.manifest.v2+json",
    "config": "application/vnd.docker.container.image.v1+json",
    "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
OCI = {
    "manifest": "application/vnd.oci.image.manifest.v1+json",
    "config": "application/vnd.oci.image.config.v1+json",
    "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Layer:
    tar: bytes
    blob: bytes

    @classmethod
    def of(cls, files: dict[str, bytes]) -> Layer:
        tar = _tar(files)
        return cls(tar, gzip.compress(tar, compresslevel=6, mtime=0))


BASES = (
    Layer.of({"base/a.txt": b"base layer one\n" * 200}),
    Layer.of({"base/b.txt": b"base layer two\n" * 300}),
)


@dataclass(frozen=True)
class Catalogue:
    host: str
    repos: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def images(self) -> list[tuple[str, str]]:
        return [(r, t) for r in self.repos for t in self.tags]


def _request(
    host: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def put_blob(host: str, repo: str, data: bytes) -> str:
    digest = _sha(data)
    status, _, _ = _request(host, "HEAD", f"/v2/{repo}/blobs/{digest}")
    if status == 200:
        return digest
    status, headers, _ = _request(host, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    location = headers["location"]
    path = location.split(host, 1)[-1] if "://" in location else location
    sep = "&" if "?" in path else "?"
    status, _, body = _request(
        host,
        "PUT",
        f"{path}{sep}digest={digest}",
        data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    assert status == 201, (status, body)
    return digest


def push_image(host: str, repo: str, tag: str, *, oci: bool, salt: str = "") -> str:
    """Push one image; its manifest digest."""
    types = OCI if oci else DOCKER
    own = Layer.of({f"app/{repo}/{tag}.txt": f"{repo}:{tag}{salt}\n".encode() * 20})
    layers = [*BASES, own]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha(x.tar) for x in layers]},
        },
        sort_keys=True,
    ).encode()
    for x in layers:
        put_blob(host, repo, x.blob)
    put_blob(host, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": types["manifest"],
            "config": {"mediaType": types["config"], "digest": _sha(config), "size": len(config)},
            "layers": [
                {"mediaType": types["layer"], "digest": _sha(x.blob), "size": len(x.blob)}
                for x in layers
            ],
        }
    ).encode()
    status, _, body = _request(
        host, "PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": types["manifest"]}
    )
    assert status == 201, (status, body)
    return _sha(manifest)


def make_catalogue(host: str, *, repos: int, tags: int, prefix: str = "cat") -> Catalogue:
    """``repos`` repositories of ``tags`` tags each on the registry ``host``."""
    names = tuple(f"{prefix}/app{i:02d}" for i in range(repos))
    tag_names = tuple(f"v1.{j}.0" for j in range(tags))
    # the shared blobs first, once per repository, so the image pushes do not race them
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda r: [put_blob(host, r, b.blob) for b in BASES], names))
        list(
            ex.map(
                lambda rt: push_image(host, rt[0], rt[1], oci=int(rt[0][-2:]) % 2 == 1),
                [(r, t) for r in names for t in tag_names],
            )
        )
    return Catalogue(host, names, tag_names)


def manifest(host: str, repo: str, ref: str) -> tuple[str, dict[str, object]]:
    """(digest, parsed manifest) of ``repo:ref``."""
    accept = ", ".join(
        [OCI["manifest"], DOCKER["manifest"], "application/vnd.oci.image.index.v1+json"]
    )
    status, headers, body = _request(
        host, "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept}
    )
    assert status == 200, (repo, ref, status)
    return headers["docker-content-digest"], json.loads(body)


# -- the session's catalogue ---------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueRegistry:
    """The sync tests' own registry (its ``_catalog`` is theirs alone) and what is in it:
    ``cat`` (10 repositories x 10 tags, even ones Docker, odd ones OCI) and ``bad/app:v1``,
    whose own layer is corrupt in the registry's storage."""

    registry: Any
    cat: Catalogue
    bad_layer: str


@pytest.fixture(scope="session")
def sync_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogueRegistry]:
    from registry_fixtures import start_registry

    reg = start_registry(tmp_path_factory.mktemp("registry-sync"))
    try:
        cat = make_catalogue(reg.host, repos=10, tags=10)
        push_image(reg.host, "bad/app", "v1", oci=True)
        _, doc = manifest(reg.host, "bad/app", "v1")
        layers: Any = doc["layers"]
        own = layers[-1]["digest"].split(":")[1]
        data = reg.storage / "docker/registry/v2/blobs/sha256" / own[:2] / own / "data"
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # the registry serves it as stored: a corrupt source
        data.write_bytes(bytes(blob))
        yield CatalogueRegistry(reg, cat, "sha256:" + own)
    finally:
        reg.stop()
