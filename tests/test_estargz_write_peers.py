"""Our eStargz and zstd:chunked images against the peers from Debian, all real:

- ``ctr-remote images get-toc-digest`` (stargz-snapshotter 0.12's Go reader) prints our
  ``toc.digest`` annotation for every layer, and ``--dump-toc`` re-marshals our eStargz
  TOC to the very bytes we wrote;
- containerd 1.6 (``ctr images pull`` + ``ctr run``) pulls, unpacks (checking the
  DiffIDs of our rewritten config) and runs them, and its rootfs equals imgpipe's and the
  source's plus the eStargz marker files;
- skopeo 1.9 pulls them into containers-storage with partial pulls enabled, through the
  partial path for every layer (its debug log says "Retrieved partial blob");
- imgpipe pulls, unpacks and converts back ctr-remote's own eStargz and zstd:chunked.

Images go through the session's registry; containerd is the private one of
tests/containerd_fixture.py.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from containerd_fixture import Containerd
from registry_fixtures import Registry
from treecompare import assert_same, snapshot

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="containerd, overlay mounts and runc need root (CI runs as root)"
)

FORMATS = ("estargz", "zstdchunked")
#: What eStargz adds to a rootfs (stargz-snapshotter's writer does the same): the
#: landmark and the TOC, mode 0000, as plain files.
MARKERS = {"estargz": {".no.prefetch.landmark", "stargz.index.json"}, "zstdchunked": set()}
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
REPO = "esgz-peers/layered"


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def manifest(registry: Registry, repo: str, tag: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(registry.manifest(repo, tag))
    return doc


def blob(registry: Registry, repo: str, digest: str) -> bytes:
    status, _, body = registry.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert status == 200, f"GET blob {digest}: {status}"
    return body


@pytest.fixture(scope="module")
def converted(registry: Registry, fixture_dir: Path) -> dict[str, str]:
    """The layered fixture (gzip) in the registry, and imgpipe's two conversions of it."""
    registry.push_layout(fixture_dir / "layered", "layered", REPO, "gzip")
    refs = {"gzip": registry.ref(REPO, "gzip")}
    for fmt in FORMATS:
        refs[fmt] = registry.ref(REPO, fmt)
        ok(run_cli("convert", f"--{fmt}", refs["gzip"], refs[fmt]))
    return refs


@pytest.fixture
def ctd(containerd: Containerd, request: pytest.FixtureRequest) -> Containerd:
    return containerd.namespace(request.node.name.replace("[", "-").rstrip("]"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_ctr_remote_reads_our_toc_digest(
    fmt: str, converted: dict[str, str], registry: Registry, ctd: Containerd
) -> None:
    ctd.pull(converted[fmt], unpack=False)
    zstd = ["--zstdchunked"] if fmt == "zstdchunked" else []
    layers = manifest(registry, REPO, fmt)["layers"]
    assert layers
    for layer in layers:
        want = layer["annotations"][TOC_DIGEST]
        got = ctd.ctr_remote("images", "get-toc-digest", *zstd, layer["digest"]).stdout.strip()
        assert got == want, layer["digest"]
        if fmt == "estargz":
            # Go's json.MarshalIndent of the TOC it parsed gives back our exact bytes
            dump = ctd.ctr_remote("images", "get-toc-digest", "--dump-toc", layer["digest"])
            with tarfile.open(
                fileobj=io.BytesIO(gzip.decompress(blob(registry, REPO, layer["digest"])))
            ) as t:
                ours = t.extractfile("stargz.index.json").read()  # type: ignore[union-attr]
            assert dump.stdout.rstrip("\n").encode() == ours


@pytest.mark.parametrize("fmt", FORMATS)
def test_containerd_pulls_unpacks_and_runs_our_images(
    fmt: str, converted: dict[str, str], ctd: Containerd, tmp_path: Path
) -> None:
    ref = converted[fmt]
    ctd.pull(ref)  # unpack: containerd checks every layer against the config's DiffIDs
    out = ctd.run(ref, "/bin/cat", "/etc/motd")
    assert out.stdout == "layer 3: changed\n"
    ctd.pull(converted["gzip"])
    with ctd.mounted(converted["gzip"]) as src:
        source = snapshot(src)
    with ctd.mounted(ref) as dst:
        ours = snapshot(dst)
    markers = MARKERS[fmt]
    assert markers <= ours.keys()
    for m in markers:
        assert ours[m].mode == 0 and ours[m].kind == "file"
    assert_same(source, ours, ignore_paths=markers)
    # imgpipe's own rootfs of the same image holds what containerd's holds
    root = tmp_path / "root"
    ok(run_cli("pull", ref, root=root))
    ok(run_cli("unpack", ref, "--export", str(tmp_path / "rootfs"), root=root))
    assert_same(ours, snapshot(tmp_path / "rootfs"))


def _storage_conf(workdir: Path) -> Path:
    (workdir / "graph").mkdir(parents=True)
    (workdir / "run").mkdir()
    conf = workdir / "storage.conf"
    conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{workdir / "graph"}"\n'
        f'runroot = "{workdir / "run"}"\n'
        "[storage.options]\n"
        'pull_options = {enable_partial_images = "true", use_hard_links = "false", '
        'ostree_repos = ""}\n'
    )
    return conf


@pytest.fixture
def partial_storage(tmp_path: Path) -> Iterator[Path]:
    """A containers-storage (overlay) with partial pulls on; unmounted after the test."""
    conf = _storage_conf(tmp_path / "storage")
    yield conf
    graph = tmp_path / "storage" / "graph"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if str(graph) in line.split()[1]]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_skopeo_pulls_our_images_through_the_partial_path(
    fmt: str,
    converted: dict[str, str],
    registry: Registry,
    partial_storage: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(partial_storage))  # skopeo_env keeps it
    proc = registry.skopeo(
        "--debug",
        "copy",
        "--src-tls-verify=false",
        f"docker://{converted[fmt]}",
        f"containers-storage:localhost/esgz-peers:{fmt}",
    )
    layers = {layer["digest"] for layer in manifest(registry, REPO, fmt)["layers"]}
    partial = {
        line.rsplit(" ", 1)[-1].strip('"')
        for line in proc.stderr.splitlines()
        if "Retrieved partial blob" in line
    }
    assert "Failed to retrieve partial blob" not in proc.stderr
    assert partial == layers


@pytest.mark.parametrize("fmt", FORMATS)
def test_imgpipe_reads_ctr_remotes_output_and_converts_it_back(
    fmt: str, converted: dict[str, str], registry: Registry, ctd: Containerd, tmp_path: Path
) -> None:
    theirs = registry.ref(REPO, f"ctr-remote-{fmt}")
    ctd.pull(converted["gzip"])
    ok(ctd.ctr_remote("images", "convert", f"--{fmt}", "--oci", converted["gzip"], theirs))
    ctd.push(theirs)
    root = tmp_path / "root"
    ok(run_cli("pull", theirs, root=root))
    ok(run_cli("unpack", theirs, "--export", str(tmp_path / "theirs"), root=root))
    ok(run_cli("pull", converted["gzip"], root=root))
    ok(run_cli("unpack", converted["gzip"], "--export", str(tmp_path / "source"), root=root))
    # stargz-snapshotter's zstd variant has the landmark too, but no TOC entry
    markers = (
        {".no.prefetch.landmark", "stargz.index.json"}
        if fmt == "estargz"
        else {".no.prefetch.landmark"}
    )
    tree = snapshot(tmp_path / "theirs")
    assert markers <= tree.keys()
    assert_same(snapshot(tmp_path / "source"), tree, ignore_paths=markers)
    # back to a plain stream: the TOC annotations go, the tar (so the DiffIDs) stays
    back = registry.ref(REPO, f"ctr-remote-{fmt}-back")
    ok(run_cli("convert", "--gzip", theirs, back))
    doc = manifest(registry, REPO, f"ctr-remote-{fmt}-back")
    for layer in doc["layers"]:
        assert TOC_DIGEST not in layer.get("annotations", {})
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    src_cfg = json.loads(
        blob(registry, REPO, manifest(registry, REPO, f"ctr-remote-{fmt}")["config"]["digest"])
    )
    back_cfg = json.loads(blob(registry, REPO, doc["config"]["digest"]))
    assert back_cfg["rootfs"] == src_cfg["rootfs"]
    ctd.pull(back)
    assert ctd.run(back, "/bin/cat", "/etc/motd").stdout == "layer 3: changed\n"
