"""Unpack into snapshots, mount, export, GC: the library, against real snapshotters.

Trees are compared with ``fixtures.build.expected_rootfs`` and with ``umoci unpack``'s
rootfs (umoci cannot read zstd, Docker-typed or multi-arch fixtures: those are compared
with umoci's tree of the fixture that has the same layers as plain OCI gzip). Mounts
and overlay need root; CI runs as root. btrfs runs on a loop-backed file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from btrfs_fixture import loop_btrfs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import imgpipe
from fixtures.build import FIXTURE_NAMES, LAYERED_ABSENT, expected_rootfs
from imgpipe.errors import (
    AlreadyExists,
    DigestMismatch,
    FailedPrecondition,
    NotFound,
    Unauthorized,
)
from imgpipe.formats.chainid import chain_ids
from imgpipe.formats.config import ImageConfig
from imgpipe.formats.platform import host_platform
from imgpipe.metadata.labels import LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED
from imgpipe.pipeline import Context, Pipeline
from imgpipe.snapshot_admin import snapshot_remove, snapshots_list
from imgpipe.store import Store
from imgpipe.unpacking import (
    Unpack,
    UnpackResult,
    export_rootfs,
    mount,
    mounted,
    prepare_rootfs,
    umount,
    unpack,
)
from imgpipe.unpacking.stages import FindImage
from tests.test_diff_apply import image_layers
from tests.test_ocicrypt_skopeo import Skopeo
from tests.treecompare import assert_same, matches_expected, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

#: The fixture whose layers umoci can read and that has the same DiffIDs.
UMOCI_PEER = {
    "busybox": "busybox",
    "busybox-zstd": "busybox",
    "busybox-uncompressed": "busybox-uncompressed",
    "busybox-docker": "busybox",
    "busybox-multiarch": "busybox",
    "layered": "layered",
    "layered-zstd": "layered",
    "layered-uncompressed": "layered-uncompressed",
    "layered-docker": "layered",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install {name} (or make setup)")
    return path


@pytest.fixture(scope="module")
def umoci_trees(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """umoci's rootfs of each peer fixture, as a tree snapshot (made once)."""
    if os.geteuid() != 0:
        return {}
    out = {}
    for name in sorted(set(UMOCI_PEER.values())):
        bundle = tmp_path_factory.mktemp("umoci") / "bundle"
        subprocess.run(
            [_tool("umoci"), "unpack", "--image", f"{fixture_dir / name}:{name}", str(bundle)],
            check=True,
            capture_output=True,
        )
        out[name] = snapshot(bundle / "rootfs")
    return out


@pytest.fixture(scope="module")
def btrfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_btrfs(tmp_path_factory.mktemp("btrfs")) as mnt:
        yield mnt


def pull(store: Store, layout: Path, tag: str, name: str | None = None) -> str:
    rec = imgpipe.pull(f"oci:{layout}:{tag}", name=name or tag, store=store)
    return rec.name


def sn_dirs(store: Store, sn: str) -> list[str]:
    d = Path(store.root) / "snapshots" / sn / "snapshots"
    return sorted(os.listdir(d)) if d.is_dir() else []


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def check_tree(tree: dict, name: str, umoci_trees: dict[str, dict]) -> None:
    assert matches_expected(tree, expected_rootfs(name)) == []
    if name.startswith("layered"):
        assert not (LAYERED_ABSENT & tree.keys())
    assert_same(tree, umoci_trees[UMOCI_PEER[name]])


def unpack_and_compare(
    store: Store, fixture_dir: Path, *, name: str, sn: str, umoci_trees: dict
) -> None:
    ref = pull(store, fixture_dir / name, name)
    result = unpack(ref, snapshotter=sn, store=store)
    diff_ids = list(_config(store, ref).diff_ids)
    assert result.snapshotter == sn
    assert [layer.diff_id for layer in result.layers] == diff_ids
    assert result.chain_id == chain_ids(diff_ids)[-1]
    assert not any(layer.reused for layer in result.layers)
    target = Path(store.root).parent / "mnt"
    target.mkdir()
    mount(ref, target, read_only=True, snapshotter=sn, store=store)
    try:
        check_tree(snapshot(target), name, umoci_trees)
    finally:
        umount(target, store=store)
    assert str(target) not in mount_points()


def _config(store: Store, ref: str) -> ImageConfig:
    for m in imgpipe.inspect(ref, store=store).manifests:
        if m.config is not None and m.config.architecture == host_platform().architecture:
            return m.config
    raise AssertionError("no manifest for this host")


# --- every fixture, every snapshotter ---------------------------------------------------


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_unpacks_like_umoci(
    fixture_dir: Path, store: Store, umoci_trees: dict, name: str, sn: str
) -> None:
    unpack_and_compare(store, fixture_dir, name=name, sn=sn, umoci_trees=umoci_trees)
    # the committed layer trees exist once each, nothing active is left
    infos = snapshots_list(snapshotter=sn, store=store)
    assert {i.kind.value for _, i in infos} == {"committed"}
    assert len(sn_dirs(store, sn)) == len(infos)


@needs_root
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_btrfs_unpacks_like_umoci(
    fixture_dir: Path, btrfs_dir: Path, umoci_trees: dict, name: str
) -> None:
    work = btrfs_dir / f"w-{name}"
    work.mkdir()
    with Store(work / "root") as store:
        unpack_and_compare(store, fixture_dir, name=name, sn="btrfs", umoci_trees=umoci_trees)


def test_native_without_root_falls_back_and_export_works(
    fixture_dir: Path, tmp_path: Path, store: Store
) -> None:
    """The library without a mount: unpack into native, read the snapshot in place."""
    ref = pull(store, fixture_dir / "layered", "layered")
    result = unpack(ref, snapshotter="native", store=store)
    rec = store.db.get_snapshot("native", str(result.chain_id))
    top = Path(store.root) / "snapshots" / "native" / "snapshots" / rec.backend_id / "fs"
    export_rootfs(ref, tmp_path / "export", store=store)
    assert_same(snapshot(top), snapshot(tmp_path / "export"))
    assert matches_expected(snapshot(top), expected_rootfs("layered")) == [] or os.geteuid() != 0


# --- reuse --------------------------------------------------------------------------------


@needs_root
def test_second_unpack_and_shared_base_reuse(fixture_dir: Path, store: Store) -> None:
    busybox = pull(store, fixture_dir / "busybox", "busybox")
    first = unpack(busybox, snapshotter="overlay", store=store)
    assert [layer.reused for layer in first.layers] == [False]
    again = unpack(busybox, snapshotter="overlay", store=store)
    assert [layer.reused for layer in again.layers] == [True]
    # the layered image's base is the busybox layer: same DiffID, same chain ID
    layered = unpack(
        pull(store, fixture_dir / "layered", "layered"), snapshotter="overlay", store=store
    )
    assert [layer.reused for layer in layered.layers] == [True, False, False, False]
    assert layered.layers[0].chain_id == first.chain_id
    # zstd bytes, same DiffID: reused by chain ID whatever the compression
    zstd = unpack(
        pull(store, fixture_dir / "busybox-zstd", "busybox-zstd"),
        snapshotter="overlay",
        store=store,
    )
    assert [layer.reused for layer in zstd.layers] == [True]
    assert len(snapshots_list(snapshotter="overlay", store=store)) == 4


@needs_root
def test_labels_link_image_to_snapshots_for_gc(fixture_dir: Path, store: Store) -> None:
    ref = pull(store, fixture_dir / "layered", "layered")
    result = unpack(ref, snapshotter="overlay", store=store)
    details = imgpipe.inspect(ref, store=store)
    m = details.manifests[0].manifest
    labels = store.db.content_labels(m.config.digest)
    assert labels[f"{LABEL_GC_REF_SNAPSHOT}.overlay"] == str(result.chain_id)
    for layer, done in zip(m.layers, result.layers, strict=True):
        assert store.db.content_labels(layer.digest)[LABEL_UNCOMPRESSED] == str(done.diff_id)
    gc = imgpipe.gc(store=store)
    assert gc.removed_snapshots == ()
    assert len(snapshots_list(store=store)) == 4


@needs_root
def test_rmi_and_gc_remove_snapshots_and_their_dirs(fixture_dir: Path, store: Store) -> None:
    busybox = pull(store, fixture_dir / "busybox", "busybox")
    layered = pull(store, fixture_dir / "layered", "layered")
    unpack(busybox, snapshotter="overlay", store=store)
    unpack(layered, snapshotter="overlay", store=store)
    unpack(layered, snapshotter="native", store=store)
    assert len(sn_dirs(store, "overlay")) == 4
    result = imgpipe.remove_image(layered, store=store)
    assert result is not None
    # overlay: layered's three upper layers go, the busybox image still holds the base;
    # native: only layered was unpacked there, all four go
    assert sorted(sn for sn, _ in result.removed_snapshots) == ["native"] * 4 + ["overlay"] * 3
    assert [i.key for _, i in snapshots_list(snapshotter="overlay", store=store)] == [
        str(unpack(busybox, snapshotter="overlay", store=store).chain_id)
    ]
    assert len(sn_dirs(store, "overlay")) == 1
    assert sn_dirs(store, "native") == []
    imgpipe.remove_image(busybox, store=store)
    assert snapshots_list(store=store) == []
    assert sn_dirs(store, "overlay") == [] and sn_dirs(store, "native") == []


# --- integrity ----------------------------------------------------------------------------


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / h).write_bytes(data)
    return f"sha256:{h}", len(data)


def rewrite_config(layout: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Change a single-manifest layout's config with ``edit(config)``, re-linking the
    manifest and index so every blob is still valid by its digest."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_bytes())
    mdesc = index["manifests"][0]
    manifest = json.loads((blobs / mdesc["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    edit(config)
    manifest["config"]["digest"], manifest["config"]["size"] = _put(
        layout, json.dumps(config).encode()
    )
    mdesc["digest"], mdesc["size"] = _put(layout, json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps(index))


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
def test_diff_id_mismatch_commits_nothing(layout_copy, store: Store, sn: str) -> None:  # type: ignore[no-untyped-def]
    layout = layout_copy("layered")
    wrong = "sha256:" + hashlib.sha256(b"not this layer").hexdigest()

    def edit(config: dict) -> None:
        config["rootfs"]["diff_ids"][2] = wrong

    rewrite_config(layout, edit)
    ref = pull(store, layout, "layered")
    with pytest.raises(DigestMismatch, match=r"layer 3/4 \(sha256:"):
        unpack(ref, snapshotter=sn, store=store)
    infos = snapshots_list(snapshotter=sn, store=store)
    # the two layers below were fine and stay; nothing of layer 3 or above, nothing active
    good = [str(c) for c in chain_ids([d for _, _, d in image_layers(layout)][:2])]
    assert sorted(i.key for _, i in infos) == sorted(good)
    assert {i.kind.value for _, i in infos} == {"committed"}
    assert len(sn_dirs(store, sn)) == 2


def make_rsa_key(d: Path) -> Path:
    """``d/key.pem`` (PKCS#8) and ``d/key.pub``; returns ``d``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return d


def make_encrypted_layout(fixture_dir: Path, key_dir: Path, work: Path) -> Path:
    """The layered image with every layer encrypted by skopeo (containers/ocicrypt)."""
    Skopeo(work / "home").copy(
        fixture_dir / "layered",
        work / "layout",
        "--encryption-key",
        f"jwe:{key_dir / 'key.pub'}",
        tag="layered",
    )
    return work / "layout"


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rsa_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def encrypted_layout(
    fixture_dir: Path, rsa_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return make_encrypted_layout(fixture_dir, rsa_key, tmp_path_factory.mktemp("enc"))


@needs_root
def test_encrypted_layers_need_the_key(
    encrypted_layout: Path, rsa_key: Path, store: Store, umoci_trees: dict, tmp_path: Path
) -> None:
    ref = pull(store, encrypted_layout, "layered")
    layers = imgpipe.inspect(ref, store=store).manifests[0].manifest.layers
    assert all(d.media_type.is_encrypted() for d in layers)
    with pytest.raises(Unauthorized) as e:
        unpack(ref, snapshotter="overlay", store=store)
    assert str(layers[0].digest) in str(e.value) and "--decrypt-key" in str(e.value)
    assert snapshots_list(store=store) == []
    result = unpack(
        ref, snapshotter="overlay", decrypt_keys=[str(rsa_key / "key.pem")], store=store
    )
    assert len(result.layers) == 4
    target = tmp_path / "mnt"
    target.mkdir()
    key = str(rsa_key / "key.pem")
    mount(ref, target, read_only=True, store=store, snapshotter="overlay", decrypt_keys=[key])
    try:
        check_tree(snapshot(target), "layered", umoci_trees)
    finally:
        umount(target, store=store)
    # reused layers are not decrypted again, but the key is still asked for: having been
    # unpacked once is no licence to use the image without it (imgcrypt's check)
    with pytest.raises(Unauthorized):
        unpack(ref, snapshotter="overlay", store=store)
    again = unpack(ref, snapshotter="overlay", decrypt_keys=[key], store=store)
    assert all(layer.reused for layer in again.layers)


# --- concurrency --------------------------------------------------------------------------

_RACER = """
import sys
import imgpipe.unpacking as u
sys.stdin.read(1)  # both processes start together
r = u.unpack("layered", snapshotter=sys.argv[2], root=sys.argv[1])
print(r.chain_id)
"""


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
def test_two_processes_unpack_one_image(fixture_dir: Path, tmp_path: Path, sn: str) -> None:
    root = tmp_path / "root"
    with Store(root) as store:
        pull(store, fixture_dir / "layered", "layered")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(root), sn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("x")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert outs[0][0] == outs[1][0]
    with Store(root) as store:
        infos = snapshots_list(snapshotter=sn, store=store)
        assert len(infos) == 4
        assert {i.kind.value for _, i in infos} == {"committed"}
        assert len(sn_dirs(store, sn)) == 4


@needs_root
def test_threads_unpack_one_image(fixture_dir: Path, store: Store) -> None:
    import threading

    ref = pull(store, fixture_dir / "layered", "layered")
    results: list[UnpackResult] = []
    errors: list[BaseException] = []
    go = threading.Barrier(3)

    def run() -> None:
        go.wait()
        try:
            results.append(unpack(ref, snapshotter="overlay", root=store.root))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len({r.chain_id for r in results}) == 1
    assert len(snapshots_list(snapshotter="overlay", store=store)) == 4
    assert len(sn_dirs(store, "overlay")) == 4


# --- mounts -------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
def test_mount_umount_leave_nothing(
    fixture_dir: Path, tmp_path: Path, store: Store, sn: str
) -> None:
    ref = pull(store, fixture_dir / "layered", "layered")
    target = tmp_path / "mnt"
    target.mkdir()
    key = mount(ref, target, snapshotter=sn, store=store)
    assert str(target) in mount_points()
    assert mounted(store=store) == [(target, sn, key)]
    (target / "etc" / "written").write_text("container change\n")
    with pytest.raises(AlreadyExists):
        mount(ref, target, snapshotter=sn, store=store)
    with pytest.raises(FailedPrecondition, match="umount"):
        snapshot_remove([key], store=store)
    # gc while mounted: the mount's snapshot and the layers under it stay
    imgpipe.remove_image(ref, store=store)
    assert (target / "etc" / "written").exists()
    assert len(snapshots_list(snapshotter=sn, store=store)) == 5
    umount(target, store=store)
    assert str(target) not in mount_points()
    assert mounted(store=store) == []
    assert not (target / "etc").exists()
    assert "active" not in {i.kind.value for _, i in snapshots_list(store=store)}
    with pytest.raises(NotFound):
        umount(target, store=store)
    imgpipe.gc(store=store)  # the image is gone: now everything goes
    assert snapshots_list(store=store) == []
    assert sn_dirs(store, sn) == []


@needs_root
def test_read_only_mount_refuses_writes(fixture_dir: Path, tmp_path: Path, store: Store) -> None:
    ref = pull(store, fixture_dir / "layered", "layered")
    target = tmp_path / "mnt"
    target.mkdir()
    key = mount(ref, target, read_only=True, snapshotter="overlay", store=store)
    try:
        assert store.db.get_snapshot("overlay", key).kind == "view"
        with pytest.raises(OSError, match="Read-only"):
            (target / "new").write_text("x")
    finally:
        umount(target, store=store)
    assert snapshots_list(store=store) and "view" not in {
        i.kind.value for _, i in snapshots_list(store=store)
    }


@needs_root
def test_prepare_rootfs_for_run(fixture_dir: Path, tmp_path: Path, store: Store) -> None:
    ref = pull(store, fixture_dir / "busybox", "busybox")
    sn, mounts = prepare_rootfs(ref, "ctr-1", snapshotter="overlay", store=store)
    info = sn.stat("ctr-1")
    assert info.kind.value == "active" and "containerd.io/gc.root" in info.labels
    assert [m.type for m in mounts] == ["overlay"]  # upper dir on the image's layer
    with pytest.raises(AlreadyExists):
        prepare_rootfs(ref, "ctr-1", snapshotter="overlay", store=store)
    sn.remove("ctr-1")


@needs_root
def test_unpack_stage_in_pull_and_load_pipelines(fixture_dir: Path, store: Store) -> None:
    ref = f"oci:{fixture_dir / 'layered'}:layered"
    pipeline = Pipeline.pull(name="layered").insert_after("record", Unpack(snapshotter="overlay"))
    result = pipeline.run(imgpipe.formats.reference.parse_transport(ref), store=store)
    assert isinstance(result, UnpackResult) and len(result.layers) == 4
    again = Pipeline([FindImage(), Unpack(snapshotter="overlay")]).run(
        "docker.io/library/layered:latest", store=store
    )
    assert all(layer.reused for layer in again.layers)
    assert isinstance(Context(store), Context)


def test_export_refuses_a_non_empty_target(fixture_dir: Path, tmp_path: Path, store: Store) -> None:
    ref = pull(store, fixture_dir / "busybox", "busybox")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not empty"):
        export_rootfs(ref, tmp_path / "out", store=store)
    assert os.listdir(tmp_path / "out") == ["x"]


def test_unknown_image_and_snapshot(store: Store) -> None:
    with pytest.raises(NotFound):
        unpack("nothing-here", snapshotter="native", store=store)
    with pytest.raises(NotFound):
        snapshot_remove(["sha256:" + "0" * 64], store=store)
    with pytest.raises(NotFound):
        snapshots_list(snapshotter="zfs", store=store)


def test_imgpipe_unpack_is_the_public_function(fixture_dir: Path, store: Store) -> None:
    """``imgpipe.unpack`` is the function (the package is imgpipe.unpacking)."""
    import imgpipe.unpacking as module

    ref = pull(store, fixture_dir / "busybox", "busybox")
    assert imgpipe.unpack is module.unpack
    result = imgpipe.unpack(ref, snapshotter="native", store=store)
    assert isinstance(result, module.UnpackResult) and len(result.layers) == 1
