"""Interop both ways with independent clients of the real registry: skopeo and oras-py.

skopeo pushes, imgpipe pulls (every fixture variant); imgpipe pushes, skopeo copies out
with identical digests. oras-py pushes a file artifact, imgpipe pulls it with every blob
verified; imgpipe pushes, oras-py pulls the same bytes back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from registry_fixtures import Registry, make_random_image, read_layout

# (fixture layout, pull flags); the -docker ones carry Docker schema2 manifests
VARIANTS = [
    ("busybox", []),
    ("busybox-zstd", []),
    ("busybox-uncompressed", []),
    ("busybox-docker", []),
    ("layered", []),
    ("layered-docker", []),
    ("busybox-multiarch", ["--all-platforms"]),
]


def root_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(m["digest"])
    raise AssertionError(f"no {tag} in {layout}")


def blob_files(layout: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir()}


def stored_digests(root: Path) -> set[str]:
    r = run_cli("content", "ls", "--json", root=root)
    assert r.returncode == 0, r.stderr
    return {str(b["digest"]) for b in json.loads(r.stdout)}


@pytest.mark.parametrize(("name", "flags"), VARIANTS)
def test_skopeo_pushes_imgpipe_pulls(
    registry: Registry, fixture_dir: Path, tmp_path: Path, name: str, flags: list[str]
) -> None:
    repo = f"interop/skopeo-{name}"
    if name.endswith("-docker"):
        # skopeo's oci: reader takes only OCI manifests: let it write the Docker one itself
        base = name.removesuffix("-docker")
        registry.push_layout(fixture_dir / base, base, repo, "v1", docker_format=True)
        expected = registry.manifest_digest(repo, "v1")
        raw = json.loads(registry.manifest(repo, "v1"))
        assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    else:
        registry.push_layout(fixture_dir / name, name, repo, "v1")
        expected = root_digest(fixture_dir / name, name)
        assert registry.manifest_digest(repo, "v1") == expected
    root = tmp_path / "root"
    r = run_cli("pull", *flags, registry.ref(repo, "v1"), root=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == expected
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout
    if flags:  # every platform: every blob of the layout, byte for byte
        assert {f"sha256:{h}" for h in blob_files(fixture_dir / name)} <= stored_digests(root)


@pytest.mark.parametrize(("name", "flags"), VARIANTS)
def test_imgpipe_pushes_skopeo_copies_out(
    registry: Registry, fixture_dir: Path, tmp_path: Path, name: str, flags: list[str]
) -> None:
    root = tmp_path / "root"
    r = run_cli(
        "pull", *flags, "--name", f"local/{name}:v1", f"oci:{fixture_dir / name}:{name}", root=root
    )
    assert r.returncode == 0, r.stderr
    repo = f"interop/imgpipe-{name}"
    r = run_cli("push", f"local/{name}:v1", registry.ref(repo, "v1"), root=root)
    assert r.returncode == 0, r.stderr
    expected = root_digest(fixture_dir / name, name)
    assert registry.manifest_digest(repo, "v1") == expected
    out = tmp_path / "out"
    if name.endswith("-docker"):
        # an OCI layout cannot hold a Docker manifest unconverted; dir: keeps it as is
        registry.copy_out(repo, "v1", out)
        manifest = (out / "manifest.json").read_bytes()
        assert f"sha256:{hashlib.sha256(manifest).hexdigest()}" == expected
        copied = {p.name for p in out.iterdir()} - {"manifest.json", "version"}
    else:
        registry.copy_out(repo, "v1", out, "copied")
        assert root_digest(out, "copied") == expected
        copied = set(blob_files(out))
        for h in copied:
            assert hashlib.sha256((out / "blobs/sha256" / h).read_bytes()).hexdigest() == h
    # every blob skopeo fetched is one of the image's, byte for byte
    assert copied and copied <= set(blob_files(fixture_dir / name))
    if flags:
        assert copied == set(blob_files(fixture_dir / name))


def test_imgpipe_push_by_digest_and_retag(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    layout = fixture_dir / "layered"
    r = run_cli("pull", "--name", "local/l:v1", f"oci:{layout}:layered", root=root)
    assert r.returncode == 0, r.stderr
    digest = root_digest(layout, "layered")
    r = run_cli("push", "local/l:v1", f"{registry.host}/interop/bydigest@{digest}", root=root)
    assert r.returncode == 0, r.stderr
    raw = registry.manifest("interop/bydigest", digest)
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == digest
    r = run_cli("push", "local/l:v1", registry.ref("interop/bydigest", "a"), root=root)
    assert r.returncode == 0, r.stderr
    assert registry.manifest_digest("interop/bydigest", "a") == digest


# -- oras-py -------------------------------------------------------------------------------


@pytest.fixture
def oras_client(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[object]:
    try:
        import oras.client
    except ImportError:
        pytest.fail("oras-py is missing: pip install -e '.[dev]' (it is a test dependency)")
    # oras-py reads ~/.docker/config.json: keep it in the test's directory
    monkeypatch.setenv("HOME", str(tmp_path / "oras-home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    yield oras.client.OrasClient(hostname=registry.host, insecure=True)


def test_oras_pushes_artifact_imgpipe_pulls(
    registry: Registry, oras_client: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    contents = {
        "readme.txt": b"hello from oras\n",
        "data.bin": os.urandom(300_000),
        "empty": b"",
    }
    for fname, data in contents.items():
        (files / fname).write_bytes(data)
    monkeypatch.chdir(files)
    target = registry.ref("interop/oras-artifact", "v1")
    oras_client.push(  # type: ignore[attr-defined]
        target=target, files=list(contents), disable_path_validation=True, quiet=True
    )
    expected = registry.manifest_digest("interop/oras-artifact", "v1")
    manifest = json.loads(registry.manifest("interop/oras-artifact", expected))

    root = tmp_path / "root"
    r = run_cli("pull", target, root=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == expected
    stored = stored_digests(root)
    wanted = {hashlib.sha256(d).hexdigest() for d in contents.values()}
    assert {f"sha256:{h}" for h in wanted} <= stored
    assert manifest["config"]["digest"] in stored
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout

    # and back out through imgpipe to another repository, which oras-py pulls
    r = run_cli(
        "push", r.stdout.split()[0], registry.ref("interop/oras-roundtrip", "v1"), root=root
    )
    assert r.returncode == 0, r.stderr
    assert registry.manifest_digest("interop/oras-roundtrip", "v1") == expected
    out = tmp_path / "oras-out"
    pulled = oras_client.pull(  # type: ignore[attr-defined]
        target=registry.ref("interop/oras-roundtrip", "v1"), outdir=str(out)
    )
    assert sorted(Path(p).name for p in pulled) == sorted(contents)
    for fname, data in contents.items():
        assert (out / fname).read_bytes() == data


def test_imgpipe_pushes_image_oras_pulls(
    registry: Registry, oras_client: object, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    img = make_random_image(layout, "rnd", [200_000, 5_000], seed=3)
    root = tmp_path / "root"
    r = run_cli("pull", "--name", "local/rnd:v1", f"oci:{layout}:rnd", root=root)
    assert r.returncode == 0, r.stderr
    r = run_cli("push", "local/rnd:v1", registry.ref("interop/for-oras", "v1"), root=root)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "oras-out"
    pulled = oras_client.pull(  # type: ignore[attr-defined]
        target=registry.ref("interop/for-oras", "v1"), outdir=str(out)
    )
    # layers without a title are saved under their digest
    got = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in pulled}
    assert got == {d.split(":")[1] for d, _ in img.layers}
    assert read_layout(layout, "rnd").manifest_digest == registry.manifest_digest(
        "interop/for-oras", "v1"
    )
