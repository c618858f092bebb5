"""``imgpipe run``/``ps``/``rm`` end to end with the real runc, as root.

Every run goes through the installed ``imgpipe`` command. One imgpipe root is shared by
the module (images pulled and unpacked once); each test names its containers and checks
what it leaves behind: mounts (/proc/self/mountinfo), runc state, active snapshots,
container directories.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE, run_cli
from run_helpers import (
    READY,
    WAIT_LIMIT,
    active_snapshots,
    assert_clean,
    imgpipe,
    mounts_under,
    wait_ready,
)

from imgpipe.store import Store
from imgpipe.task import ContainerSettings, DirectoryRootfs, UserNotFound
from imgpipe.task import run as run_task

pytestmark = pytest.mark.root

SENTINEL_DATA = "app:x:0:0:host file that must never be read:/:/bin/sh\n"


def _require_root_and_runc() -> None:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root (CI runs as root)")
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: apt-get install runc")


# --- images made for these tests -------------------------------------------------------


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: Mapping[str, str | tuple[str, str]]) -> bytes:
    """An uncompressed layer: path -> text (a 0644 file) or ("symlink", target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, what in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.mtime = 1704067200
            if isinstance(what, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, what[1]
                tar.addfile(info)
            else:
                data = what.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def derive_image(
    base: Path,
    out: Path,
    tag: str,
    *,
    config: Mapping[str, Any] | None = None,
    files: Mapping[str, str | tuple[str, str]] | None = None,
) -> Path:
    """A copy of the OCI layout ``base`` with ``config`` merged into its container config
    and, with ``files``, one more layer."""
    shutil.copytree(base, out)
    index = json.loads((out / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads((out / "blobs" / mdesc["digest"].replace(":", "/")).read_text())
    cfg = json.loads((out / "blobs" / manifest["config"]["digest"].replace(":", "/")).read_text())
    cfg["config"].update(config or {})
    if files:
        tar = _layer(files)
        layer = _blob(out, tar)
        manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer})
        cfg["rootfs"]["diff_ids"].append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        cfg["history"].append({"created_by": "test layer"})
    manifest["config"] = {**manifest["config"], **_blob(out, json.dumps(cfg).encode())}
    new = _blob(out, json.dumps(manifest).encode())
    index["manifests"] = [
        {**mdesc, **new, "annotations": {"org.opencontainers.image.ref.name": tag}}
    ]
    (out / "index.json").write_text(json.dumps(index))
    return out


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:app\nextra:x:2000:app\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("run-images")
    sentinel = base / "host-secret"
    sentinel.write_text(SENTINEL_DATA)
    busybox = fixture_dir / "busybox"
    return {
        "busybox": busybox,
        "custom": derive_image(
            busybox,
            base / "custom",
            "custom",
            config={
                "Entrypoint": ["/bin/echo", "ep"],
                "Cmd": ["from-cmd"],
                "Env": ["PATH=/bin", "FOO=image", "KEEP=image"],
                "WorkingDir": "/srv/app",
                "User": "app",
            },
            files={"etc/passwd": PASSWD, "etc/group": GROUP, "srv/marker": "m"},
        ),
        "escape": derive_image(
            busybox,
            base / "escape",
            "escape",
            config={"User": "app"},
            files={"etc/passwd": ("symlink", str(sentinel))},
        ),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, images: dict[str, Path]) -> Path:
    _require_root_and_runc()
    r = tmp_path_factory.mktemp("run-root") / "root"
    for tag, layout in images.items():
        res = run_cli("pull", f"oci:{layout}:{tag}", root=r)
        assert res.returncode == 0, res.stderr
    # unpack once: the first run of each image
    res = run_cli("run", "--rm", "busybox", "true", root=r)
    assert res.returncode == 0, res.stderr
    return r


def run(root: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return imgpipe(root, "run", "--rm", *args, **kw)


# --- exit status, stdio ------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_code_passes_through(root: Path, code: int) -> None:
    res = run(root, "busybox", "sh", "-c", f"exit {code}")
    assert res.returncode == code, res.stderr
    assert res.stderr == ""


def test_killed_by_signal_is_128_plus_n(root: Path) -> None:
    name = "killed"
    with subprocess.Popen(
        [IMGPIPE, "--root", root, "run", "--rm", "--name", name, "busybox", *READY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        wait_ready(proc)
        subprocess.run(["runc", "--root", root / "runc", "kill", name, "KILL"], check=True)
        assert proc.wait(timeout=WAIT_LIMIT) == 128 + signal.SIGKILL
    assert_clean(root, name)


def test_stdout_and_stderr_stay_apart(root: Path) -> None:
    res = run(root, "busybox", "sh", "-c", "echo to-out; echo to-err >&2")
    assert (res.returncode, res.stdout, res.stderr) == (0, "to-out\n", "to-err\n")


def test_stdin_with_i_and_without(root: Path) -> None:
    res = run(root, "-i", "busybox", "sh", "-c", "cat; echo done", input="line 1\nline 2\n")
    assert res.stdout == "line 1\nline 2\ndone\n"
    # without -i the container reads /dev/null, not our stdin
    res = run(root, "busybox", "cat", input="not for you\n")
    assert (res.returncode, res.stdout) == (0, "")


def test_terminal(root: Path) -> None:
    import pty

    master, slave = pty.openpty()
    with subprocess.Popen(
        [
            IMGPIPE,
            "--root",
            root,
            "run",
            "--rm",
            "-t",
            "-i",
            "busybox",
            "sh",
            "-c",
            "tty; read x; echo got:$x; exit 3",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
    ) as proc:
        os.close(slave)
        os.write(master, b"typed\n")
        out = b""
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every slave closed
                break
            if not data:
                break
            out += data
        assert proc.wait(timeout=WAIT_LIMIT) == 3
    os.close(master)
    assert b"/dev/pts/0" in out
    assert b"got:typed" in out


# --- image config and options -----------------------------------------------------------


def test_env_merge(root: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=f\nFOO=file\n")
    res = run(
        root,
        "--env-file",
        str(env_file),
        "-e",
        "FOO=cli",
        "-e",
        "NEW=1",
        "--entrypoint",
        "/bin/env",
        "custom",
    )
    env = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert env["FOO"] == "cli"  # -e after --env-file wins over both and the image
    assert env["KEEP"] == "image"
    assert env["FROM_FILE"] == "f"
    assert env["NEW"] == "1"
    assert env["PATH"] == "/bin"
    # busybox sets Env; no Env at all gets containerd's default PATH (unit-tested)


def test_user_by_name_and_ids(root: Path) -> None:
    res = run(root, "--entrypoint", "id", "custom")  # the image's User: app
    assert res.stdout.strip() == "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"
    res = run(root, "-u", "1234:5678", "busybox", "id")
    assert res.stdout.strip() == "uid=1234 gid=5678 groups=5678"
    res = run(root, "-u", "nobody", "busybox", "id", "-u")
    assert res.stdout.strip() == "65534"


def test_unknown_user_is_a_clear_error(root: Path) -> None:
    res = run(root, "--name", "nouser", "-u", "nosuch", "busybox", "id")
    assert res.returncode == 5  # NotFound
    assert "no user 'nosuch'" in res.stderr
    assert res.stdout == ""
    assert_clean(root, "nouser")


def test_passwd_symlink_out_of_the_rootfs(root: Path) -> None:
    """The image's /etc/passwd points at a host file that would make "app" root."""
    res = run(root, "--name", "escape", "escape", "id")
    assert res.returncode == 5, res.stderr
    assert "no user 'app'" in res.stderr
    assert "host file" not in res.stdout + res.stderr
    assert "uid=0" not in res.stdout
    assert_clean(root, "escape")


def test_workdir(root: Path) -> None:
    res = run(root, "--entrypoint", "pwd", "custom")
    assert res.stdout == "/srv/app\n"  # the image's WorkingDir
    res = run(root, "-w", "/not/there/yet", "busybox", "sh", "-c", "pwd; ls -d .")
    assert res.stdout == "/not/there/yet\n.\n"  # created when missing


def test_entrypoint_and_cmd(root: Path) -> None:
    assert run(root, "custom").stdout == "ep from-cmd\n"
    assert run(root, "custom", "a", "b").stdout == "ep a b\n"
    # --entrypoint replaces Entrypoint and drops the image's Cmd
    assert run(root, "--entrypoint", "/bin/echo", "custom").stdout == "\n"
    assert run(root, "--entrypoint", "/bin/echo", "custom", "x").stdout == "x\n"


def test_read_only(root: Path) -> None:
    res = run(root, "--read-only", "busybox", "sh", "-c", "touch /file")
    assert res.returncode != 0
    assert "Read-only file system" in res.stderr
    res = run(root, "--read-only", "busybox", "sh", "-c", "touch /tmp/../run/ok && echo ok")
    assert res.stdout == "ok\n"  # /run stays a writable tmpfs, as containerd's


def test_volumes(root: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in").write_text("from host\n")
    res = run(root, "-v", f"{vol}:/data", "busybox", "sh", "-c", "cat /data/in; echo w > /data/out")
    assert (res.returncode, res.stdout) == (0, "from host\n")
    assert (vol / "out").read_text() == "w\n"
    res = run(
        root, "-v", f"{vol}:/data:ro", "busybox", "sh", "-c", "cat /data/in; echo x > /data/o2"
    )
    assert res.stdout == "from host\n"
    assert res.returncode != 0 and "Read-only file system" in res.stderr
    assert not (vol / "o2").exists()


def test_net_none_has_only_lo(root: Path) -> None:
    res = run(root, "--net", "none", "busybox", "ls", "/sys/class/net")
    assert res.stdout.split() == ["lo"]
    assert run(root, "busybox", "ls", "/sys/class/net").stdout.split() == ["lo"]


def test_memory_limit_in_the_cgroup(root: Path) -> None:
    script = (
        "cat /sys/fs/cgroup/memory.max 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    res = run(root, "--memory", "64m", "busybox", "sh", "-c", script)
    assert res.stdout.strip() == str(64 << 20), res.stderr


def test_pulls_and_unpacks_what_is_missing(fixture_dir: Path, tmp_path: Path, root: Path) -> None:
    """A transport string on an empty root: pulled, unpacked, run (the demo's line)."""
    fresh = tmp_path / "fresh"
    layered = fixture_dir / "layered"
    res = imgpipe(fresh, "-q", "run", "--rm", f"oci:{layered}:layered", "cat", "/etc/motd")
    assert (res.returncode, res.stdout) == (0, "layer 3: changed\n"), res.stderr
    res = imgpipe(fresh, "run", "--rm", "layered", "echo", "hello from imgpipe")
    assert res.stdout == "hello from imgpipe\n"
    # no command: the image's Cmd (/bin/sh, reading /dev/null, exits 0)
    assert imgpipe(fresh, "run", "--rm", "layered").returncode == 0
    assert not mounts_under(fresh)


# --- cleanup ---------------------------------------------------------------------------


def test_cleanup_after_normal_exit(root: Path) -> None:
    assert run(root, "--name", "normal", "busybox", "true").returncode == 0
    assert_clean(root, "normal")


def test_cleanup_after_missing_command(root: Path) -> None:
    res = run(root, "--name", "missing", "busybox", "/no/such/binary")
    assert res.returncode == 127
    assert "no such file or directory" in res.stderr or "not found" in res.stderr
    assert_clean(root, "missing")


@pytest.mark.parametrize(
    ("name", "cmd", "extra", "expected"),
    [
        # a shell that handles SIGTERM: the forwarded signal decides the exit status
        (
            "trapper",
            ["sh", "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done"],
            [],
            7,
        ),
        # sleep as PID 1 ignores SIGTERM: SIGKILL after the stop timeout
        ("stubborn", READY, ["--stop-timeout", "0.2"], 128 + signal.SIGKILL),
    ],
)
def test_cleanup_after_sigterm_to_imgpipe(
    root: Path, name: str, cmd: list[str], extra: list[str], expected: int
) -> None:
    with subprocess.Popen(
        [IMGPIPE, "--root", root, "run", "--rm", "--name", name, *extra, "busybox", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_LIMIT) == expected
    assert_clean(root, name)


def test_ps_and_rm(root: Path) -> None:
    assert imgpipe(root, "run", "--name", "kept", "busybox", "true").returncode == 0
    listed = json.loads(imgpipe(root, "ps", "-a", "--json").stdout)
    kept = next(c for c in listed if c["id"] == "kept")
    assert (kept["status"], kept["exitCode"], kept["command"]) == ("exited (0)", 0, ["true"])
    assert "kept" in active_snapshots(root)  # the container's snapshot stays until rm
    assert not mounts_under(root / "tasks")
    # the name is taken until then
    res = imgpipe(root, "run", "--name", "kept", "busybox", "true")
    assert res.returncode == 6 and "exists" in res.stderr
    assert imgpipe(root, "rm", "kept").returncode == 0
    assert "kept" not in [c["id"] for c in json.loads(imgpipe(root, "ps", "-a", "--json").stdout)]
    assert_clean(root, "kept")
    assert imgpipe(root, "rm", "kept").returncode == 5


def test_rm_force_kills_a_running_container(root: Path) -> None:
    name = "forced"
    with subprocess.Popen(
        [IMGPIPE, "--root", root, "run", "--name", name, "busybox", *READY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        wait_ready(proc)
        res = imgpipe(root, "rm", name)
        assert res.returncode == 10 and "rm -f" in res.stderr  # FailedPrecondition
        assert imgpipe(root, "rm", "-f", name).returncode == 0
        assert proc.wait(timeout=WAIT_LIMIT) == 128 + signal.SIGKILL
    assert_clean(root, name)


# --- the Python API with a rootfs of our own -----------------------------------------------


def test_api_run_on_a_directory(tmp_path: Path, root: Path) -> None:
    """``run`` takes any rootfs; a hostile one (huge /etc/group) fails cleanly."""
    from imgpipe.formats.config import ContainerConfig
    from imgpipe.task.user import MAX_USER_FILE_BYTES

    rootfs = tmp_path / "rootfs"
    busybox_fs = _some_committed_busybox_dir(root)
    shutil.copytree(busybox_fs, rootfs, symlinks=True)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        code = run_task(
            "local",
            rootfs=DirectoryRootfs(rootfs),
            image_config=ContainerConfig(cmd=("sh", "-c", "echo api; exit 9"), env=()),
            remove=True,
            stdout=f.fileno(),
            root=tmp_path / "api-root",
        )
    assert code == 9
    assert out.read_text() == "api\n"
    with open(rootfs / "etc" / "group", "w") as f:
        f.truncate(MAX_USER_FILE_BYTES + 1)
    with pytest.raises(Exception, match="over the"):
        run_task(
            "local",
            rootfs=DirectoryRootfs(rootfs),
            image_config=ContainerConfig(cmd=("true",), user="root"),
            settings=ContainerSettings(),
            remove=True,
            root=tmp_path / "api-root",
        )
    with pytest.raises(UserNotFound):
        run_task(
            "local",
            rootfs=DirectoryRootfs(rootfs),
            image_config=ContainerConfig(cmd=("true",), user="ghost"),
            remove=True,
            root=tmp_path / "api-root",
        )
    assert not mounts_under(tmp_path / "api-root")
    assert not list((tmp_path / "api-root" / "tasks").iterdir())


def _some_committed_busybox_dir(root: Path) -> Path:
    """The busybox layer's directory in the shared root's snapshotter."""
    with Store(root) as s:
        recs = [r for r in s.db.list_snapshots() if r.kind == "committed" and not r.parent]
        rec = recs[0]
    return root / "snapshots" / rec.snapshotter / "snapshots" / rec.backend_id / "fs"


@pytest.fixture(autouse=True)
def _no_leftover_mounts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "root" in request.fixturenames:
        r = request.getfixturevalue("root")
        assert not mounts_under(r / "tasks"), "a test left a container rootfs mounted"


def test_snapshots_rm_refuses_a_containers_rootfs(fixture_dir: Path, tmp_path: Path) -> None:
    """A kept container's snapshot is in use until `imgpipe rm`; snapshots rm refuses it."""
    from conftest import run_cli

    root = tmp_path / "root"
    assert run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root).returncode == 0
    out = run_cli("run", "--name", "kept", "busybox", "true", root=root)
    assert out.returncode == 0, out.stderr
    refused = run_cli("snapshots", "rm", "kept", root=root)
    assert refused.returncode == 10, refused.stderr
    assert "container kept" in refused.stderr
    assert run_cli("rm", "kept", root=root).returncode == 0
    assert "kept" not in run_cli("snapshots", "ls", root=root).stdout
