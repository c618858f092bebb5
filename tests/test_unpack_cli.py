"""``imgpipe unpack|mount|umount|snapshots`` and ``pull --unpack``, end to end as a user
runs them: the installed command in a subprocess, exit codes, one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.build import expected_rootfs
from tests.conftest import IMGPIPE, run_cli
from tests.test_unpack import (
    make_encrypted_layout,
    make_rsa_key,
    mount_points,
    rewrite_config,
)
from tests.treecompare import compare, matches_expected, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

NOBODY = 65534


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgpipe: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def pull(root: Path, layout: Path, tag: str, *extra: str) -> str:
    return ok(run_cli("-q", "pull", *extra, f"oci:{layout}:{tag}", "--name", tag, root=root))


def snapshots(root: Path) -> list[dict]:
    return json.loads(ok(run_cli("snapshots", "ls", "--json", root=root)))


@needs_root
def test_pull_unpack_mount_ls_umount(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = pull(root, fixture_dir / "layered", "layered", "--unpack", "--snapshotter", "overlay")
    assert "unpacked overlay sha256:" in out
    snaps = snapshots(root)
    assert len(snaps) == 4 and {s["kind"] for s in snaps} == {"committed"}
    assert {s["snapshotter"] for s in snaps} == {"overlay"}

    result = json.loads(
        ok(run_cli("unpack", "layered", "--snapshotter", "overlay", "--json", root=root))
    )
    assert result["event"] == "result" and result["snapshotter"] == "overlay"
    assert [layer["reused"] for layer in result["layers"]] == [True] * 4

    target = tmp_path / "mnt"
    target.mkdir()
    argv = ("mount", "layered", str(target), "--snapshotter", "overlay", "--json")
    mounted = json.loads(ok(run_cli(*argv, root=root)))
    assert (mounted["image"], mounted["target"]) == ("layered", str(target))
    key = mounted["key"]
    assert key.startswith("mount-")
    assert str(target) in mount_points()
    listing = subprocess.run(
        ["ls", target], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"bin", "etc", "data", "opt", "usr"} <= set(listing)
    assert "active" in {s["kind"] for s in snapshots(root)}
    table = ok(run_cli("snapshots", "ls", root=root)).splitlines()
    assert table[0].split() == ["SNAPSHOTTER", "KEY", "KIND", "PARENT"]
    assert any(key in line and "active" in line for line in table)

    ok(run_cli("umount", str(target), root=root))
    assert str(target) not in mount_points()
    assert os.listdir(target) == []
    assert {s["kind"] for s in snapshots(root)} == {"committed"}

    # rmi runs the gc: records and directories go
    ok(run_cli("rmi", "layered", root=root))
    assert snapshots(root) == []
    assert os.listdir(root / "snapshots" / "overlay" / "snapshots") == []


@needs_root
def test_snapshots_rm(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pull(root, fixture_dir / "layered", "layered")
    result = json.loads(
        ok(run_cli("unpack", "layered", "--snapshotter", "native", "--json", root=root))
    )
    base, top = result["layers"][0]["chainID"], result["chainID"]
    one_error_line(run_cli("snapshots", "rm", base, root=root), 10, "parent of")
    assert ok(run_cli("snapshots", "rm", top, root=root)).strip() == f"removed native {top}"
    assert len(snapshots(root)) == 3
    # the next unpack puts back what was removed
    again = json.loads(
        ok(run_cli("unpack", "layered", "--snapshotter", "native", "--json", root=root))
    )
    assert [layer["reused"] for layer in again["layers"]] == [True, True, True, False]


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user nobody can reach (pytest's tmp dirs are root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="imgpipe-nobody-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*args: str | os.PathLike[str], home: Path) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv not found: apt-get install util-linux")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    argv = [
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        str(IMGPIPE),
        *map(str, args),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


@needs_root
def test_export_as_nobody(fixture_dir: Path, nobody_dir: Path, tmp_path: Path) -> None:
    layout = nobody_dir / "layered"
    shutil.copytree(fixture_dir / "layered", layout)
    home = nobody_dir / "home"
    home.mkdir()
    for p in [home, *layout.rglob("*"), layout]:
        os.chown(p, NOBODY, NOBODY)
    root = nobody_dir / "root"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    out = home / "export"  # made by nobody
    proc = as_nobody("--root", root, "-q", "pull", f"oci:{layout}:layered", home=home)
    assert proc.returncode == 0, proc.stderr
    proc = as_nobody("--root", root, "unpack", "layered", "--export", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "exported to" in proc.stdout
    ours = snapshot(out)
    assert {n.uid for n in ours.values()} == {NOBODY}
    # the same as root's export, ownership aside (the fixtures have no devices)
    as_root = tmp_path / "root-export"
    ok(run_cli("unpack", "layered", "--export", as_root, root=root))
    assert compare(ours, snapshot(as_root), ignore={"uid", "gid"}) == []
    assert matches_expected(snapshot(as_root), expected_rootfs("layered")) == []
    # nobody cannot use snapshots that need mounts: a clear error, not a traceback
    target = home / "mnt"
    target.mkdir()
    proc = as_nobody("--root", root, "mount", "layered", target, home=home)
    assert proc.returncode == 11, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rsa_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def encrypted_layout(
    fixture_dir: Path, rsa_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return make_encrypted_layout(fixture_dir, rsa_key, tmp_path_factory.mktemp("enc"))


@needs_root
def test_encrypted_layers_on_the_command_line(
    encrypted_layout: Path, rsa_key: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    pull(root, encrypted_layout, "layered")
    one_error_line(
        run_cli("unpack", "layered", "--snapshotter", "overlay", root=root),
        12,
        "layer 1/4 (sha256:",
        "encrypted: pass --decrypt-key",
    )
    one_error_line(
        run_cli("unpack", "layered", "--export", tmp_path / "out", root=root), 12, "layer 1/4"
    )
    key = rsa_key / "key.pem"
    ok(run_cli("unpack", "layered", "--snapshotter", "overlay", "--decrypt-key", key, root=root))
    assert len(snapshots(root)) == 4
    ok(run_cli("unpack", "layered", "--export", tmp_path / "out2", "--decrypt-key", key, root=root))
    assert matches_expected(snapshot(tmp_path / "out2"), expected_rootfs("layered")) == []


@needs_root
def test_diff_id_mismatch_exit_code(layout_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layout = layout_copy("layered")
    rewrite_config(layout, lambda c: c["rootfs"]["diff_ids"].reverse())
    root = tmp_path / "root"
    pull(root, layout, "layered")
    one_error_line(
        run_cli("unpack", "layered", "--snapshotter", "overlay", root=root),
        8,
        "layer 1/4",
        "DiffID",
    )
    assert snapshots(root) == []


def test_exit_codes(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pull(root, fixture_dir / "busybox", "busybox")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (("unpack", "missing", "--snapshotter", "native"), 5, "not found"),
        (("unpack", "busybox", "--export", tmp_path / "full"), 10, "not empty"),
        (("umount", tmp_path), 5, "mounted nothing"),
        (("snapshots", "rm", "sha256:" + "0" * 64), 5, "no snapshot"),
        (("mount", "busybox", tmp_path / "nowhere"), 5, "not an existing directory"),
        (("unpack", "busybox", "--decrypt-key", tmp_path / "nokey.pem"), 5, "nokey.pem"),
        (
            ("unpack", "busybox", "--export", tmp_path / "e", "--snapshotter", "native"),
            2,
            "exclude",
        ),
        (
            ("pull", "--snapshotter", "native", f"oci:{fixture_dir / 'busybox'}:busybox"),
            2,
            "--unpack",
        ),
    ]
    for args, code, fragment in cases:
        one_error_line(run_cli(*args, root=root), code, fragment)
    bad = run_cli("unpack", "busybox", "--snapshotter", "zfs", root=root)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
