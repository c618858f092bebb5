"""``run --lazy``: a container on FUSE-mounted eStargz layers, through the installed command.

Real parts only: Debian's docker-registry on 127.0.0.1 behind tests/faultproxy.py (which
counts the bytes it serves, flips a byte, or strips Range), the kernel's FUSE and overlay,
runc. The image is tests/lazy_images.py's debian-multi (five layers from this host's
Debian 12 packages), converted by ``imgpipe convert --estargz``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IMGPIPE
from faultproxy import FaultProxy
from lazy_images import DebianImage, make_debian_multi
from registry_fixtures import Registry
from run_helpers import mounts_under, runc_ids, wait_ready

from imgpipe.formats.digest import Digest
from imgpipe.lazy.completing import wait_completion
from imgpipe.lazy.state import wait_state
from imgpipe.store import Store

REPO = "lazy-run/debian-multi"
CMD = ["cat", "/etc/os-release"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="FUSE and overlay mounts need root")


@dataclass(frozen=True)
class Pushed:
    registry: Registry
    image: DebianImage
    manifest: str  # digest of the eStargz manifest
    layers: list[dict[str, object]]

    def blob_bytes(self) -> int:
        return sum(int(str(layer["size"])) for layer in self.layers)

    def blob_path(self, n: int) -> str:
        return f"/blobs/{self.layers[n]['digest']}"


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    image = make_debian_multi(tmp_path_factory.mktemp("debian-multi"))
    registry.push_layout(image.layout, image.tag, REPO, "src")
    out = subprocess.run(
        [
            str(IMGPIPE),
            "convert",
            "--estargz",
            "--estargz-level",
            "1",  # fast to write; the chunking is the same
            registry.ref(REPO, "src"),
            registry.ref(REPO, "esgz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads(registry.manifest(REPO, "esgz"))
    return Pushed(registry, image, registry.manifest_digest(REPO, "esgz"), manifest["layers"])


@pytest.fixture
def proxy(pushed: Pushed, fault_proxy: Callable[[Registry], FaultProxy]) -> Iterator[FaultProxy]:
    yield fault_proxy(pushed.registry)


def cli(root: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGPIPE), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,  # type: ignore[call-overload]
    )


def _assert_nothing_left(root: Path) -> None:
    assert not mounts_under(root), mounts_under(root)
    assert not runc_ids(root)


def test_run_lazy_prints_the_output_having_fetched_a_fraction(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = proxy.ref(REPO, "esgz")
    out = cli(root, "run", "--rm", "--lazy", "--lazy-background=false", ref, *CMD)
    assert out.returncode == 0, out.stderr
    assert out.stdout.encode() == pushed.image.os_release
    fetched = proxy.served("/blobs/")
    total = pushed.blob_bytes()
    assert fetched < total / 10, f"{fetched} of {total} bytes fetched"
    assert "5 layers lazy" in out.stderr
    for n in range(5):
        assert f"layer {n} " in out.stderr
    with Store(root) as s:  # lazy: no layer is a blob yet
        stored = [s.content.exists(Digest.parse(str(x["digest"]))) for x in pushed.layers]
        assert not any(stored)
        rec = s.db.get_image(ref)
        assert rec.labels.get("org.imgpipe.lazy.source", "").endswith(pushed.manifest)
    _assert_nothing_left(root)
    # an ordinary run of the lazily pulled image fetches what it lacks first
    again = cli(root, "run", "--rm", ref, "cat", "/etc/motd")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "debian-multi: a lazy-pull test image\n"
    with Store(root) as s:
        assert all(s.content.exists(Digest.parse(str(x["digest"]))) for x in pushed.layers)
        assert "org.imgpipe.lazy.source" not in s.db.get_image(ref).labels


def test_the_background_fetch_completes_to_verified_blobs(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = proxy.ref(REPO, "esgz")
    out = cli(root, "run", "--rm", "--lazy", ref, *CMD)
    assert out.returncode == 0, out.stderr
    assert out.stdout.encode() == pushed.image.os_release
    wait_completion(root, Digest.parse(pushed.manifest))
    with Store(root) as s:
        for layer in pushed.layers:
            assert s.content.exists(Digest.parse(str(layer["digest"])))
        assert "org.imgpipe.lazy.source" not in s.db.get_image(ref).labels
    verify = cli(root, "content", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    _assert_nothing_left(root)


def test_a_registry_ignoring_range_means_a_full_pull_and_the_message_says_so(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.strip_range()
    root = tmp_path / "root"
    out = cli(root, "run", "--rm", "--lazy", proxy.ref(REPO, "esgz"), *CMD)
    assert out.returncode == 0, out.stderr
    assert out.stdout.encode() == pushed.image.os_release
    assert "the registry ignores Range" in out.stderr and "pulled in full" in out.stderr
    assert proxy.served("/blobs/") >= pushed.blob_bytes()
    _assert_nothing_left(root)


def test_a_flipped_chunk_byte_fails_the_command_naming_the_layer(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    # the top layer holds etc/motd; its footer and TOC pass, the chunk read is flipped
    proxy.corrupt(pushed.blob_path(4), offset=0, skip=2)
    root = tmp_path / "root"
    out = cli(
        root, "run", "--rm", "--lazy", "--lazy-background=false",
        proxy.ref(REPO, "esgz"), "cat", "/etc/motd",
    )  # fmt: skip
    assert out.returncode != 0
    assert "Input/output error" in out.stderr or "I/O error" in out.stderr, out.stderr
    digest = str(pushed.layers[4]["digest"])
    assert digest.removeprefix("sha256:")[:12] in out.stderr, out.stderr
    assert "layer 4" in out.stderr
    with Store(root) as s:
        assert not s.content.exists(Digest.parse(digest))
    _assert_nothing_left(root)


def _server_pid(root: Path, name: str) -> int:
    state = json.loads((root / "tasks" / name / "lazy" / "state" / "state.json").read_text())
    return int(state["server_pid"])


def _kill_server(root: Path, name: str) -> None:
    """SIGKILL the container's FUSE server and wait until its owner has seen it die (the
    failure is in the state file): from then on every request is answered EIO (the
    requests the server had in flight too: tests/test_lazy_fs.py covers that race)."""
    os.kill(_server_pid(root, name), signal.SIGKILL)
    state_dir = root / "tasks" / name / "lazy" / "state"
    assert wait_state(state_dir, lambda s: bool(s.failure), 30) is not None


def test_killing_the_server_gives_eio_ps_says_why_rm_cleans(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    argv = [str(IMGPIPE), "--root", str(root), "run", "-i", "--name", "k", "--lazy"]
    argv += ["--lazy-background=false", proxy.ref(REPO, "esgz")]
    # sh and cat paged in before the kill (a page of an executable that cannot be read is
    # SIGBUS, not an error message); then a file never read: EIO
    script = "cat /etc/motd > /dev/null; echo ready; read x; cat /usr/bin/python3.11 > /dev/null"
    argv += ["sh", "-c", script]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_ready(proc)
        _kill_server(root, "k")
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()  # imgpipe's own cleanup, not SIGKILL's leftovers
            proc.wait(timeout=60)
    # cat's read fails, or its exec does (the lookup of a name the kernel no longer caches)
    assert proc.returncode in (1, 126), err
    assert b"Input/output error" in err, err
    ps = cli(root, "ps", "-a", "--json")
    (entry,) = json.loads(ps.stdout)
    assert "FUSE server" in entry["lazyFailure"] and "SIGKILL" in entry["lazyFailure"]
    table = cli(root, "ps", "-a")
    assert "lazy mount failed" in table.stdout
    assert not mounts_under(root)  # the run took its mounts down when it ended
    assert cli(root, "rm", "k").returncode == 0
    _assert_nothing_left(root)
    assert not (root / "tasks" / "k").exists()


def test_run_detached_lazy_the_monitor_owns_the_mount(
    pushed: Pushed, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = proxy.ref(REPO, "esgz")
    out = cli(root, "run", "-d", "--name", "d", "--lazy", ref, "sh", "-c", "cat /etc/os-release")
    assert out.returncode == 0, out.stderr
    assert cli(root, "wait", "d").stdout.strip() == "0"
    logs = cli(root, "logs", "d")
    assert logs.stdout.encode() == pushed.image.os_release
    assert not mounts_under(root)  # the monitor's teardown stopped the lazy mount
    assert cli(root, "rm", "d").returncode == 0
    _assert_nothing_left(root)
    # killed under a running detached container: EIO inside, ps says why, rm -f cleans
    root = tmp_path / "root2"  # (the first root holds the image complete by now)
    # a shell that has paged in what it runs and then waits on its stdin (-i: open,
    # nothing writes): a page of an executable that cannot be read would be SIGBUS
    script = "cat /etc/motd > /dev/null; echo ready; read x"
    out = cli(root, "run", "-d", "-i", "--name", "e", "--lazy", "--lazy-background=false",
              ref, "sh", "-c", script)  # fmt: skip
    assert out.returncode == 0, out.stderr
    follow = subprocess.Popen(
        [str(IMGPIPE), "--root", str(root), "logs", "-f", "e"], stdout=subprocess.PIPE
    )
    try:
        wait_ready(follow)
    finally:
        follow.kill()
        follow.communicate()
    try:
        _kill_server(root, "e")
        argv = ["runc", "--root", str(root / "runc"), "exec", "e", "/usr/bin/cat", "/etc/motd"]
        read = subprocess.run(argv, capture_output=True, timeout=60)
        assert read.returncode != 0, read.stderr
        assert b"input/output error" in read.stderr.lower(), read.stderr
        (entry,) = json.loads(cli(root, "ps", "--json").stdout)
        assert "FUSE server" in (entry["lazyFailure"] or "")
    finally:
        assert cli(root, "rm", "-f", "e").returncode == 0
    _assert_nothing_left(root)


def test_run_lazy_of_a_zstd_chunked_image(pushed: Pushed, tmp_path: Path) -> None:
    registry = pushed.registry
    out = subprocess.run(
        [
            str(IMGPIPE),
            "convert",
            "--zstdchunked",
            registry.ref(REPO, "src"),
            registry.ref(REPO, "zc"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    root = tmp_path / "root"
    run = cli(
        root, "run", "--rm", "--lazy", "--lazy-background=false", registry.ref(REPO, "zc"), *CMD
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.encode() == pushed.image.os_release
    assert "5 layers lazy" in run.stderr
    _assert_nothing_left(root)
