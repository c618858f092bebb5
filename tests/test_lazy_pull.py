"""``pull --lazy``, its fallbacks, and the lazy layer caches in ``content ls``/``gc``.

Against the real registry (Debian's docker-registry) on 127.0.0.1, through the installed
command; the image is tests/estargz_images.py's two-layer one, pushed as it is (plain
tar layers: no TOC) and converted by ``imgpipe convert --estargz``.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IMGPIPE
from estargz_images import SourceImage, make_source
from faultproxy import FaultProxy
from registry_fixtures import Registry

from imgpipe.formats.digest import Digest
from imgpipe.lazy.completing import wait_completion
from imgpipe.store import Store

BIG = 3 * 1000 * 1000


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGPIPE), "--root", str(root), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    """``lazy-pull/src:plain`` (tar layers) and ``lazy-pull/src:esgz`` (imgpipe's eStargz)."""
    src = make_source(tmp_path_factory.mktemp("lazy-pull-src"), big=BIG, seed=15)
    registry.push_layout(src.layout, src.tag, "lazy-pull/src", "plain")
    record = tmp_path_factory.mktemp("record") / "record.txt"
    record.write_text("etc/hello.txt\ntop.txt\n")
    for tag, extra in (("esgz", []), ("prefetch", ["--estargz-record-in", str(record)])):
        out = subprocess.run(
            [
                str(IMGPIPE),
                "convert",
                "--estargz",
                *extra,
                registry.ref("lazy-pull/src", "plain"),
                registry.ref("lazy-pull/src", tag),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
    return src


def _layers(registry: Registry, tag: str) -> list[dict[str, object]]:
    layers: list[dict[str, object]] = json.loads(registry.manifest("lazy-pull/src", tag))["layers"]
    return layers


def test_an_image_without_toc_layers_is_pulled_in_full_and_says_so(
    registry: Registry, pushed: SourceImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    out = cli(root, "pull", "--lazy", "--json", registry.ref("lazy-pull/src", "plain"))
    assert out.returncode == 0, out.stderr
    assert "lazy pull of" in out.stderr and "not possible: no layer is eStargz" in out.stderr
    assert "pulled in full" in out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["lazy"]["lazy"] is False
    assert result["lazy"]["fallback"].startswith("no layer is eStargz or zstd:chunked")
    assert {layer["state"] for layer in result["lazy"]["layers"]} == {"pulled"}
    with Store(root) as s:  # a full pull: every layer is a blob
        for layer in _layers(registry, "plain"):
            assert s.content.exists(Digest.parse(str(layer["digest"])))
        rec = s.db.get_image(registry.ref("lazy-pull/src", "plain"))
        assert "org.imgpipe.lazy.source" not in rec.labels
    again = cli(root, "pull", "--lazy", registry.ref("lazy-pull/src", "plain"))
    assert again.returncode == 0, again.stderr
    assert "every layer is in the store already" in again.stderr


def test_lazy_excludes_unpack_and_all_platforms(tmp_path: Path) -> None:
    for flag in ("--unpack", "--all-platforms"):
        out = cli(tmp_path / "root", "pull", "--lazy", flag, "127.0.0.1:1/x:1")
        assert out.returncode == 2
        assert "--lazy excludes" in out.stderr


def _cache(root: Path, digest: str) -> Path:
    path = root / "lazy" / "layers" / digest.removeprefix("sha256:")
    path.mkdir(parents=True)
    # a sparse blob: 1 MiB long, one 4 KiB block written
    with open(path / "blob", "wb") as f:
        f.truncate(1 << 20)
        f.seek(8192)
        f.write(b"x" * 4096)
    return path


def test_gc_removes_the_caches_of_layers_no_image_holds(
    registry: Registry, pushed: SourceImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = registry.ref("lazy-pull/src", "esgz")
    out = cli(root, "pull", "--lazy", "--lazy-background=false", ref)
    assert out.returncode == 0, out.stderr
    held = {str(x["digest"]) for x in _layers(registry, "esgz")}  # lazy: their caches stay
    complete = str(_layers(registry, "plain")[0]["digest"])
    assert cli(root, "pull", "-q", registry.ref("lazy-pull/src", "plain")).returncode == 0
    orphan = "sha256:" + "ab" * 32
    busy = "sha256:" + "cd" * 32
    for digest in (complete, orphan, busy):  # a committed layer's, nobody's, one in use
        _cache(root, digest)
    fd = os.open(root / "lazy" / "layers" / busy.removeprefix("sha256:") / "lock", os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a server using it
        listed = cli(root, "content", "ls", "--lazy", "--json")
        assert listed.returncode == 0, listed.stderr
        caches = {c["digest"]: c for c in json.loads(listed.stdout)}
        assert set(caches) == held | {complete, orphan, busy}
        assert caches[busy]["inUse"] and not caches[orphan]["inUse"]
        assert 4096 <= caches[orphan]["diskBytes"] < 1 << 20  # sparse: what it holds
        dry = cli(root, "gc", "--dry-run")
        assert f"would remove lazy cache {orphan}" in dry.stdout
        assert (root / "lazy" / "layers" / orphan.removeprefix("sha256:")).is_dir()
        out = cli(root, "gc")
        assert out.returncode == 0, out.stderr
        assert f"removed lazy cache {orphan}" in out.stdout
        assert f"removed lazy cache {complete}" in out.stdout  # a second copy of a blob
        assert "2 lazy cache(s)" in out.stdout
        left = {f"sha256:{p.name}" for p in (root / "lazy" / "layers").iterdir()}
        assert left == held | {busy}
    finally:
        os.close(fd)
    # once nothing holds them: the busy one goes, the lazy image's go with the image
    assert cli(root, "rmi", ref).returncode == 0
    assert cli(root, "rmi", registry.ref("lazy-pull/src", "plain")).returncode == 0
    assert not any((root / "lazy" / "layers").iterdir())


def test_a_registry_that_ignores_range_means_a_full_pull_and_says_so(
    registry: Registry,
    pushed: SourceImage,
    fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry)
    proxy.strip_range()
    root = tmp_path / "root"
    out = cli(root, "pull", "--lazy", "--json", proxy.ref("lazy-pull/src", "esgz"))
    assert out.returncode == 0, out.stderr
    assert "ignores HTTP Range" in out.stderr and "pulled in full" in out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["lazy"]["lazy"] is False
    with Store(root) as s:
        for layer in _layers(registry, "esgz"):
            assert s.content.exists(Digest.parse(str(layer["digest"])))


def _stored(root: Path, layers: list[dict[str, object]]) -> list[bool]:
    with Store(root) as s:
        return [s.content.exists(Digest.parse(str(x["digest"]))) for x in layers]


def test_pull_lazy_fetches_tocs_and_prefetch_then_completes_in_the_background(
    registry: Registry, pushed: SourceImage, fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:  # fmt: skip
    proxy = fault_proxy(registry)
    root = tmp_path / "root"
    ref = proxy.ref("lazy-pull/src", "prefetch")
    layers = _layers(registry, "prefetch")
    out = cli(root, "pull", "--lazy", "--lazy-background=false", "--json", ref)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    lazy = result["lazy"]
    assert lazy["lazy"] is True and lazy["fallback"] is None and not lazy["background"]
    states = [layer["state"] for layer in lazy["layers"]]
    assert states == ["prefetched", "prefetched"], states  # the record's files, both layers
    total = sum(int(str(x["size"])) for x in layers)
    served = sum(proxy.served(str(x["digest"])) for x in layers)
    assert 0 < lazy["fetched"] == served < total / 10
    assert not any(_stored(root, layers))
    assert "lazy: fetched" in result["message"]
    # the background completion: a detached process, through the caches, to verified blobs
    again = cli(root, "pull", "--lazy", ref)
    assert again.returncode == 0, again.stderr
    assert "the rest in the background" in again.stdout
    with Store(root) as s:
        manifest = s.db.get_image(ref).target.digest
    wait_completion(root, manifest)
    assert all(_stored(root, layers))
    with Store(root) as s:
        assert "org.imgpipe.lazy.source" not in s.db.get_image(ref).labels
    assert cli(root, "content", "verify").returncode == 0
    # the prefetched ranges came from the cache, not again from the registry (the
    # footers and TOCs are read again by each pull and by the completion)
    starts = [r.headers.get("Range", "") for r in proxy.log("/blobs/sha256:")]
    for layer in layers:
        firsts = [
            r
            for r in proxy.log(str(layer["digest"]))
            if r.headers.get("Range", "").startswith("bytes=0-")
        ]
        assert len(firsts) == 1, starts


def test_a_lazily_pulled_image_unpacks_fetching_what_it_lacks(
    registry: Registry, pushed: SourceImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = registry.ref("lazy-pull/src", "esgz")
    assert cli(root, "pull", "--lazy", "--lazy-background=false", ref).returncode == 0
    layers = _layers(registry, "esgz")
    assert not any(_stored(root, layers))
    out = cli(root, "unpack", "--snapshotter", "native", ref)
    assert out.returncode == 0, out.stderr
    assert all(_stored(root, layers))
    with Store(root) as s:
        assert "org.imgpipe.lazy.source" not in s.db.get_image(ref).labels
