"""``run -d`` and the verbs around it (``logs [-f]``, ``stop [-t]``, ``wait``, ``ps [-a]``,
``rm``), and issue 12's rows for ``run`` (``--network``, ``-p``, ``-e NAME``, runc's
error said once), through the installed ``imgpipe`` with the real runc, as root.

A container that must wait for the test reads a FIFO bind-mounted from the test's
directory: the test writes to it when it wants the container to go on, so nothing
depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import IMGPIPE, run_cli
from run_helpers import WAIT_LIMIT, assert_clean, imgpipe, mounts_under, runc_ids

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root (CI runs as root)")
    r = tmp_path_factory.mktemp("detach-root") / "root"
    res = run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=r)
    assert res.returncode == 0, res.stderr
    res = run_cli("run", "--rm", "busybox", "true", root=r)  # unpack once
    assert res.returncode == 0, res.stderr
    return r


@pytest.fixture(autouse=True)
def _no_leftover_mounts(root: Path) -> object:
    yield None
    assert not mounts_under(root / "tasks"), "a test left a container rootfs mounted"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO the container reads (mounted at /ctl/go) until the test writes a line."""
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    os.mkfifo(ctl / "go")
    return ctl


def release(ctl: Path) -> None:
    """Let the container past its ``read < /ctl/go`` (blocks until it opens the FIFO)."""
    with open(ctl / "go", "w") as f:
        f.write("go\n")


def detach(root: Path, name: str, *args: str) -> None:
    res = imgpipe(root, "run", "-d", "--name", name, *args)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{name}\n", ""), res.stderr


def ps_all(root: Path) -> dict[str, dict[str, object]]:
    return {c["id"]: c for c in json.loads(imgpipe(root, "ps", "-a", "--json").stdout)}


# --- run -d, logs -f, wait -------------------------------------------------------------


def test_detached_logs_follow_and_wait(root: Path, fifo: Path) -> None:
    name = "follow"
    script = "echo first; echo err-first >&2; read x < /ctl/go; echo second; echo err-2 >&2; exit 3"
    detach(root, name, "-v", f"{fifo}:/ctl", "busybox", "sh", "-c", script)
    # running: listed by plain ps, with the detached flag
    running = json.loads(imgpipe(root, "ps", "--json").stdout)
    assert [(c["id"], c["status"], c["detached"]) for c in running] == [(name, "running", True)]
    with subprocess.Popen(
        [IMGPIPE, "--root", root, "logs", "-f", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        ready, _, _ = select.select([follower.stdout], [], [], WAIT_LIMIT)
        assert ready, "logs -f printed nothing"
        assert follower.stdout.readline() == b"first\n"
        release(fifo)  # only now does the container write the rest
        out, err = follower.communicate(timeout=WAIT_LIMIT)
        assert follower.returncode == 0
    assert out == b"second\n"
    assert err == b"err-first\nerr-2\n"
    waited = imgpipe(root, "wait", name)
    assert (waited.returncode, waited.stdout) == (0, "3\n")
    # after the end: plain logs replays both streams, ps shows the exit status
    logs = imgpipe(root, "logs", name)
    assert (logs.stdout, logs.stderr) == ("first\nsecond\n", "err-first\nerr-2\n")
    assert imgpipe(root, "ps", "--json").stdout.strip() == "[]"
    listed = ps_all(root)[name]
    assert (listed["status"], listed["exitCode"]) == ("exited (3)", 3)
    assert not mounts_under(root / "tasks")  # the monitor unmounted it
    assert name not in runc_ids(root)
    assert imgpipe(root, "rm", name).returncode == 0
    assert_clean(root, name)


def test_log_keeps_bytes_as_written(root: Path) -> None:
    name = "binary"
    detach(root, name, "busybox", "sh", "-c", r"printf '\000\377no newline'")
    assert imgpipe(root, "wait", name).stdout == "0\n"
    res = subprocess.run([IMGPIPE, "--root", root, "logs", name], capture_output=True, check=True)
    assert res.stdout == b"\x00\xffno newline"
    assert imgpipe(root, "rm", name).returncode == 0


def test_detached_with_a_terminal_and_an_open_stdin(root: Path) -> None:
    # -t: the pty's output is logged
    detach(root, "tty", "-t", "busybox", "sh", "-c", "tty; exit 2")
    assert imgpipe(root, "wait", "tty").stdout == "2\n"
    assert imgpipe(root, "logs", "tty").stdout.splitlines() == ["/dev/pts/0"]
    # -i: stdin stays open (nothing writes to it), so cat blocks instead of seeing EOF
    detach(root, "stdin", "-i", "busybox", "sh", "-c", "cat; echo eof")
    assert ps_all(root)["stdin"]["status"] == "running"
    assert imgpipe(root, "stop", "-t", "0", "stdin").returncode == 0
    assert imgpipe(root, "logs", "stdin").stdout == ""
    for name in ("tty", "stdin"):
        assert imgpipe(root, "rm", name).returncode == 0
        assert_clean(root, name)


# --- stop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "script", "flags", "expected"),
    [
        # a shell that handles SIGTERM: SIGTERM alone ends it, with its own status (it
        # says so through the FIFO once its trap is set, so stop cannot come before)
        ("trapper", "trap 'exit 7' TERM; echo ready > /ctl/go; while :; do sleep 0.05; done",
         ([], []), 7),
        # sleep as PID 1 ignores SIGTERM: SIGKILL once the timeout passed
        ("stubborn", "exec sleep 1000", ([], ["-t", "0.5"]), 128 + signal.SIGKILL),
        # the timeout run was given is stop's default, as docker's --stop-timeout
        ("own-timeout", "exec sleep 1000", (["--stop-timeout", "0.2"], []), 128 + signal.SIGKILL),
    ],
)  # fmt: skip
def test_stop_sigterm_then_sigkill(
    root: Path, fifo: Path, *, name: str, script: str, flags: tuple[list[str], ...], expected: int
) -> None:
    run_flags, stop_flags = flags
    detach(root, name, "-v", f"{fifo}:/ctl", *run_flags, "busybox", "sh", "-c", script)
    if "/ctl/go" in script:
        with open(fifo / "go") as f:
            assert f.readline() == "ready\n"
    res = imgpipe(root, "stop", *stop_flags, name)
    assert (res.returncode, res.stdout) == (0, f"{name}\n"), res.stderr
    # stop returns once the monitor recorded the end
    assert ps_all(root)[name]["exitCode"] == expected
    assert imgpipe(root, "wait", name).stdout == f"{expected}\n"
    assert imgpipe(root, "stop", name).returncode == 0  # stopping a stopped one is fine
    assert imgpipe(root, "rm", name).returncode == 0
    assert_clean(root, name)


def test_stop_of_a_detached_rm_container_removes_it(root: Path) -> None:
    name = "autoremove"
    detach(root, name, "--rm", "busybox", "sleep", "1000")
    assert imgpipe(root, "stop", "-t", "0", name).returncode == 0
    assert_clean(root, name)  # its monitor removed everything before stop returned
    assert imgpipe(root, "wait", name).returncode == 5


def test_stop_a_foreground_container(root: Path) -> None:
    """stop and wait work on a container whose owner is a foreground run."""
    name = "fg"
    with subprocess.Popen(
        [
            IMGPIPE,
            "--root",
            root,
            "run",
            "--name",
            name,
            "busybox",
            "sh",
            "-c",
            "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        assert imgpipe(root, "stop", name).returncode == 0
        assert proc.wait(timeout=WAIT_LIMIT) == 9
    assert imgpipe(root, "wait", name).stdout == "9\n"
    res = imgpipe(root, "logs", name)
    assert res.returncode == 10 and "not run with -d" in res.stderr
    assert imgpipe(root, "rm", name).returncode == 0
    assert_clean(root, name)


# --- surviving the command that started it; rm ----------------------------------------------


def test_survives_the_command_that_started_it(root: Path, fifo: Path) -> None:
    """`run -d` from a terminal session: the session is hung up and killed after it
    returns; the container runs on, its output still logged, its status recorded."""
    import pty

    name = "survivor"
    master, slave = pty.openpty()
    starter = subprocess.Popen(
        [
            IMGPIPE,
            "--root",
            root,
            "run",
            "-d",
            "--name",
            name,
            "-v",
            f"{fifo}:/ctl",
            "busybox",
            "sh",
            "-c",
            "echo before; read x < /ctl/go; echo after; exit 5",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # a session of its own, with the pty as its terminal
    )
    os.close(slave)
    assert starter.wait(timeout=WAIT_LIMIT) == 0
    # the terminal goes away and the starter's whole process group is killed
    os.close(master)
    # (nothing may be left in it: the monitor is in a session of its own)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(starter.pid, signal.SIGKILL)
    rec = json.loads((root / "tasks" / name / "imgpipe.json").read_text())
    assert os.getsid(rec["monitor_pid"]) != starter.pid
    assert ps_all(root)[name]["status"] == "running"
    release(fifo)
    assert imgpipe(root, "wait", name).stdout == "5\n"
    assert imgpipe(root, "logs", name).stdout == "before\nafter\n"
    assert imgpipe(root, "rm", name).returncode == 0
    assert_clean(root, name)


def test_rm_of_a_running_detached_container(root: Path) -> None:
    name = "busy"
    detach(root, name, "busybox", "sleep", "1000")
    res = imgpipe(root, "rm", name)
    assert res.returncode == 10 and "rm -f" in res.stderr
    res = imgpipe(root, "rm", "-f", name)
    assert (res.returncode, res.stdout) == (0, f"{name}\n"), res.stderr
    assert_clean(root, name)


def test_a_killed_monitor_leaks_nothing_after_rm_f(root: Path) -> None:
    name = "orphan"
    detach(root, name, "busybox", "sleep", "1000")
    monitor = json.loads((root / "tasks" / name / "imgpipe.json").read_text())["monitor_pid"]
    pidfd = os.pidfd_open(monitor)
    os.kill(monitor, signal.SIGKILL)
    select.select([pidfd], [], [], WAIT_LIMIT)
    os.close(pidfd)
    assert ps_all(root)[name]["status"] == "running"  # unowned, still running
    res = imgpipe(root, "wait", name)
    assert res.returncode == 10 and "no exit status" in res.stderr
    assert imgpipe(root, "rm", "-f", name).returncode == 0
    assert_clean(root, name)


# --- failures to start: one line, nothing left --------------------------------------------


@pytest.mark.parametrize("detached", [False, True])
def test_runc_error_said_once(root: Path, detached: bool) -> None:
    name = f"nosuch-{int(detached)}"
    flags = ["-d"] if detached else []
    res = imgpipe(root, "run", *flags, "--rm", "--name", name, "busybox", "nosuchbinary")
    assert res.returncode == 127
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("imgpipe: error: ")
    assert '"nosuchbinary": executable file not found' in lines[0]
    assert_clean(root, name)


# --- issue 12's rows for run ------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--network", "--net"])
def test_network_host_and_none(root: Path, flag: str) -> None:
    host = sorted(os.listdir("/sys/class/net"))
    res = imgpipe(root, "run", "--rm", flag, "host", "busybox", "ls", "/sys/class/net")
    assert (res.returncode, res.stdout.split()) == (0, host), res.stderr
    res = imgpipe(root, "run", "--rm", f"{flag}=none", "busybox", "ls", "/sys/class/net")
    assert (res.returncode, res.stdout.split()) == (0, ["lo"]), res.stderr


def test_publish_is_refused(root: Path) -> None:
    res = imgpipe(root, "run", "--rm", "--name", "published", "-p", "8080:80", "busybox", "true")
    assert res.returncode == 11  # Unsupported
    assert res.stderr == (
        "imgpipe: error: -p 8080:80: publishing ports is not supported: use --net host\n"
    )
    assert not (root / "tasks" / "published").exists()


def test_env_passthrough(root: Path) -> None:
    env = {**os.environ, "FOO": "bar", "EMPTY": ""}
    env.pop("UNSET_HERE", None)
    res = imgpipe(
        root,
        "run",
        "--rm",
        "-e",
        "FOO",
        "-e",
        "EMPTY",
        "-e",
        "UNSET_HERE",
        "-e",
        "SET=1",
        "busybox",
        "env",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    got = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert (got["FOO"], got["EMPTY"], got["SET"]) == ("bar", "", "1")
    assert "UNSET_HERE" not in got  # unset here: not set there either, as docker does


# --- the Python API ---------------------------------------------------------------------


def test_api_run_detached(root: Path) -> None:
    """In-process: the monitor is nobody's child here (no zombie, no ResourceWarning)."""
    import imgpipe

    name = imgpipe.run_detached(
        "busybox", ["sh", "-c", "echo api; echo e >&2; exit 4"], name="api-d", root=root
    )
    assert name == "api-d"
    assert imgpipe.wait_container(name, root=root) == 4
    out: list[bytes] = []
    err: list[bytes] = []
    assert imgpipe.container_logs(name, stdout=out.append, stderr=err.append, root=root) == 4
    assert (b"".join(out), b"".join(err)) == (b"api\n", b"e\n")
    imgpipe.remove_container(name, root=root)
    assert_clean(root, name)
    with pytest.raises(imgpipe.NotFound):
        imgpipe.wait_container(name, root=root)
