"""Lazy mounts from a real registry: ctr-remote's eStargz (stargz-snapshotter 0.12 in a
private containerd), our own with a prefetch list; bytes counted and chunks corrupted at
tests/faultproxy.py in front of the registry."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from containerd_fixture import Containerd
from estargz_images import SourceImage, make_source
from faultproxy import FaultProxy
from lazy_fixtures import (
    cli,
    fuse_mounts,
    lazily_mounted,
    lazy_and_full,
    needs_root,
)
from registry_fixtures import Registry

from imgpipe.formats.digest import Digest
from imgpipe.lazy import PREFETCHED
from imgpipe.store import Store

pytestmark = [needs_root, pytest.mark.slow]
BIG = 9 << 20


def _layers(registry: Registry, repo: str, tag: str) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = json.loads(registry.manifest(repo, tag))["layers"]
    return layers


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    return make_source(tmp_path_factory.mktemp("lazy-peer-src"), big=BIG, seed=21)


@pytest.fixture(scope="module")
def ctr_remote(registry: Registry, containerd: Containerd, source: SourceImage) -> str:
    """The source image converted to eStargz by ctr-remote, in the registry: the repo."""
    registry.push_layout(source.layout, source.tag, "lazy-src", "1")
    ctd = containerd.namespace("lazy-fs")
    ctd.pull(registry.ref("lazy-src", "1"))
    dst = registry.ref("lazy-esgz", "ctr-remote")
    ctd.ctr_remote("images", "convert", "--estargz", "--oci", registry.ref("lazy-src", "1"), dst)
    ctd.push(dst)
    return "lazy-esgz"


def test_ctr_remotes_image_mounts_as_it_unpacks(
    ctr_remote: str, registry: Registry, source: SourceImage, tmp_path: Path
) -> None:
    ref = registry.ref(ctr_remote, "ctr-remote")
    got, want = lazy_and_full(ref, tmp_path, big=source.big)
    assert got == want
    assert not fuse_mounts(tmp_path)


def test_a_small_read_fetches_a_small_part(
    ctr_remote: str,
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry)
    layers = _layers(registry, ctr_remote, "ctr-remote")
    size = sum(int(d["size"]) for d in layers)
    with lazily_mounted(
        proxy.ref(ctr_remote, "ctr-remote"), Store(tmp_path / "r"), tmp_path / "s"
    ) as m:
        assert (m.lowers[0] / "etc/hello.txt").read_bytes() == b"hello again\n"
        assert (m.lowers[1] / "etc/seed").read_bytes().startswith(b"seed ")
        fetched = proxy.served("/blobs/")
        assert fetched < size / 100, (fetched, size)  # footers, TOCs, two small chunks
        assert sum(ls.fetched for ls in m.status()) <= fetched


def test_a_flipped_chunk_byte_is_eio_names_the_layer_and_commits_nothing(
    ctr_remote: str,
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry)
    layers = _layers(registry, ctr_remote, "ctr-remote")
    bottom = layers[0]["digest"]
    store = Store(tmp_path / "root")
    ref = proxy.ref(ctr_remote, "ctr-remote")
    # offset 100 000 of an answer: inside big.bin's first chunk, and inside every
    # background piece of the bottom layer; the footers, TOCs and the top layer's
    # answers are shorter
    proxy.corrupt(f"/blobs/{bottom}", offset=100_000, times=None)
    with lazily_mounted(ref, store, tmp_path / "state") as m:
        with pytest.raises(OSError) as e:
            (m.lowers[1] / "big.bin").read_bytes()
        assert e.value.errno == errno.EIO
        error = m.status()[0].error
        assert f"layer 0 ({bottom})" in error and "big.bin" in error, error
        assert not m.failure()  # the server still serves the rest
        assert (m.lowers[0] / "top.txt").read_bytes().startswith(b"from the top layer")
    with lazily_mounted(ref, store, tmp_path / "again", background=True) as m:
        settled = m.wait_settled(120)
        assert settled is not None
        assert settled[0].state != "complete"
        assert f"layer 0 ({bottom})" in settled[0].error and "not committed" in settled[0].error
        assert settled[1].state == "complete"
    assert not store.content.exists(Digest.parse(bottom))
    assert store.content.exists(Digest.parse(layers[1]["digest"]))


def test_the_prefetch_list_is_fetched_first_in_one_request(
    source: SourceImage,
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:
    record = tmp_path / "record.txt"
    record.write_text("etc/hello.txt\netc/seed\n")
    layout = tmp_path / "prefetch"
    out = cli(
        "convert",
        "--estargz",
        "--estargz-record-in",
        record,
        f"oci:{source.layout}:{source.tag}",
        f"oci:{layout}:p",
    )
    assert out.returncode == 0, out.stderr
    registry.push_layout(layout, "p", "lazy-prefetch", "1")
    proxy = fault_proxy(registry)
    bottom = _layers(registry, "lazy-prefetch", "1")[0]["digest"]
    ref = proxy.ref("lazy-prefetch", "1")
    with lazily_mounted(ref, Store(tmp_path / "root"), tmp_path / "state") as m:
        settled = m.wait_settled(60)  # no background fetch: the prefetch only
        assert settled is not None and settled[0].state == PREFETCHED
        gets = proxy.log(f"/blobs/{bottom}", method="GET")
        prefetch = gets[-1].headers["Range"]
        assert prefetch.startswith("bytes=0-")  # one request from the start
        served = proxy.served(f"/blobs/{bottom}")
        assert (m.lowers[1] / "etc/seed").read_bytes().startswith(b"seed ")
        assert proxy.served(f"/blobs/{bottom}") == served  # read from the cache
        assert (m.lowers[1] / "big.bin").read_bytes() == source.big  # not prefetched
        assert proxy.served(f"/blobs/{bottom}") > served
