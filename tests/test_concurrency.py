"""Two imgpipe processes on one root, and imports of a `docker save` archive, end to end."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from conftest import IMGPIPE, run_cli

from imgpipe.formats.mediatype import DOCKER_LAYER, DOCKER_MANIFEST


def _popen(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(IMGPIPE), "--root", str(root), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str]) -> str:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out


def _images(root: Path) -> dict[str, str]:
    out = run_cli("images", "--json", root=root)
    assert out.returncode == 0, out.stderr
    return {i["name"]: i["digest"] for i in json.loads(out.stdout)}


def test_two_processes_pull_into_one_root(fixture_dir: Path, tmp_path: Path) -> None:
    """Pulls of images sharing a layer, and of the same image, run at once: all land whole."""
    root = tmp_path / "root"
    names = ["layered", "layered-docker", "busybox", "layered"]
    procs = [_popen(root, "pull", f"oci:{fixture_dir / n}:{n}") for n in names]
    for p in procs:
        _finish(p)
    got = _images(root)
    assert set(got) == {f"docker.io/library/{n}:latest" for n in names}
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout
    # every image is complete: it exports, and the export holds every blob it names
    for n in set(names):
        out = run_cli("push", n, f"oci:{tmp_path / 'out' / n}:{n}", root=root)
        assert out.returncode == 0, out.stderr


def test_gc_running_beside_pulls_never_breaks_an_image(fixture_dir: Path, tmp_path: Path) -> None:
    """A gc loop in one process while another pulls: the pulled images stay complete.

    Each pull holds a lease on every blob before writing or relying on it, and gc marks
    and sweeps in one database transaction, so whatever the interleaving, no blob an image
    reaches may be collected.
    """
    root = tmp_path / "root"
    gc_script = (
        "import imgpipe, sys\n"
        "with imgpipe.Store(sys.argv[1]) as s:\n"
        "    for _ in range(40):\n"
        "        imgpipe.gc(store=s)\n"
    )
    import sys

    gc_proc = subprocess.Popen(
        [sys.executable, "-c", gc_script, str(root)], stderr=subprocess.PIPE, text=True
    )
    for n in ("busybox", "layered", "layered-zstd", "busybox-uncompressed"):
        _finish(_popen(root, "pull", f"oci:{fixture_dir / n}:{n}"))
    _, err = gc_proc.communicate(timeout=300)
    assert gc_proc.returncode == 0, err
    assert len(_images(root)) == 4
    for n in ("busybox", "layered", "layered-zstd", "busybox-uncompressed"):
        out = run_cli("push", n, f"oci:{tmp_path / 'out' / n}:{n}", root=root)
        assert out.returncode == 0, out.stderr
    gc = run_cli("gc", "--dry-run", root=root)
    assert "would remove sha256:" not in gc.stdout


def _docker_save(layout: Path, archive: Path, repo_tags: list[str]) -> tuple[str, str]:
    """Write what `docker save` writes for the image of an uncompressed OCI layout.

    Returns the layer's sha256 and the config's sha256.
    """
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config_hex = manifest["config"]["digest"][7:]
    layer_hex = manifest["layers"][0]["digest"][7:]
    members = {
        f"{config_hex}.json": (blobs / config_hex).read_bytes(),
        f"{layer_hex}/layer.tar": (blobs / layer_hex).read_bytes(),
        "manifest.json": json.dumps(
            [
                {
                    "Config": f"{config_hex}.json",
                    "RepoTags": repo_tags,
                    "Layers": [f"{layer_hex}/layer.tar"],
                }
            ]
        ).encode(),
    }
    with tarfile.open(archive, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return layer_hex, config_hex


def test_pull_docker_archive(fixture_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    layer_hex, config_hex = _docker_save(
        fixture_dir / "busybox-uncompressed", archive, ["example.com/tools/bb:1.36"]
    )
    root = tmp_path / "root"
    out = run_cli("pull", f"docker-archive:{archive}", root=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "example.com/tools/bb:1.36"
    info = json.loads(run_cli("inspect", "--json", "example.com/tools/bb:1.36", root=root).stdout)
    (m,) = info["manifests"]
    assert m["mediaType"] == DOCKER_MANIFEST
    assert [(layer["mediaType"], layer["digest"]) for layer in m["layers"]] == [
        (DOCKER_LAYER, f"sha256:{layer_hex}")
    ]
    assert m["config"]["digest"] == f"sha256:{config_hex}"
    assert m["diffIDs"] == [f"sha256:{layer_hex}"]
    # the synthesised manifest is stored byte for byte under its digest
    manifest_blob = root / "content" / "blobs" / "sha256" / info["digest"][7:]
    assert hashlib.sha256(manifest_blob.read_bytes()).hexdigest() == info["digest"][7:]


def test_pull_docker_archive_with_damaged_layer(fixture_dir: Path, tmp_path: Path) -> None:
    """The archive names no digests; the layer's hash is taken from the config's diff_ids
    (or the member name) and a damaged member must not be imported as good."""
    archive = tmp_path / "saved.tar"
    _layer_hex, _ = _docker_save(fixture_dir / "busybox-uncompressed", archive, ["bb:1"])
    data = bytearray(archive.read_bytes())
    i = data.find(b"bin/busybox")
    assert i > 0
    # damage the layer's file content, well past its tar headers
    j = data.find(b"\x7fELF", i)
    data[j + 4096] ^= 0xFF
    archive.write_bytes(bytes(data))
    out = run_cli("pull", f"docker-archive:{archive}", root=tmp_path / "root")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("imgpipe: error: ")
    assert _images(tmp_path / "root") == {}
