"""``imgpipe estargz ls|cat`` on layers the peers wrote, read by Range from a real registry.

- eStargz by ``ctr-remote images convert --estargz --oci`` (stargz-snapshotter 0.12, in
  a private containerd 1.6), pushed with ``ctr images push``;
- zstd:chunked by ``skopeo copy --dest-compress-format zstd:chunked`` (skopeo 1.9,
  containers/storage 1.43);
- stargz-snapshotter's zstd variant by ``ctr-remote images convert --zstdchunked --oci``.

Bytes are counted at tests/faultproxy.py in front of the registry; corruption is a byte
flipped by that proxy in one answer (the stored blobs stay intact for the other tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE, run_cli
from containerd_fixture import Containerd
from estargz_images import SourceImage, make_source
from faultproxy import FaultProxy
from registry_fixtures import Registry

BIG = 50 * 1000 * 1000  # the "50 MB layer"
pytestmark = [pytest.mark.slow]


@dataclass(frozen=True)
class Pushed:
    registry: Registry
    repo: str
    tag: str
    source: SourceImage
    layers: list[dict[str, Any]]  # the manifest's layer descriptors

    def ref(self, host: str = "") -> str:
        return f"{host or self.registry.host}/{self.repo}:{self.tag}"

    def blob_path(self, n: int) -> str:
        return f"/blobs/{self.layers[n]['digest']}"


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(IMGPIPE), *args], capture_output=True, timeout=300)


def _layers(registry: Registry, repo: str, tag: str) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = json.loads(registry.manifest(repo, tag))["layers"]
    return layers


@pytest.fixture(scope="module")
def esgz(
    registry: Registry, containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Pushed:
    """The source image converted by ctr-remote to eStargz and pushed to the registry."""
    src = make_source(tmp_path_factory.mktemp("esgz-src"), big=BIG, seed=1)
    registry.push_layout(src.layout, src.tag, "esr-src", "1")
    ctd = containerd.namespace("estargz-read")
    ctd.pull(registry.ref("esr-src", "1"))
    dst = registry.ref("esr-esgz", "ctr-remote")
    ctd.ctr_remote("images", "convert", "--estargz", "--oci", registry.ref("esr-src", "1"), dst)
    ctd.push(dst)
    return Pushed(
        registry, "esr-esgz", "ctr-remote", src, _layers(registry, "esr-esgz", "ctr-remote")
    )


@pytest.fixture(scope="module")
def szstd(esgz: Pushed, containerd: Containerd) -> Pushed:
    """The same source by ``ctr-remote images convert --zstdchunked``: stargz-snapshotter's
    zstd dialect (the eStargz TOC JSON, zstd-compressed in a skippable frame)."""
    ctd = containerd.namespace("estargz-read")
    dst = esgz.registry.ref("esr-szstd", "ctr-remote")
    ctd.ctr_remote(
        "images", "convert", "--zstdchunked", "--oci", esgz.registry.ref("esr-src", "1"), dst
    )
    ctd.push(dst)
    layers = _layers(esgz.registry, "esr-szstd", "ctr-remote")
    return Pushed(esgz.registry, "esr-szstd", "ctr-remote", esgz.source, layers)


@pytest.fixture(scope="module")
def zchunked(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """Another source image (other bytes: nothing for skopeo to reuse) as zstd:chunked."""
    src = make_source(tmp_path_factory.mktemp("zc-src"), big=BIG, seed=2)
    registry.skopeo(
        "copy",
        "--quiet",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        f"oci:{src.layout}:{src.tag}",
        f"docker://{registry.ref('esr-zc', '1')}",
    )
    return Pushed(registry, "esr-zc", "1", src, _layers(registry, "esr-zc", "1"))


def _listing(pushed: Pushed) -> dict[tuple[int, str], dict[str, Any]]:
    out = cli("estargz", "ls", "--json", pushed.ref())
    assert out.returncode == 0, out.stderr
    return {(e["layer"], e["name"]): e for e in json.loads(out.stdout)}


@pytest.mark.parametrize("which", ["esgz", "zchunked", "szstd"])
def test_ls_lists_every_entry(which: str, request: pytest.FixtureRequest) -> None:
    pushed: Pushed = request.getfixturevalue(which)
    entries = _listing(pushed)
    hello = entries[(0, "etc/hello.txt")]
    assert (hello["type"], hello["size"], hello["mode"]) == ("reg", 12, 0o644)
    assert entries[(0, "etc/link")]["linkName"] == "hello.txt"
    assert entries[(0, "etc/hard")] | {"linkName": "etc/hello.txt"} == entries[(0, "etc/hard")]
    x = entries[(0, "etc/x")]
    assert (x["uid"], x["xattrs"]) == (1000, ["user.test"])
    big = entries[(0, "big.bin")]
    assert big["size"] == BIG and big["chunks"] > 1
    assert entries[(0, "etc/empty")].get("size", 0) == 0
    assert (1, "etc/.wh.deleted.txt") in entries and (1, "top.txt") in entries
    if which != "zchunked":
        assert (0, ".no.prefetch.landmark") in entries  # ctr-remote's landmark
    text = cli("estargz", "ls", "--layer", "0", pushed.ref())
    assert text.returncode == 0, text.stderr
    assert b"etc/link -> hello.txt" in text.stdout
    assert b"fetched" in text.stderr  # what it cost, on stderr


@pytest.mark.parametrize("which", ["esgz", "zchunked", "szstd"])
def test_cat_reads_the_merged_view(which: str, request: pytest.FixtureRequest) -> None:
    pushed: Pushed = request.getfixturevalue(which)
    for path, want in pushed.source.files.items():
        out = cli("estargz", "cat", pushed.ref(), "/" + path)
        assert out.returncode == 0, (path, out.stderr)
        assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(want).hexdigest(), path
    # a symlink is followed through the merged view; a hardlink keeps its own layer's data
    assert cli("estargz", "cat", pushed.ref(), "etc/link").stdout == b"hello again\n"
    assert cli("estargz", "cat", pushed.ref(), "etc/hard").stdout == b"hello world\n"
    # the top layer whites the file out; the bottom layer still has it
    gone = cli("estargz", "cat", pushed.ref(), "etc/deleted.txt")
    assert gone.returncode == 5 and b"no 'etc/deleted.txt'" in gone.stderr
    lower = cli("estargz", "cat", "--layer", "0", pushed.ref(), "etc/deleted.txt")
    assert lower.stdout == b"soon gone\n"
    assert cli("estargz", "cat", pushed.ref(), "etc").returncode == 3  # a directory


@pytest.mark.parametrize("which", ["esgz", "zchunked", "szstd"])
def test_cat_of_a_small_file_fetches_under_one_percent(
    which: str, request: pytest.FixtureRequest, fault_proxy: Callable[[Registry], FaultProxy]
) -> None:
    pushed: Pushed = request.getfixturevalue(which)
    proxy = fault_proxy(pushed.registry)
    out = cli("estargz", "cat", pushed.ref(proxy.host), "etc/x")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"v1"
    size = int(pushed.layers[0]["size"])
    assert size > BIG
    layer0 = proxy.served(pushed.blob_path(0))
    every_blob = proxy.served("/blobs/")
    print(f"{which}: cat etc/x fetched {layer0} of {size} bytes of layer 0, {every_blob} in all")
    assert layer0 < size / 100
    assert every_blob < size / 100
    for r in proxy.log("/blobs/", method="GET"):
        assert r.status == 206 and r.headers.get("Range", "").startswith("bytes=")


def test_flipped_chunk_byte_is_exit_8_and_no_bytes(
    esgz: Pushed, fault_proxy: Callable[[Registry], FaultProxy]
) -> None:
    proxy = fault_proxy(esgz.registry)
    # Offset 100 000 lies in big.bin's first chunk (4 MiB) only: the footer and the TOC
    # answers are shorter.
    proxy.corrupt(esgz.blob_path(0), offset=100_000, times=None)
    out = cli("estargz", "cat", esgz.ref(proxy.host), "big.bin")
    assert out.returncode == 8, out.stderr
    assert out.stdout == b""
    message = out.stderr.decode()
    assert f"layer 0 ({esgz.layers[0]['digest']})" in message and "big.bin" in message
    assert len(message.strip().splitlines()) == 1


@pytest.mark.parametrize(("which", "offset", "what"), [
    ("esgz", 60, "TOC"),       # inside the TOC member (the footer answer is 51 bytes)
    ("esgz", 20, "footer"),    # the footer's TOC offset digits (times=1: the first GET)
    ("zchunked", 20, "TOC"),   # skopeo's layers are read from the position annotation
])  # fmt: skip
def test_flipped_toc_or_footer_byte_is_exit_8(
    which: str,
    offset: int,
    what: str,
    request: pytest.FixtureRequest,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    pushed: Pushed = request.getfixturevalue(which)
    proxy = fault_proxy(pushed.registry)
    proxy.corrupt(pushed.blob_path(1), offset=offset, times=None if what == "TOC" else 1)
    out = cli("estargz", "ls", "--layer", "1", pushed.ref(proxy.host))
    assert out.returncode == 8, out.stderr
    message = out.stderr.decode()
    assert f"layer 1 ({pushed.layers[1]['digest']})" in message
    assert what in message or "TOC" in message, message
    assert out.stdout == b""


@dataclass
class NoRangeProxy(FaultProxy):
    """A registry front that drops the Range header: every blob GET is answered whole."""

    def _forward(self, h: Any) -> None:
        del h.headers["Range"]
        super()._forward(h)


def test_registry_ignoring_range_is_reported_not_downloaded(esgz: Pushed) -> None:
    proxy = NoRangeProxy(esgz.registry.host).start()
    try:
        out = cli("estargz", "cat", esgz.ref(proxy.host), "etc/x")
        served = proxy.served("/blobs/")
    finally:
        proxy.close()
    assert out.returncode == 11, out.stderr
    assert b"ignores HTTP Range" in out.stderr and out.stdout == b""
    # the 200 answer is hung up on at once: a few socket buffers at most, not the layer
    assert served < int(esgz.layers[1]["size"]) + 4 * 1024 * 1024


def test_an_oci_layout_is_read_by_seeking(esgz: Pushed, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    esgz.registry.copy_out(esgz.repo, esgz.tag, layout, tag_in_layout="esgz")
    out = cli("estargz", "cat", f"oci:{layout}:esgz", "top.txt")
    assert out.returncode == 0, out.stderr
    assert out.stdout == esgz.source.files["top.txt"]


@pytest.mark.parametrize("which", ["esgz", "zchunked", "szstd"])
def test_cat_of_the_big_file_merges_adjacent_chunks(
    which: str, request: pytest.FixtureRequest, fault_proxy: Callable[[Registry], FaultProxy]
) -> None:
    pushed: Pushed = request.getfixturevalue(which)
    proxy = fault_proxy(pushed.registry)
    out = cli("estargz", "cat", pushed.ref(proxy.host), "big.bin")
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(pushed.source.big).digest()
    gets = proxy.log(pushed.blob_path(0), method="GET")
    size = int(pushed.layers[0]["size"])
    served = proxy.served(pushed.blob_path(0))
    print(f"{which}: cat big.bin: {len(gets)} GETs, {served} of {size} bytes of layer 0")
    # footer + TOC, then one request per 16 MiB of adjacent chunks, not one per chunk
    assert len(gets) <= 2 + -(-size // (16 << 20)) + 1
    assert served <= size


def test_pull_and_unpack_read_ctr_remotes_estargz_as_gzip(esgz: Pushed, tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "rootfs"
    pulled = run_cli("pull", esgz.ref(), root=root)
    assert pulled.returncode == 0, pulled.stderr
    unpacked = run_cli("unpack", "--export", str(out), esgz.ref(), root=root)
    assert unpacked.returncode == 0, unpacked.stderr
    for path, want in esgz.source.files.items():
        assert (out / path).read_bytes() == want, path
    assert not (out / "etc/deleted.txt").exists()
    assert os.readlink(out / "etc/link") == "hello.txt"
    # what containerd's rootfs holds too: the landmark and the TOC entry (README)
    assert (out / ".no.prefetch.landmark").read_bytes() == b"\x0f"
    assert json.loads((out / "stargz.index.json").read_bytes())["version"] == 1


def test_skopeos_zstd_chunked_diff_id_bug_is_caught(zchunked: Pushed, tmp_path: Path) -> None:
    # skopeo 1.9 drops the tar's trailing padding but keeps the source DiffID in the
    # config (reference 2.1): unpacking must refuse it, as containerd does, while a
    # Range read (which needs no DiffID) still serves verified files.
    root = tmp_path / "root"
    assert run_cli("pull", zchunked.ref(), root=root).returncode == 0
    unpacked = run_cli("unpack", "--export", str(tmp_path / "rootfs"), zchunked.ref(), root=root)
    assert unpacked.returncode == 8, unpacked.stderr
    assert "DiffID" in unpacked.stderr
    assert cli("estargz", "cat", zchunked.ref(), "etc/hello.txt").stdout == b"hello again\n"


def test_the_ranged_layer_api(esgz: Pushed) -> None:
    """The library API issue 15's lazy mounts build on, as the README shows it."""
    from imgpipe.formats.reference import parse_transport
    from imgpipe.image import Image, RangedLayer, load, range_reader
    from imgpipe.transports import open_source

    with open_source(parse_transport(esgz.ref())) as src:
        image = load(src, src.resolve())
        assert isinstance(image, Image)
        layer = RangedLayer(image.layers()[0], range_reader(src))
        assert layer.stat("/etc/hello.txt").size == 12
        assert layer.fetcher.requests == 2  # footer and TOC
        assert {e.name for e in layer.listdir("etc")} >= {"etc/hello.txt", "etc/link"}
        assert layer.readlink("etc/link") == "hello.txt"
        assert layer.read("etc/hello.txt", 6, 100) == b"world\n"
        big = esgz.source.big
        assert layer.read("big.bin", (4 << 20) - 3, 6) == big[(4 << 20) - 3 : (4 << 20) + 3]
        requests = layer.fetcher.requests
        assert layer.read("big.bin", 4 << 20, 10) == big[4 << 20 : (4 << 20) + 10]  # cached
        assert layer.fetcher.requests == requests
        assert layer.format == "estargz" and layer.diff_id() == image.config().diff_ids[0]


def test_a_dropped_connection_is_resumed_from_the_missing_chunk(
    esgz: Pushed, fault_proxy: Callable[[Registry], FaultProxy]
) -> None:
    proxy = fault_proxy(esgz.registry)
    # the third GET of layer 0 is the first run of big.bin's chunks (after the footer and
    # the TOC, which are shorter than the cut and pass): it is cut after 6 MiB
    proxy.add("truncate", esgz.blob_path(0), after=6 << 20, times=3)
    out = cli("estargz", "cat", esgz.ref(proxy.host), "big.bin")
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(esgz.source.big).digest()
    gets = proxy.log(esgz.blob_path(0), method="GET")
    starts = [int(g.headers["Range"].removeprefix("bytes=").split("-")[0]) for g in gets]
    # the retry starts at the chunk the drop interrupted, not at the run's start
    assert starts[2] < starts[3] < starts[2] + (6 << 20)


@pytest.mark.parametrize("which", ["registry_token", "registry_basic_tls"])
def test_range_reads_behind_token_and_basic_tls_auth(
    which: str, esgz: Pushed, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target: Registry = request.getfixturevalue(which)
    layout = tmp_path / "layout"
    esgz.registry.copy_out(esgz.repo, esgz.tag, layout, tag_in_layout="esgz")
    target.push_layout(layout, "esgz", "esr/auth", "1")
    flags: list[str] = []
    if target.ca_file is not None:
        flags += ["--tls-ca", str(target.ca_file)]
    if which == "registry_basic_tls":
        flags += ["--auth-file", str(target.auth_file(tmp_path))]  # pulls need credentials
    ref = target.ref("esr/auth", "1")
    out = cli("estargz", "cat", *flags, ref, "top.txt")
    assert out.returncode == 0, out.stderr
    assert out.stdout == esgz.source.files["top.txt"]


def test_a_blob_shorter_than_its_descriptor_is_a_size_mismatch(
    esgz: Pushed, fault_proxy: Callable[[Registry], FaultProxy]
) -> None:
    proxy = fault_proxy(esgz.registry)
    proxy.fail(esgz.blob_path(1), status=416, method="GET")  # what a truncated blob answers
    out = cli("estargz", "ls", "--layer", "1", esgz.ref(proxy.host))
    assert out.returncode == 9, out.stderr
    assert b"HTTP 416" in out.stderr
