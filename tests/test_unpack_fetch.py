"""``pull --unpack`` applies layers while later blobs still download (FetchUnpack).

Against the real registry and the fault proxy: the tree is right, the overlap really
happens (layers committed while the last blob is held by the proxy), and a failure on
either side (a corrupt download, a layer whose DiffID is not the config's) stops the
other and leaves the store as it was: no image, nothing active, content verifies.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import after_leases_expire
from faultproxy import FaultProxy
from registry_fixtures import LayoutImage, Registry, read_layout

import imgpipe
from fixtures.build import LAYERED_ABSENT, expected_rootfs
from imgpipe.errors import DigestMismatch, NotFound
from imgpipe.events import Event, EventKind
from imgpipe.formats.chainid import chain_ids
from imgpipe.formats.digest import Digest
from imgpipe.snapshot_admin import snapshots_list
from imgpipe.store import Store
from imgpipe.transports import TransportOptions
from imgpipe.unpacking import (
    EVENT_LAYER_FAILED,
    EVENT_LAYER_UNPACKED,
    UnpackResult,
    mount,
    pull_unpack,
    umount,
)
from tests.test_unpack import needs_root, rewrite_config
from tests.treecompare import matches_expected, snapshot

ProxyFactory = Callable[[Registry], FaultProxy]
#: Bound on every wait for the pull thread (the registry is local: seconds at most).
DEADLINE = 60.0


@pytest.fixture(scope="module")
def layered(registry: Registry, fixture_dir: Path) -> LayoutImage:
    registry.push_layout(fixture_dir / "layered", "layered", "fetchunpack/layered", "v1")
    return read_layout(fixture_dir / "layered", "layered")


def blob_path(digest: str) -> str:
    return f"/blobs/{digest}$"


def diff_ids(img: LayoutImage, layout: Path) -> list[Digest]:
    raw = (layout / "blobs" / "sha256" / img.manifest["config"]["digest"][7:]).read_bytes()
    return [Digest.parse(d) for d in json.loads(raw)["rootfs"]["diff_ids"]]


def assert_as_it_was(store: Store) -> None:
    """No image, no active snapshot, every stored blob verifies."""
    assert imgpipe.images(store=store) == []
    assert "active" not in {i.kind.value for _, i in snapshots_list(store=store)}
    assert list(store.content.verify()) == []


class PullThread:
    """``pull_unpack`` on a thread of its own (own Store), events collected."""

    def __init__(self, ref: str, root: Path, sn: str, **kw: object) -> None:
        self.events: list[Event] = []
        self.result: UnpackResult | None = None
        self.error: BaseException | None = None
        self.on_event: Callable[[Event], None] | None = None

        def observe(e: Event) -> None:
            self.events.append(e)
            if self.on_event is not None:
                self.on_event(e)

        def target() -> None:
            try:
                _, self.result = pull_unpack(
                    ref,
                    snapshotter=sn,
                    root=root,
                    observer=observe,
                    **kw,  # type: ignore[arg-type]
                )
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in list(self.events) if e.kind == kind]

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "pull --unpack did not finish"


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
def test_pull_unpack_from_registry_gives_the_tree(
    registry: Registry, layered: LayoutImage, fixture_dir: Path, tmp_path: Path, sn: str
) -> None:
    with Store(tmp_path / "root") as store:
        rec, result = pull_unpack(
            registry.ref("fetchunpack/layered", "v1"), snapshotter=sn, store=store
        )
        assert str(rec.target.digest) == layered.manifest_digest
        ids = diff_ids(layered, fixture_dir / "layered")
        assert [layer.diff_id for layer in result.layers] == ids
        assert result.chain_id == chain_ids(ids)[-1]
        assert not any(layer.reused for layer in result.layers)
        infos = snapshots_list(snapshotter=sn, store=store)
        assert {i.kind.value for _, i in infos} == {"committed"} and len(infos) == 4
        target = tmp_path / "mnt"
        target.mkdir()
        mount(rec.name, target, read_only=True, snapshotter=sn, store=store)
        try:
            tree = snapshot(target)
        finally:
            umount(target, store=store)
        assert matches_expected(tree, expected_rootfs("layered")) == []
        assert not (LAYERED_ABSENT & tree.keys())
        assert list(store.content.verify()) == []
        # a second pull --unpack reuses every layer
        _, again = pull_unpack(
            registry.ref("fetchunpack/layered", "v1"), snapshotter=sn, store=store
        )
        assert all(layer.reused for layer in again.layers)


@needs_root
def test_layers_are_applied_while_the_last_blob_still_downloads(
    registry: Registry, layered: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    last, size = layered.layers[-1]
    proxy.stall(blob_path(last), after=size // 2)
    pull = PullThread(proxy.ref("fetchunpack/layered", "v1"), tmp_path / "root", "overlay")
    try:
        deadline = time.monotonic() + DEADLINE
        # the first three layers are unpacked while the proxy holds the last blob
        while len(pull.kinds(EVENT_LAYER_UNPACKED)) < len(layered.layers) - 1:
            assert pull.thread.is_alive(), pull.error
            assert time.monotonic() < deadline, "the first layers were never unpacked"
            pull.thread.join(0.02)
        assert proxy.served(blob_path(last)) < size
        assert not [e for e in pull.kinds(EventKind.BLOB_DONE) if str(e.digest) == last]
        assert pull.thread.is_alive()
        unpacked = [str(e.digest) for e in pull.kinds(EVENT_LAYER_UNPACKED)]
        assert unpacked == [d for d, _ in layered.layers[:-1]]
        with Store(tmp_path / "root") as store:
            committed = {
                i.key for _, i in snapshots_list(store=store) if i.kind.value == "committed"
            }
            assert len(committed) == len(layered.layers) - 1
            assert imgpipe.images(store=store) == []  # not recorded before every blob
    finally:
        proxy.release()
    pull.join()
    assert pull.error is None, pull.error
    assert pull.result is not None and len(pull.result.layers) == 4
    with Store(tmp_path / "root") as store:
        assert [str(i.target.digest) for i in imgpipe.images(store=store)] == [
            layered.manifest_digest
        ]
        assert list(store.content.verify()) == []


@needs_root
def test_corrupt_last_blob_fails_cleanly(
    registry: Registry,
    layered: LayoutImage,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    fixture_dir: Path,
) -> None:
    proxy = fault_proxy(registry)
    last, _ = layered.layers[-1]
    proxy.corrupt(blob_path(last), offset=100)
    with Store(tmp_path / "root") as store:
        with pytest.raises(DigestMismatch, match=last):
            pull_unpack(proxy.ref("fetchunpack/layered", "v1"), snapshotter="overlay", store=store)
        assert_as_it_was(store)
        assert not store.content.exists(Digest.parse(last))
        top = chain_ids(diff_ids(layered, fixture_dir / "layered"))[-1]
        with pytest.raises(NotFound):
            store.db.get_snapshot("overlay", str(top))
        # the image's documents and blobs fetched by the failed run stay under its
        # lease for a retry, and go once it expired
        assert store.content.exists(Digest.parse(layered.manifest_digest))
        after_leases_expire(store)
        assert not store.content.exists(Digest.parse(layered.manifest_digest))


@needs_root
def test_apply_failure_stops_the_downloads(
    registry: Registry,
    layout_copy,
    fault_proxy: ProxyFactory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    layout = layout_copy("layered")
    wrong = "sha256:" + hashlib.sha256(b"not this layer").hexdigest()

    def edit(config: dict) -> None:  # type: ignore[type-arg]
        config["rootfs"]["diff_ids"][0] = wrong

    rewrite_config(layout, edit)
    registry.push_layout(layout, "layered", "fetchunpack/bad-diffid", "v1")
    img = read_layout(layout, "layered")
    proxy = fault_proxy(registry)
    second, size = img.layers[1]
    # one download at a time: config, layer 1, then layer 2 is held by the proxy, so
    # layer 1's apply fails while layer 2 is in flight and layers 3-4 are still queued
    proxy.stall(blob_path(second), after=size // 2)
    pull = PullThread(
        proxy.ref("fetchunpack/bad-diffid", "v1"),
        tmp_path / "root",
        "overlay",
        options=TransportOptions(max_concurrent=1),
    )

    def release_on_failure(e: Event) -> None:
        if e.kind == EVENT_LAYER_FAILED:
            proxy.release()

    pull.on_event = release_on_failure
    try:
        pull.join()
    finally:
        proxy.release()
    assert isinstance(pull.error, DigestMismatch), pull.error
    assert "layer 1/4" in str(pull.error)
    failed = pull.kinds(EVENT_LAYER_FAILED)
    assert [str(e.digest) for e in failed] == [img.layers[0][0]]
    # the queued downloads never started; the one in flight was not committed
    for digest, _ in img.layers[2:]:
        assert proxy.log(blob_path(digest), "GET") == []
    with Store(tmp_path / "root") as store:
        assert_as_it_was(store)
        assert snapshots_list(store=store) == []
        after_leases_expire(store)  # what the run fetched was kept for a retry until then
        assert list(store.content.walk()) == []
