"""``pull --unpack`` applies a layer while its blob downloads (FetchUnpack following the
ingest), against the real registry behind the fault proxy.

Every test holds one layer's blob at the proxy (``stall``: half of it sent, the rest only
on ``release()``), waits until the layer's file shows up in its active snapshot (bytes
applied while the blob cannot have been committed: it is not all there), and only then
lets the download go on, to end well or badly. So "the apply consumed bytes before the
commit" is an observation, not a race; nothing is timed. What is checked:

* the overlapped pull gives the tree and the snapshots (chain IDs) of pull-then-unpack;
* a download corrupted after the apply started (digest mismatch; a gzip layer's decoder
  trips over the bad byte first) fails as a plain download failure: one line, exit 8,
  no snapshot for the layer, no image, the blobs stored before it kept;
* a download cut off mid-layer: the same, and the next pull resumes the kept ingest
  (the follower reads the bytes already there at once) and succeeds;
* on a throttled link the follower's count of bytes handed out before the commit covers
  what the apply wrote while the blob was held;
* an encrypted layer, and a layer decoded by an external processor, follow too.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE, run_cli
from faultproxy import FaultProxy
from registry_fixtures import LayoutImage, Registry, make_random_image, read_layout

import imgpipe
from fixtures.build import expected_rootfs
from imgpipe.formats.chainid import chain_ids
from imgpipe.formats.digest import Digest
from imgpipe.formats.reference import parse_transport
from imgpipe.pipeline import Pipeline
from imgpipe.snapshot_admin import snapshots_list
from imgpipe.store import Store
from imgpipe.unpacking import Unpack, mount, umount
from tests.test_ocicrypt_skopeo import Skopeo
from tests.test_unpack import make_rsa_key, needs_root
from tests.test_unpack_fetch import DEADLINE, PullThread, assert_as_it_was, blob_path, diff_ids
from tests.treecompare import assert_same, matches_expected, snapshot

ProxyFactory = Callable[[Registry], FaultProxy]
EXIT_DIGEST_MISMATCH = 8
EXIT_SIZE_MISMATCH = 9
EXIT_UNAVAILABLE = 13
#: The random image's layers (uncompressed tars of one file ``data-<i>.bin`` each). The
#: held one (1) is large next to a reader's chunk (the verified read hands an
#: uncompressed layer on 1 MiB at a time), so what a test holds back is far past it.
RANDOM_LAYERS = [2 << 20, 8 << 20, 1 << 20]
#: The slow link of the throttled test: bytes per second over every connection.
LINK_RATE = 4_000_000
#: A tar header in front of a layer's file (PAX): what the file lags behind its blob.
TAR_HEADERS = 4096


@pytest.fixture(scope="module")
def layered(registry: Registry, fixture_dir: Path) -> LayoutImage:
    registry.push_layout(fixture_dir / "layered", "layered", "overlap/layered", "v1")
    return read_layout(fixture_dir / "layered", "layered")


@pytest.fixture(scope="module")
def random_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    layout = tmp_path_factory.mktemp("overlap-random") / "layout"
    img = make_random_image(layout, "v1", RANDOM_LAYERS, seed=13)
    registry.push_layout(layout, "v1", "overlap/random", "v1")
    return img


#: name -> (repository, the layer the tests hold, the file of it they watch for ("":
#: the random image's ``data-<i>.bin``))
IMAGES = {"layered": ("overlap/layered", 0, "bin/busybox"), "random": ("overlap/random", 1, "")}


def chains_of(name: str, img: LayoutImage, fixture_dir: Path | None = None) -> list[Digest]:
    """The image's chain IDs: from the config of the fixture layout, or, for the random
    image (uncompressed layers: a DiffID is the blob's digest), from its layers."""
    if name == "layered":
        assert fixture_dir is not None
        return chain_ids(diff_ids(img, fixture_dir / "layered"))
    return chain_ids([Digest.parse(d) for d, _ in img.layers])


def watched(name: str, i: int) -> str:
    """The file of layer ``i`` to watch for: the random image's ``data-<i>.bin``."""
    return IMAGES[name][2] or f"data-{i}.bin"


def applied_size(root: Path, rel: str) -> int:
    """The size of ``rel`` in any snapshot under ``root`` (-1: in none). Directories
    that come and go while it looks (a snapshot being made) are passed over."""
    sizes = [-1]
    for top, _, _ in os.walk(root / "snapshots"):
        with contextlib.suppress(OSError):
            st = os.lstat(os.path.join(top, rel))
            if stat.S_ISREG(st.st_mode):
                sizes.append(st.st_size)
    return max(sizes)


def wait_applied(root: Path, rel: str, running: Callable[[], bool], at_least: int = 1) -> int:
    """Until ``rel`` has ``at_least`` bytes in a snapshot of ``root``: each look is a
    bounded wait on the pull (``running()``), not a clock. The size seen."""
    for _ in range(int(DEADLINE / 0.02)):
        if (size := applied_size(root, rel)) >= at_least:
            return size
        assert running(), "the pull ended before the layer was applied"
    raise AssertionError(f"{rel} was never applied while its blob was held")


def thread_running(pull: PullThread) -> Callable[[], bool]:
    def running() -> bool:
        pull.thread.join(0.02)
        assert pull.error is None, pull.error
        return pull.thread.is_alive()

    return running


def proc_running(proc: subprocess.Popen[str]) -> Callable[[], bool]:
    def running() -> bool:
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            return True
        return False

    return running


def stored(root: Path) -> set[str]:
    """The committed blobs of the store at ``root`` (their files, as ``sha256:<hex>``)."""
    blobs = root / "content" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in blobs.iterdir()} if blobs.is_dir() else set()


def committed(store: Store) -> set[tuple[str, str]]:
    return {
        (i.key, i.parent) for _, i in snapshots_list(store=store) if i.kind.value == "committed"
    }


def pull_cli(root: Path, ref: str, sn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [IMGPIPE, "--root", root, "-q", "pull", "--unpack", "--snapshotter", sn, ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgpipe: error:"), stderr
    for w in words:
        assert w in lines[0], stderr


@needs_root
@pytest.mark.parametrize("sn", ["overlay", "native"])
def test_overlapped_pull_unpack_is_pull_then_unpack(
    registry: Registry, layered: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path, sn: str
) -> None:
    proxy = fault_proxy(registry)
    first, size = layered.layers[0]
    proxy.stall(blob_path(first), after=size // 2)
    a = tmp_path / "overlapped"
    pull = PullThread(proxy.ref("overlap/layered", "v1"), a, sn)
    try:
        wait_applied(a, "bin/busybox", thread_running(pull))
        assert first not in stored(a)  # half of it is still at the proxy
    finally:
        proxy.release()
    pull.join()
    assert pull.error is None, pull.error
    assert pull.result is not None and pull.result.layers[0].followed > 0

    b = tmp_path / "sequential"
    with Store(b) as store:
        pipeline = Pipeline.pull().insert_after("record", Unpack(snapshotter=sn))
        sequential = pipeline.run(
            parse_transport(registry.ref("overlap/layered", "v1")), store=store
        )
    assert [x.chain_id for x in pull.result.layers] == [x.chain_id for x in sequential.layers]
    assert pull.result.chain_id == chain_ids([x.diff_id for x in sequential.layers])[-1]
    snaps_a, tree_a = named_image(a, sn, layered)
    snaps_b, tree_b = named_image(b, sn, layered)
    assert snaps_a == snaps_b and len(snaps_a) == len(layered.layers)
    assert_same(tree_a, tree_b)
    assert matches_expected(tree_a, expected_rootfs("layered")) == []


def named_image(root: Path, sn: str, img: LayoutImage) -> tuple[set[tuple[str, str]], Any]:
    """The store at ``root`` holds ``img`` (named, content verified): its committed
    snapshots (key, parent) and the tree a read-only mount of it shows."""
    with Store(root) as store:
        (rec,) = imgpipe.images(store=store)
        assert str(rec.target.digest) == img.manifest_digest
        assert list(store.content.verify()) == []
        target = root / "mnt"
        target.mkdir()
        mount(rec.name, target, read_only=True, snapshotter=sn, store=store)
        try:
            return committed(store), snapshot(target)
        finally:
            umount(target, store=store)


@pytest.mark.parametrize(
    ("name", "sn"),
    [
        pytest.param("random", "overlay", marks=needs_root, id="tar-layer-2"),
        pytest.param("layered", "native", id="gzip-layer-1"),
    ],
)
def test_a_download_corrupted_while_applied_fails_as_a_download(  # noqa: PLR0917
    registry: Registry,
    layered: LayoutImage,
    random_image: LayoutImage,
    fault_proxy: ProxyFactory,
    fixture_dir: Path,
    tmp_path: Path,
    name: str,
    sn: str,
) -> None:
    img = {"layered": layered, "random": random_image}[name]
    repo, i, _ = IMAGES[name]
    digest, size = img.layers[i]
    proxy = fault_proxy(registry)
    # half the blob, held until the apply has used some; then the connection drops, the
    # client resumes with a Range request, and that answer has one byte flipped
    proxy.stall(blob_path(digest), after=size // 2)
    proxy.corrupt(blob_path(digest), offset=size // 8, times=1)
    root = tmp_path / "root"
    proc = pull_cli(root, proxy.ref(repo, "v1"), sn)
    try:
        wait_applied(root, watched(name, i), proc_running(proc))
        before = stored(root)
        assert digest not in before
    finally:
        proxy.release()
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == EXIT_DIGEST_MISMATCH, err
    one_line_error(err, digest)
    assert len(proxy.log(blob_path(digest), "GET")) == 2  # the bad byte came on the resume
    with Store(root) as store:
        assert_as_it_was(store)  # no image, nothing active, the content verifies
        chains = chains_of(name, img, fixture_dir)
        assert {k for k, _ in committed(store)} == {str(c) for c in chains[:i]}
    assert before <= stored(root)  # the blobs stored before the failure keep
    assert digest not in stored(root)
    # the proxy's faults are spent: the next pull --unpack into the same store works
    again = run_cli("-q", "pull", "--unpack", "--snapshotter", sn, proxy.ref(repo, "v1"), root=root)
    assert again.returncode == 0, again.stderr


def test_a_download_cut_mid_layer_fails_and_the_next_pull_resumes_it(
    registry: Registry, random_image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    i = 1
    digest, size = random_image.layers[i]
    chains = chains_of("random", random_image)
    proxy = fault_proxy(registry)
    proxy.stall(blob_path(digest), after=size // 2)
    proxy.truncate(blob_path(digest), after=0)  # every retry: headers, then nothing
    root = tmp_path / "root"
    proc = pull_cli(root, proxy.ref("overlap/random", "v1"), "native")
    try:
        wait_applied(root, f"data-{i}.bin", proc_running(proc))
        before = stored(root)
    finally:
        proxy.release()
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode in (EXIT_UNAVAILABLE, EXIT_SIZE_MISMATCH), err
    one_line_error(err)
    with Store(root) as store:
        assert_as_it_was(store)
        assert {k for k, _ in committed(store)} == {str(c) for c in chains[:i]}
        kept = {s.ref: s.offset for s in store.content.ingests()}
    assert before <= stored(root)
    assert kept.get(f"import-{digest}", 0) > 0  # the half that came is kept to resume

    # The next pull resumes the ingest; held again 2 MiB past what is kept (two reader
    # chunks), the apply reads past the kept bytes (there before the writer writes one).
    again = fault_proxy(registry)
    held = kept[f"import-{digest}"] + (2 << 20)
    again.stall(blob_path(digest), after=2 << 20)
    pull = PullThread(again.ref("overlap/random", "v1"), root, "native")
    try:
        seen = wait_applied(
            root, f"data-{i}.bin", thread_running(pull), kept[f"import-{digest}"] - TAR_HEADERS
        )
        assert seen <= held and digest not in stored(root)
    finally:
        again.release()
    pull.join()
    assert pull.error is None, pull.error
    assert pull.result is not None and [x.chain_id for x in pull.result.layers] == chains
    assert pull.result.layers[i].followed >= seen
    ranges = [r.headers.get("Range", "") for r in again.log(blob_path(digest), "GET")]
    assert ranges[0] == f"bytes={kept[f'import-{digest}']}-", ranges
    assert run_cli("content", "verify", root=root).returncode == 0


def test_on_a_throttled_link_the_apply_reads_the_blob_before_its_commit(
    registry: Registry, random_image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    i = 1
    digest, size = random_image.layers[i]
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    proxy.stall(blob_path(digest), after=size // 2)
    root = tmp_path / "root"
    pull = PullThread(proxy.ref("overlap/random", "v1"), root, "native")
    try:
        seen = wait_applied(root, f"data-{i}.bin", thread_running(pull))
        assert digest not in stored(root)  # not committed: half of it is at the proxy
    finally:
        proxy.release()
    pull.join()
    assert pull.error is None, pull.error
    assert pull.result is not None
    layer = pull.result.layers[i]
    # the follower counted, under the feed's lock, bytes it handed out unverified: at
    # least the ones the apply had written while the blob was held
    assert size >= layer.followed >= seen > 0
    with Store(root) as store:
        assert [str(x.target.digest) for x in imgpipe.images(store=store)] == [
            random_image.manifest_digest
        ]
        assert list(store.content.verify()) == []


@pytest.fixture(scope="module")
def encrypted(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LayoutImage, Path]:
    """The random image with every layer encrypted by skopeo (containers/ocicrypt), in
    the registry; the directory of its private key (``key.pem``)."""
    work = tmp_path_factory.mktemp("overlap-enc")
    keys = make_rsa_key(tmp_path_factory.mktemp("overlap-keys"))
    make_random_image(work / "plain", "v1", RANDOM_LAYERS, seed=17)
    Skopeo(work / "home").copy(
        work / "plain", work / "layout", "--encryption-key", f"jwe:{keys / 'key.pub'}", tag="v1"
    )
    registry.push_layout(work / "layout", "v1", "overlap/encrypted", "v1")
    return read_layout(work / "layout", "v1"), keys


def test_an_encrypted_layer_is_decrypted_and_applied_while_it_downloads(
    registry: Registry,
    encrypted: tuple[LayoutImage, Path],
    fault_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    img, keys = encrypted
    i = 1
    digest, size = img.layers[i]
    proxy = fault_proxy(registry)
    proxy.stall(blob_path(digest), after=size // 2)
    root = tmp_path / "root"
    pull = PullThread(
        proxy.ref("overlap/encrypted", "v1"), root, "native", decrypt_keys=[str(keys / "key.pem")]
    )
    try:
        # the decryptor reads 1 MiB of ciphertext at a time and holds one chunk back
        # until the HMAC at the end: 4 MiB held leave it plaintext to hand on
        wait_applied(root, f"data-{i}.bin", thread_running(pull))
        assert digest not in stored(root)
    finally:
        proxy.release()
    pull.join()
    assert pull.error is None, pull.error
    assert pull.result is not None and pull.result.layers[i].followed > 0
    with Store(root) as store:
        assert [str(x.target.digest) for x in imgpipe.images(store=store)] == [img.manifest_digest]
        assert len(committed(store)) == len(RANDOM_LAYERS)


@pytest.fixture(scope="module")
def gzip_random(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """The random image with gzip layers (skopeo --dest-compress), in the registry."""
    work = tmp_path_factory.mktemp("overlap-gzip")
    make_random_image(work / "plain", "v1", RANDOM_LAYERS, seed=19)
    Skopeo(work / "home").copy(
        work / "plain", work / "layout", "--dest-compress", "--dest-compress-format", "gzip",
        tag="v1",
    )  # fmt: skip
    registry.push_layout(work / "layout", "v1", "overlap/random-gzip", "v1")
    return read_layout(work / "layout", "v1")


def test_an_external_processor_decodes_a_layer_while_it_downloads(
    registry: Registry, gzip_random: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """unpigz configured as the gzip decoder (containerd's stream processor contract):
    its stdin is fed from the follower by a thread, like any upstream stream."""
    env, marker = unpigz_configured(tmp_path / "cfg", gzip_random.manifest["layers"][0])
    i = 1
    digest, size = gzip_random.layers[i]
    proxy = fault_proxy(registry)
    proxy.stall(blob_path(digest), after=size // 2)
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [IMGPIPE, "--root", root, "-q", "pull", "--unpack", "--snapshotter", "native",
         proxy.ref("overlap/random-gzip", "v1")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        wait_applied(root, f"data-{i}.bin", proc_running(proc))
        assert digest not in stored(root)
        assert marker.exists()
    finally:
        proxy.release()
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    with Store(root) as store:
        assert [str(x.target.digest) for x in imgpipe.images(store=store)] == [
            gzip_random.manifest_digest
        ]
        assert len(committed(store)) == len(RANDOM_LAYERS)


def unpigz_configured(cfg: Path, layer: dict[str, Any]) -> tuple[dict[str, str], Path]:
    """The environment of a command whose config.toml (in ``cfg``) makes ``unpigz`` the
    decoder of ``layer``'s gzip media type, through a wrapper that leaves a marker file
    when it runs; that marker."""
    cfg.mkdir()
    gzip_type = layer["mediaType"]
    wrapper, marker = cfg / "unpigz.sh", cfg / "ran"
    (cfg / "config.toml").write_text(
        f'[[processors]]\nid = "pigz"\naccepts = ["{gzip_type}"]\n'
        f'returns = "{gzip_type.removesuffix("+gzip")}"\npath = "{wrapper}"\n'
    )
    wrapper.write_text(f'#!/bin/sh\ntouch "{marker}"\nexec unpigz -d -c\n')
    wrapper.chmod(0o755)
    return {**os.environ, "IMGPIPE_CONFIG": str(cfg)}, marker
