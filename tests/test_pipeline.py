"""The pipeline API end to end on the fixture images: import, export, custom stages, bad input."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import after_leases_expire as expire_leases

import imgpipe
from imgpipe import Context, ImagePlan, Pipeline, ResourceLimit, Store
from imgpipe.errors import DigestMismatch, MalformedDocument, NotFound, SizeMismatch
from imgpipe.formats.digest import Digest
from imgpipe.formats.platform import host_platform
from imgpipe.formats.reference import parse_transport


def blob_files(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def store_digests(store: Store) -> set[str]:
    return {str(i.digest) for i in store.content.walk()}


def only_leased(store: Store, digests: set[str]) -> None:
    """What a failed run left is held by one expiring lease, and nothing else."""
    (lease,) = store.db.leases()
    assert lease.expires_at is not None and lease.expires_at > time.time()
    held = {key for kind, key in store.db.lease_resources(lease.id) if kind == "content"}
    assert digests <= held


def root_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1
    return str(index["manifests"][0]["digest"])


def test_pull_layered_verifies_and_names(fixture_dir: Path, store: Store) -> None:
    src = fixture_dir / "layered"
    rec = imgpipe.pull(f"oci:{src}:layered", store=store)
    assert rec.name == "docker.io/library/layered:latest"
    assert str(rec.target.digest) == root_digest(src)
    # every blob of the layout is in the store, byte for byte
    for name, data in blob_files(src).items():
        with store.content.open(Digest("sha256", name)) as f:
            assert f.read() == data
    assert list(store.content.verify()) == []
    details = imgpipe.inspect("layered", store=store)
    assert len(details.manifests) == 1
    m = details.manifests[0]
    assert m.config is not None
    assert len(m.manifest.layers) == len(m.config.diff_ids) == 4
    assert [i.name for i in imgpipe.images(store=store)] == ["docker.io/library/layered:latest"]


def test_pull_twice_writes_nothing_new(fixture_dir: Path, store: Store) -> None:
    events: list[imgpipe.Event] = []
    imgpipe.pull(f"oci:{fixture_dir / 'busybox'}:busybox", store=store)
    imgpipe.pull(f"oci:{fixture_dir / 'busybox'}:busybox", store=store, observer=events.append)
    kinds = {e.kind for e in events}
    assert imgpipe.EventKind.BLOB_DONE not in kinds
    assert imgpipe.EventKind.BLOB_EXISTS in kinds


class Recorder:
    """A user stage: records every descriptor the plan holds, passes the plan on."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def run(self, plan: ImagePlan, ctx: Context) -> ImagePlan:
        self.seen = [str(d.digest) for d in plan.descriptors()]
        return plan


class MaxSize:
    """A user stage: refuses images over a size before any layer is downloaded."""

    name = "max-size"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def run(self, plan: ImagePlan, ctx: Context) -> ImagePlan:
        if plan.total_size() > self.limit:
            raise ResourceLimit(f"image is {plan.total_size()} bytes, limit {self.limit}")
        return plan


def test_custom_stage_sees_every_descriptor(fixture_dir: Path, store: Store) -> None:
    rec = Recorder()
    pipeline = Pipeline.pull().insert_after("fetch-documents", rec)
    assert pipeline.names() == ["resolve", "fetch-documents", "recorder", "fetch-blobs", "record"]
    pipeline.run(parse_transport(f"oci:{fixture_dir / 'layered'}:layered"), store=store)
    assert set(rec.seen) == store_digests(store)
    assert len(rec.seen) == 1 + 1 + 4  # manifest, config, four layers


def test_custom_stage_refuses_before_layers_download(fixture_dir: Path, store: Store) -> None:
    pipeline = Pipeline.pull().insert_before("fetch-blobs", MaxSize(1000))
    with pytest.raises(ResourceLimit):
        pipeline.run(parse_transport(f"oci:{fixture_dir / 'layered'}:layered"), store=store)
    # no layer was fetched; what the failed run stored (the manifest) stays under its
    # expiring lease until that expires
    kept = store_digests(store)
    assert len(kept) == 1
    only_leased(store, kept)
    assert imgpipe.images(store=store) == []
    assert not list(store.content.ingests())
    expire_leases(store)
    assert store_digests(store) == set()


def test_pipeline_rejects_duplicate_and_unknown_stage_names() -> None:
    with pytest.raises(imgpipe.InvalidArgument):
        Pipeline([Recorder(), Recorder()])
    with pytest.raises(NotFound):
        Pipeline.pull().insert_after("no-such-stage", Recorder())


@pytest.mark.parametrize(
    "name", ["layered", "layered-zstd", "layered-uncompressed", "layered-docker"]
)
def test_round_trip_layout_store_layout(
    fixture_dir: Path, store: Store, tmp_path: Path, name: str
) -> None:
    src = fixture_dir / name
    imgpipe.pull(f"oci:{src}:{name}", store=store)
    out = tmp_path / "out"
    desc = imgpipe.push(name, f"oci:{out}:{name}", store=store)
    assert str(desc.digest) == root_digest(src)
    assert blob_files(out) == blob_files(src)


def test_round_trip_through_oci_archive(fixture_dir: Path, store: Store, tmp_path: Path) -> None:
    src = fixture_dir / "busybox"
    imgpipe.pull(f"oci:{src}:busybox", store=store)
    archive = tmp_path / "busybox.tar"
    imgpipe.push("busybox", f"oci-archive:{archive}:busybox", store=store)
    with Store(tmp_path / "root2") as other:
        rec = imgpipe.pull(f"oci-archive:{archive}:busybox", store=other, name="copy")
        assert str(rec.target.digest) == root_digest(src)
        assert store_digests(other) == store_digests(store)


def test_multiarch_picks_platforms(fixture_dir: Path, tmp_path: Path) -> None:
    src = f"oci:{fixture_dir / 'busybox-multiarch'}:busybox-multiarch"
    with Store(tmp_path / "a") as s:
        d = imgpipe.inspect(imgpipe.pull(src, store=s).name, store=s)
        assert d.index is not None and len(d.index.manifests) == 2
        assert [str(m.platform) for m in d.manifests] == [str(host_platform().normalized())]
    with Store(tmp_path / "b") as s:
        d = imgpipe.inspect(imgpipe.pull(src, store=s, platform="linux/arm64").name, store=s)
        assert [m.platform.architecture for m in d.manifests if m.platform] == ["arm64"]
    with Store(tmp_path / "c") as s:
        d = imgpipe.inspect(imgpipe.pull(src, store=s, all_platforms=True).name, store=s)
        assert sorted(m.platform.architecture for m in d.manifests if m.platform) == [
            "amd64",
            "arm64",
        ]
    with Store(tmp_path / "d") as s, pytest.raises(NotFound, match="s390x"):
        imgpipe.pull(src, store=s, platform="linux/s390x")


def _damage(layout: Path, how: str, *, spare: Path) -> None:
    """Damage the largest blob of ``layout`` that the layout ``spare`` does not hold."""
    shared = {p.name for p in (spare / "blobs" / "sha256").iterdir()} if spare.exists() else set()
    blob = max(
        (p for p in (layout / "blobs" / "sha256").iterdir() if p.name not in shared),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(blob.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    elif how == "truncate":
        del data[len(data) // 2 :]
    elif how == "extend":
        data += b"\0" * 10
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "error"),
    [("flip", DigestMismatch), ("truncate", SizeMismatch), ("extend", SizeMismatch)],
)
def test_damaged_blob_fails_and_store_is_unchanged(
    layout_copy: Any, store: Store, fixture_dir: Path, how: str, error: type[Exception]
) -> None:
    imgpipe.pull(f"oci:{fixture_dir / 'busybox'}:busybox", store=store)
    before = store_digests(store)
    images_before = [i.name for i in imgpipe.images(store=store)]
    layout = layout_copy("layered")
    _damage(layout, how, spare=fixture_dir / "busybox")
    with pytest.raises(error):
        imgpipe.pull(f"oci:{layout}:layered", store=store)
    # the damaged blob never got in; the good ones stay for the next attempt, held only
    # by the failed run's expiring lease: nothing old was lost, nothing new is named
    assert before <= store_digests(store)
    only_leased(store, store_digests(store) - before)
    assert [i.name for i in imgpipe.images(store=store)] == images_before
    assert not list(store.content.ingests())
    assert list(store.content.verify()) == []
    expire_leases(store)
    assert store_digests(store) == before


def test_damaged_manifest_is_refused(layout_copy: Any, store: Store) -> None:
    layout = layout_copy("busybox")
    manifest = layout / "blobs" / "sha256" / root_digest(layout).split(":")[1]
    manifest.write_bytes(manifest.read_bytes().replace(b'"layers"', b'"layerz"'))
    with pytest.raises(DigestMismatch):
        imgpipe.pull(f"oci:{layout}:busybox", store=store)
    assert store_digests(store) == set()


def test_malformed_manifest_with_right_digest_is_refused(layout_copy: Any, store: Store) -> None:
    """A manifest whose shape contradicts its media type (CVE-2021-41190), re-hashed so the
    digest checks out: the parser must still refuse it."""
    layout = layout_copy("busybox")
    index = json.loads((layout / "index.json").read_text())
    doc = json.loads(
        (layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes()
    )
    doc["manifests"] = []
    raw = json.dumps(doc).encode()
    hexd = hashlib.sha256(raw).hexdigest()
    (layout / "blobs" / "sha256" / hexd).write_bytes(raw)
    index["manifests"][0].update(digest=f"sha256:{hexd}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(MalformedDocument):
        imgpipe.pull(f"oci:{layout}:busybox", store=store)
    assert imgpipe.images(store=store) == []
    expire_leases(store)  # the refused document stayed only under the run's lease
    assert store_digests(store) == set()


def test_unnamed_source_fails_before_any_blob_moves(layout_copy: Any, store: Store) -> None:
    layout = layout_copy("busybox")
    index = json.loads((layout / "index.json").read_text())
    del index["manifests"][0]["annotations"]
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(imgpipe.InvalidArgument, match="--name"):
        imgpipe.pull(f"oci:{layout}", store=store)
    assert store_digests(store) == set()
    rec = imgpipe.pull(f"oci:{layout}", store=store, name="example.com/named:1")
    assert rec.name == "example.com/named:1"


def test_many_pulls_on_one_store_leak_no_descriptors(fixture_dir: Path, tmp_path: Path) -> None:
    """Scripts reuse one Store for many operations: descriptors must not pile up."""
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with Store(tmp_path / "root") as s:
        imgpipe.pull(f"oci:{fixture_dir / 'layered'}:layered", store=s)
        before = open_fds()
        for i in range(15):
            imgpipe.pull(f"oci:{fixture_dir / 'layered'}:layered", store=s, name=f"copy{i}")
            imgpipe.remove_image(f"copy{i}", store=s)
        assert open_fds() <= before + 2


def test_corrupt_blob_error_names_blob_and_source(
    layout_copy: Any, store: Store, fixture_dir: Path
) -> None:
    layout = layout_copy("layered")
    _damage(layout, "flip", spare=fixture_dir / "nothing-shared")
    with pytest.raises(DigestMismatch) as ei:
        imgpipe.pull(f"oci:{layout}:layered", store=store)
    msg = str(ei.value)
    assert msg.startswith("blob sha256:") and f"from oci:{layout}:layered" in msg
