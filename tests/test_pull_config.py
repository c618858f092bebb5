"""Pull checks the config it records (issue 11): from a registry and from an OCI layout.

Each image is written here as bytes (a layout; pushed to the real registry through the
distribution API, since skopeo itself reads the config): a config that is not JSON,
one DiffID short, a platform the index entry does not claim, and an artifact whose
config is not an image config at all (kept as it is). A bad one is exit 4 with a
message naming the reference, nothing recorded, ``content verify`` clean; no layer of it
is downloaded. A manifest that does not match its digest says "manifest".
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from registry_fixtures import Registry

import imgpipe
from imgpipe.events import Event, EventKind
from imgpipe.formats.errors import MalformedDocument

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _tar(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


class Layout:
    """An OCI layout written blob by blob; ``docs`` are its manifests/indexes, children
    first (the order a registry must receive them in)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.docs: list[tuple[str, str, bytes]] = []  # (digest, media type, bytes)

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def doc(self, obj: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(obj).encode()
        desc = self.blob(data, obj["mediaType"])
        self.docs.append((desc["digest"], obj["mediaType"], data))
        return desc

    def image(
        self,
        *,
        config: bytes,
        config_type: str = OCI_CONFIG,
        layers: int = 1,
    ) -> tuple[dict[str, Any], list[str]]:
        """A manifest of ``layers`` small tar layers and the config ``config``:
        (its descriptor, the layer digests)."""
        descs = [self.blob(_tar(f"f{i}", b"x" * (100 + i)), OCI_LAYER) for i in range(layers)]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.blob(config, config_type),
            "layers": descs,
        }
        return self.doc(manifest), [d["digest"] for d in descs]

    def tag(self, desc: dict[str, Any], tag: str) -> None:
        entry = {**desc, "annotations": {"org.opencontainers.image.ref.name": tag}}
        index = {"schemaVersion": 2, "manifests": [entry]}
        (self.path / "index.json").write_text(json.dumps(index))


def good_config(diff_ids: list[str], arch: str = "amd64") -> bytes:
    obj = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    return json.dumps(obj).encode()


def push(registry: Registry, layout: Layout, repo: str, tag: str) -> str:
    """Every blob, then every document (children first, the last by ``tag``), through
    the distribution API: one POST and PUT per blob, manifests by PUT."""
    conn = http.client.HTTPConnection(registry.host, timeout=30)
    try:
        for blob in sorted((layout.path / "blobs" / "sha256").iterdir()):
            conn.request("POST", f"/v2/{repo}/blobs/uploads/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202, (resp.status, blob.name)
            location = urllib.parse.urlsplit(resp.getheader("Location", ""))
            sep = "&" if location.query else ""
            target = f"{location.path}?{location.query}{sep}digest=sha256:{blob.name}"
            conn.request("PUT", target, blob.read_bytes())
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, (resp.status, blob.name)
        for i, (digest, media_type, data) in enumerate(layout.docs):
            ref = tag if i == len(layout.docs) - 1 else digest
            conn.request(
                "PUT", f"/v2/{repo}/manifests/{ref}", data, headers={"Content-Type": media_type}
            )
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, (resp.status, resp.reason, ref)
    finally:
        conn.close()
    return f"{registry.host}/{repo}:{tag}"


def _bad_images(layout: Layout, case: str) -> dict[str, Any]:
    """The tagged descriptor of one bad (or artifact) image in ``layout``."""
    if case == "not-json":
        desc, _ = layout.image(config=b"this is not JSON {")
    elif case == "diff-ids":
        # two layers, one DiffID
        first = "sha256:" + hashlib.sha256(_tar("f0", b"x" * 100)).hexdigest()
        desc, _ = layout.image(config=good_config([first]), layers=2)
    elif case == "platform":
        # the index says arm64, the config amd64
        diff = "sha256:" + hashlib.sha256(_tar("f0", b"x" * 100)).hexdigest()
        image, _ = layout.image(config=good_config([diff], arch="amd64"))
        entry = {**image, "platform": {"os": "linux", "architecture": "arm64"}}
        desc = layout.doc({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    else:
        raise AssertionError(case)
    return desc


CASES = {
    "not-json": "is not JSON",
    "diff-ids": "2 layers but the config 1 diff_ids",
    "platform": "the index says platform linux/arm64, the config linux/amd64",
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("transport", ["oci", "registry"])
def test_bad_config_is_refused_and_nothing_recorded(
    case: str, transport: str, registry: Registry, tmp_path: Path
) -> None:
    layout = Layout(tmp_path / "layout")
    layout.tag(_bad_images(layout, case), "bad")
    if transport == "oci":
        ref = f"oci:{layout.path}:bad"
    else:
        ref = push(registry, layout, f"badconfig/{transport}-{case}", "bad")
    root = tmp_path / "root"
    r = run_cli("pull", "--platform", "linux/arm64", ref, "--name", "bad", root=root)
    assert r.returncode == 4, r.stderr
    assert CASES[case] in r.stderr
    assert ref.split(":")[0] in r.stderr  # the reference is named (its transport or host)
    assert ":bad" in r.stderr and "config sha256:" in r.stderr
    assert run_cli("images", "--json", root=root).stdout.strip() == "[]"
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stderr


def test_bad_config_stops_the_pull_before_any_layer(registry: Registry, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    desc, layers = layout.image(config=b"[1, 2, 3]", layers=3)
    layout.tag(desc, "bad")
    ref = push(registry, layout, "badconfig/early", "bad")
    events: list[Event] = []
    with pytest.raises(MalformedDocument, match=r"badconfig/early:bad: config sha256:"):
        imgpipe.pull(ref, root=tmp_path / "root", observer=events.append)
    started = {str(e.digest) for e in events if e.kind == EventKind.BLOB_START}
    assert started and not started & set(layers)


@pytest.mark.parametrize("transport", ["oci", "registry"])
def test_artifact_config_is_kept_as_it_is(
    transport: str, registry: Registry, tmp_path: Path
) -> None:
    layout = Layout(tmp_path / "layout")
    desc, _ = layout.image(config=b"not an image config", config_type="application/x.example+txt")
    layout.tag(desc, "art")
    ref = f"oci:{layout.path}:art"
    if transport == "registry":
        ref = push(registry, layout, "badconfig/artifact", "art")
    root = tmp_path / "root"
    r = run_cli("pull", ref, "--name", "art", root=root)
    assert r.returncode == 0, r.stderr
    assert "docker.io/library/art:latest" in run_cli("images", root=root).stdout


def test_manifest_errors_name_the_reference_and_say_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    garbage = layout.blob(b"<html>not a manifest</html>", OCI_MANIFEST)
    layout.tag(garbage, "garbage")
    root = tmp_path / "root"
    ref = f"oci:{layout.path}:garbage"
    r = run_cli("pull", ref, "--name", "g", root=root)
    assert r.returncode == 4, r.stderr
    assert f"{ref}: manifest {garbage['digest']}: " in r.stderr and "not JSON" in r.stderr

    # a manifest whose bytes changed after the index named it
    diff = "sha256:" + hashlib.sha256(_tar("f0", b"x" * 100)).hexdigest()
    desc, _ = layout.image(config=good_config([diff]))
    layout.tag(desc, "changed")
    path = layout.path / "blobs" / "sha256" / desc["digest"][7:]
    changed = path.read_bytes().replace(b'"schemaVersion": 2,', b'"schemaVersion":2 ,')
    path.write_bytes(changed)  # as long as before: the digest, not the size, differs
    r = run_cli("pull", f"oci:{layout.path}:changed", "--name", "c", root=root)
    assert r.returncode == 8, r.stderr
    assert f"error: manifest {desc['digest']} from oci:" in r.stderr
    assert "blob" not in r.stderr


@pytest.mark.parametrize("case", ["not-json", "diff-ids"])
def test_pull_unpack_refuses_a_bad_config_before_applying(case: str, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.tag(_bad_images(layout, case), "bad")
    root = tmp_path / "root"
    ref = f"oci:{layout.path}:bad"
    r = run_cli("pull", "--unpack", "--snapshotter", "native", ref, "--name", "b", root=root)
    assert r.returncode == 4, r.stderr
    assert f"{ref}: config sha256:" in r.stderr and CASES[case] in r.stderr
    assert run_cli("images", "--json", root=root).stdout.strip() == "[]"
    snapshots = run_cli("snapshots", "ls", "--snapshotter", "native", "--json", root=root)
    assert snapshots.returncode == 0, snapshots.stderr
    assert snapshots.stdout.strip() == "[]"
