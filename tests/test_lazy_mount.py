"""``imgpipe mount --lazy REF DIR`` and ``imgpipe umount DIR``, end to end through the
CLI: the owner process and its server outlive the command, umount takes it all down."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
from estargz_images import SourceImage, make_source
from lazy_fixtures import cli, fuse_mounts, needs_root

from imgpipe.lazy import lazy_state_dir
from imgpipe.lazy.state import alive, read_state, wait_state

pytestmark = [needs_root]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    return make_source(tmp_path_factory.mktemp("lazy-mount-src"), big=5 << 20, seed=31)


@pytest.fixture(scope="module")
def esgz(source: SourceImage, tmp_path_factory: pytest.TempPathFactory) -> str:
    dst = f"oci:{tmp_path_factory.mktemp('lazy-mount-dst')}:lazy"
    out = cli("convert", "--estargz", f"oci:{source.layout}:{source.tag}", dst)
    assert out.returncode == 0, out.stderr
    return dst


def _overlays_on(target: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {target} " in line]


def test_mount_lazy_then_umount(esgz: str, source: SourceImage, tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "mnt"
    target.mkdir()
    out = cli("mount", "--lazy", "--lazy-background=false", "--json", esgz, target, root=root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["lazy"] is True and [ls["state"] for ls in result["layers"]] == ["lazy"] * 2
    state = read_state(lazy_state_dir(root, target))
    assert state.owner_stops and state.target == str(target)
    assert (target / "etc/hello.txt").read_bytes() == b"hello again\n"
    assert (target / "big.bin").read_bytes() == source.big
    assert not (target / "etc/deleted.txt").exists()
    (target / "new.txt").write_text("written into the upper dir")  # read-write by default
    again = cli("mount", "--lazy", esgz, target, root=root)
    assert again.returncode == 6 and "already has a lazy mount" in again.stderr
    assert alive(state.owner_pid, state.owner_start)  # the command's exit left it serving
    down = cli("umount", target, root=root)
    assert down.returncode == 0, down.stderr
    assert not alive(state.owner_pid, state.owner_start)
    assert not alive(state.server_pid, state.server_start)
    assert not fuse_mounts(tmp_path) and not _overlays_on(target)
    assert not lazy_state_dir(root, target).exists()
    assert os.listdir(target) == []


def test_read_only_and_the_background_fetch(esgz: str, tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "mnt"
    target.mkdir()
    out = cli("mount", "--lazy", "--read-only", esgz, target, root=root)
    assert out.returncode == 0, out.stderr
    assert "layer 0 sha256:" in out.stderr  # the per-layer state, for people
    with pytest.raises(OSError) as e:
        (target / "new.txt").write_text("x")
    assert e.value.errno == errno.EROFS
    from imgpipe.lazy import LazyMount

    layers = LazyMount.attach(lazy_state_dir(root, target)).wait_settled(120)
    assert layers is not None and [ls.state for ls in layers] == ["complete"] * 2
    verified = cli("content", "verify", root=root)
    assert verified.returncode == 0, verified.stderr
    assert cli("umount", target, root=root).returncode == 0
    assert not fuse_mounts(tmp_path) and not _overlays_on(target)


def test_killing_the_server_is_eio_and_umount_cleans(esgz: str, tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "mnt"
    target.mkdir()
    out = cli("mount", "--lazy", "--lazy-background=false", esgz, target, root=root)
    assert out.returncode == 0, out.stderr
    sd = lazy_state_dir(root, target)
    state = read_state(sd)
    os.kill(state.server_pid, signal.SIGKILL)
    gone = wait_state(sd, lambda s: bool(s.failure), 60)  # the owner says why
    assert gone is not None and "killed by signal 9" in gone.failure
    with pytest.raises(OSError) as e:
        (target / "big.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert cli("umount", target, root=root).returncode == 0
    assert not fuse_mounts(tmp_path) and not _overlays_on(target)
    assert not alive(state.owner_pid, state.owner_start)


def test_an_image_that_cannot_be_lazy_is_pulled_and_says_so(
    source: SourceImage, tmp_path: Path
) -> None:
    root, target = tmp_path / "root", tmp_path / "mnt"
    target.mkdir()
    plain = f"oci:{source.layout}:{source.tag}"  # uncompressed tar layers
    out = cli("mount", "--lazy", plain, target, root=root)
    assert out.returncode == 0, out.stderr
    assert "not mounted lazily: no eStargz/zstd:chunked layers" in out.stderr
    assert (target / "top.txt").read_bytes().startswith(b"from the top layer")
    assert not fuse_mounts(tmp_path)
    assert cli("umount", target, root=root).returncode == 0
    assert not _overlays_on(target)
