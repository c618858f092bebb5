"""A private containerd (Debian's 1.6) for interop tests, with ``ctr`` and ``ctr-remote``.

Fixtures (loaded as a pytest plugin from conftest.py):

- ``containerd`` (session): one daemon for the session; tests isolate themselves with
  :meth:`Containerd.namespace` (a view on the same daemon in a namespace of their own);
- ``fresh_containerd`` (function): a daemon of its own, started empty, for tests that
  need a clean content store (and for timing a peer from a clean state).

Everything the daemon keeps lives in a short temporary directory of its own: ``root``,
``state``, the gRPC/ttrpc sockets (short, because a unix socket path is at most 107
bytes) and the ``opt`` plugin's directory. Only containerd's runc shim uses its built-in
``/run/containerd/{s,runc,fifo}`` (containerd 1.6 has no setting for them); the names
there are keyed by our socket path and namespace, so they never meet another daemon's.
The CRI plugin and the snapshotters that need a special file system are disabled: the
tests use ``overlayfs`` (ctr's default) and ``native``.

The daemon is ready when its socket answers ``ctr version``, polled against a deadline
while watching the process (no sleeps). Teardown kills the tasks still running, stops
the daemon (SIGTERM, then SIGKILL), unmounts what it left mounted under its root and
deletes the directory.

Needs root (containerd mounts overlayfs and runs runc): skips with that reason
otherwise, as the btrfs tests do. A missing ``containerd``/``ctr``/``ctr-remote`` as root
is a failure with the install hint (``make setup`` installs them), never a skip.

::

    def test_x(containerd, registry):
        ctd = containerd.namespace("test-x")
        ctd.pull(registry.ref("app", "esgz"))          # ctr images pull --plain-http
        out = ctd.run(registry.ref("app", "esgz"), "cat", "/etc/motd").stdout
        with ctd.mounted(registry.ref("app", "esgz")) as rootfs:   # read-only view
            ...
        ctd.ctr_remote("images", "get-toc-digest", layer_digest).stdout
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

READY_TIMEOUT = 30.0  # seconds; containerd 1.6 answers in well under a second here
STOP_TIMEOUT = 20.0  # seconds to exit after SIGTERM before SIGKILL
CTR_TIMEOUT = 600  # seconds for one ctr command (a pull or convert of a large image)
DEFAULT_NAMESPACE = "imgpipe-test"

#: Plugins the tests do not use and that would either need something the machine may
#: lack (btrfs, zfs, devmapper, aufs) or start servers we do not want (CRI, tracing).
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)

TOOLS = (("containerd", "containerd"), ("ctr", "containerd"), ("ctr-remote", "stargz-snapshotter"))


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: apt-get install {package} (or make setup)", pytrace=False
        )
    return path


def config_toml(workdir: Path) -> str:
    """containerd's config (version 2) keeping every path under ``workdir``."""
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    return "\n".join(
        [
            "version = 2",
            f'root = "{workdir / "root"}"',
            f'state = "{workdir / "state"}"',
            f"disabled_plugins = [{disabled}]",
            "[grpc]",
            f'  address = "{workdir / "c.sock"}"',
            "[ttrpc]",
            f'  address = "{workdir / "c.sock.ttrpc"}"',
            "[debug]",
            '  address = ""',
            '  level = "info"',
            "[metrics]",
            '  address = ""',
            # the opt plugin would otherwise create /opt/containerd
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{workdir / "opt"}"',
            "",
        ]
    )


@dataclass
class Containerd:
    """A running containerd and the client commands bound to it and one namespace."""

    workdir: Path
    address: str
    ns: str = DEFAULT_NAMESPACE
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # -- client commands ------------------------------------------------------------------

    def namespace(self, name: str) -> Containerd:
        """The same daemon seen from namespace ``name`` (images, content and snapshots of
        a namespace are its own, so tests sharing the daemon do not see each other's)."""
        return replace(self, ns=name)

    def _run(
        self, tool: str, args: tuple[str, ...], check: bool
    ) -> subprocess.CompletedProcess[str]:
        argv = [_tool(tool, dict(TOOLS)[tool]), "--address", self.address, "--namespace", self.ns]
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=CTR_TIMEOUT, env=self.env()
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def env(self) -> dict[str, str]:
        """The environment for the clients: no CONTAINERD_* of the caller, a private TMPDIR."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
        return env

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ctr --address A --namespace N ARGS``; raises AssertionError on failure if ``check``."""
        return self._run("ctr", args, check)

    def ctr_remote(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ctr-remote --address A --namespace N ARGS`` (stargz-snapshotter's ctr)."""
        return self._run("ctr-remote", args, check)

    def pull(
        self, ref: str, *, plain_http: bool = True, unpack: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ctr images pull``: the image recorded and unpacked into overlayfs; with
        ``unpack=False`` ``ctr content fetch``: its blobs only, no image record (ctr 1.6's
        pull always unpacks)."""
        args = ["images", "pull"] if unpack else ["content", "fetch"]
        if plain_http:
            args.append("--plain-http")
        return self.ctr(*args, ref, check=check)

    def push(self, ref: str, local: str = "", *, plain_http: bool = True) -> None:
        """``ctr images push REF [LOCAL]`` to a registry."""
        args = ["images", "push"]
        if plain_http:
            args.append("--plain-http")
        self.ctr(*args, ref, *([local] if local else []))

    def run(
        self, ref: str, *argv: str, check: bool = True, snapshotter: str = "overlayfs"
    ) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm`` of ``ref`` with ``argv`` under a fresh container id."""
        cid = f"t-{uuid.uuid4().hex[:12]}"
        return self.ctr("run", "--rm", "--snapshotter", snapshotter, ref, cid, *argv, check=check)

    @contextlib.contextmanager
    def mounted(self, ref: str) -> Iterator[Path]:
        """The unpacked rootfs of ``ref`` mounted read-only (``ctr images mount``)."""
        target = Path(tempfile.mkdtemp(prefix="rootfs-", dir=self.workdir))
        self.ctr("images", "mount", ref, str(target))
        try:
            yield target
        finally:
            self.ctr("images", "unmount", "--rm", str(target), check=False)
            with contextlib.suppress(OSError):
                target.rmdir()

    def image_digest(self, ref: str) -> str:
        """The target digest containerd recorded for ``ref``."""
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return next(c for c in cols if c.startswith("sha256:"))
        raise AssertionError(f"containerd has no image {ref}")

    def content_json(self, digest: str) -> dict[str, object]:
        """A JSON blob (manifest, config) from containerd's content store."""
        doc: dict[str, object] = json.loads(self.ctr("content", "get", digest).stdout)
        return doc

    def content_digests(self) -> set[str]:
        """Every blob digest in this namespace's content store."""
        lines = self.ctr("content", "ls", "-q").stdout.split()
        return {ln for ln in lines if ln.startswith("sha256:")}

    # -- lifecycle ------------------------------------------------------------------------

    def log(self) -> str:
        return (self.workdir / "containerd.log").read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                last = f"exited with {self.process.returncode}"
                break
            if Path(self.address).exists():
                proc = self.ctr("version", check=False)
                if proc.returncode == 0:
                    return
                last = proc.stderr.strip()
            # wait on the process rather than sleep: returns early if it dies
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.05)
        pytest.fail(f"containerd did not become ready ({last}):\n{self.log()[-3000:]}")

    def _namespaces(self) -> list[str]:
        proc = self.ctr("namespaces", "ls", "-q", check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def _kill_tasks(self) -> None:
        """Kill and delete whatever tests left running: shims outlive the daemon."""
        for ns in self._namespaces():
            view = self.namespace(ns)
            tasks = view.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                view.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
                view.ctr("tasks", "delete", "--force", task, check=False)
            for container in view.ctr("containers", "ls", "-q", check=False).stdout.split():
                view.ctr("containers", "delete", container, check=False)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self._kill_tasks()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        _unmount_under(self.workdir)


def _unmount_under(directory: Path) -> None:
    """Unmount (lazily, deepest first) every mount below ``directory``."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    # /proc/mounts escapes spaces as \040; our paths have none
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def start_containerd(*, namespace: str = DEFAULT_NAMESPACE) -> Iterator[Containerd]:
    """A fresh containerd in a temporary directory of its own; stopped and deleted after."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root (overlayfs mounts, runc); CI runs as root")
    for name, package in TOOLS:
        _tool(name, package)
    # a short directory: the socket path must stay under the 107-byte unix limit
    workdir = Path(tempfile.mkdtemp(prefix="ctd-"))
    try:
        (workdir / "config.toml").write_text(config_toml(workdir))
        with open(workdir / "containerd.log", "wb") as log:
            process = subprocess.Popen(
                [_tool("containerd", "containerd"), "--config", str(workdir / "config.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it first
            )
        ctd = Containerd(workdir, str(workdir / "c.sock"), namespace, process)
        try:
            ctd.wait_ready(time.monotonic() + READY_TIMEOUT)
            yield ctd
        finally:
            ctd.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """One containerd for the session; use ``containerd.namespace(NAME)`` per test."""
    with start_containerd() as ctd:
        yield ctd


@pytest.fixture
def fresh_containerd() -> Iterator[Containerd]:
    """A containerd of the test's own, started with an empty store."""
    with start_containerd() as ctd:
        yield ctd
