"""The monitor of a detached container (``imgpipe run -d``): imgpipe's containerd-shim.

``run -d`` prepares the container as a foreground run does (image, snapshot, mounted
rootfs, runtime spec, record) and then :func:`spawn_monitor` starts this module as a
process of its own, in a new session (no terminal, so no SIGHUP when it closes), with
its stdio on ``monitor.err``. The monitor:

1. takes over the container's owner lock (the descriptor is passed; see :mod:`.owner`);
2. creates the container with ``runc create`` (becoming the subreaper of its init) with
   stdout/stderr on pipes of its own (``-t``: the pty), starts it, and reports the init's
   pid, or the runtime's error, on the report pipe; ``run -d`` returns then;
3. copies the container's output into ``container.log`` (:mod:`.logfile`) until the init
   exits, and reaps it;
4. writes the end frame, the exit status into the record and the owner file, tears the
   container down (runtime state, rootfs mount; with ``--rm`` the snapshot and the
   directory too) and exits, which releases the lock: ``imgpipe wait`` returns.

SIGTERM/SIGINT to the monitor are forwarded to the container (SIGKILL after the stop
timeout), as a foreground run forwards them; SIGKILL of the monitor leaves the container
running unowned: ``imgpipe rm -f`` removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgpipe import errors

from . import state
from .logfile import LOG_FILE, STDERR, STDOUT, LogWriter
from .owner import Owner
from .relay import Pump, Relay, wait_task
from .remove import teardown
from .runc import CommandNotExecutable, CommandNotFound, Runc, RuntimeFailed
from .task import Task

__all__ = ["MONITOR_ERR", "spawn_monitor"]

MONITOR_ERR = "monitor.err"
#: The runtime's error classes, by the name the monitor reports them with.
_ERRORS: dict[str, type[errors.ImgpipeError]] = {
    "CommandNotFound": CommandNotFound,
    "CommandNotExecutable": CommandNotExecutable,
    "RuntimeFailed": RuntimeFailed,
}


def spawn_monitor(
    bundle: Path,
    runtime: Runc,
    owner: Owner,
    *,
    remove: bool,
    terminal: bool,
    interactive: bool,
    stop_timeout: float,
    lazy_fd: int = -1,
) -> int:
    """Start the monitor of the prepared container in ``bundle`` and wait until it has
    started the container; the init's pid. Raises the runtime's error (CommandNotFound,
    RuntimeFailed...) when it could not; the monitor has then deleted what it created
    and exited, and the caller's cleanup runs as for a foreground run."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    settings = {
        "bundle": str(bundle),
        "runtime": runtime.binary,
        "state_root": str(runtime.state_root),
        "report_fd": report_w,
        "owner_fd": owner.fd,
        "remove": remove,
        "terminal": terminal,
        "interactive": interactive,
        "stop_timeout": stop_timeout,
        "lazy_fd": lazy_fd,  # run -d --lazy: the FUSE descriptor, to own the mount
    }
    extra = (lazy_fd,) if lazy_fd >= 0 else ()
    try:
        with open(bundle / MONITOR_ERR, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, json.dumps(settings)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(report_w, owner.fd, *extra),
                start_new_session=True,
                cwd="/",  # never pin a directory (or a mount) of the caller's
            )
    finally:
        os.close(report_w)
    # The monitor forks once more and its first process exits at once (see main), so
    # it is nobody's child here: a long-lived caller collects no zombie. It stays in
    # the process group of that first process (the session start_new_session made).
    proc.wait()
    try:
        with os.fdopen(report_r, "rb") as f:
            raw = f.read()
    except BaseException:
        # interrupted: the caller's cleanup deletes what the monitor created
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    try:
        report: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise errors.FailedPrecondition(
            f"container monitor failed: {_last_line(bundle / MONITOR_ERR)}"
        ) from None
    if "pid" in report:
        return int(report["pid"])
    cls = _ERRORS.get(report.get("error", ""), errors.FailedPrecondition)
    raise cls(str(report.get("message", "container monitor failed")))


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "it printed nothing"
    return lines[-1] if lines else "it exited without a word"


class _Monitor:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.bundle = Path(settings["bundle"])
        self.imgroot = self.bundle.parent.parent
        self.id = self.bundle.name
        self.runtime = Runc(settings["state_root"], binary=settings["runtime"])
        self.owner = Owner(int(settings["owner_fd"]))
        self.report_fd = int(settings["report_fd"])
        self.remove = bool(settings["remove"])
        self.terminal = bool(settings["terminal"])
        self.interactive = bool(settings["interactive"])
        self.stop_timeout = float(settings["stop_timeout"])
        self.log = LogWriter(self.bundle / LOG_FILE)
        self.pump = Pump()
        self.held: list[int] = []  # fds kept open for the container's lifetime
        self.log_failed = False
        if int(settings.get("lazy_fd", -1)) >= 0:
            from .lazyroot import adopt_lazy  # noqa: PLC0415 (run -d --lazy)

            adopt_lazy(self.bundle, int(settings["lazy_fd"]))

    def sink(self, stream: int) -> Callable[[bytes], None]:
        """Log what the container writes on ``stream``. A log that cannot be written (a
        full disk) loses the output, said once on monitor.err, but never stops the
        monitor: the pipes are still drained, the container reaped and torn down."""

        def write(data: bytes) -> None:
            try:
                self.log.write(stream, data)
            except OSError as e:
                if not self.log_failed:
                    self.log_failed = True
                    print(f"imgpipe monitor: container output lost: {e}", file=sys.stderr)

        return write

    def report(self, obj: dict[str, Any]) -> None:
        # A caller killed meanwhile (EPIPE) changes nothing: the container is ours now.
        with contextlib.suppress(OSError):
            os.write(self.report_fd, json.dumps(obj).encode())
        os.close(self.report_fd)

    def create(self) -> Task:
        """runc create with our pipes (or a pty) as the container's stdio; runc's own
        stderr is the same pipe, and what it prints there before create returns is
        dropped (the error is reported from its log)."""
        if self.terminal:
            task = Task.create(self.id, self.bundle, self.runtime, terminal=True)
            assert task.console is not None
            self.pump.add(task.console, self.sink(STDOUT))
            return task
        if self.interactive:
            # -d -i: stdin stays open (a pipe nothing writes), as docker run -di does
            stdin, keep = os.pipe2(os.O_CLOEXEC)
            self.held.append(keep)
        else:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            task = Task.create(
                self.id, self.bundle, self.runtime, stdin=stdin, stdout=out_w, stderr=err_w
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        self.pump.add(out_r, self.sink(STDOUT))
        self.pump.add(err_r, self.sink(STDERR))
        return task

    def run(self) -> int:
        with Relay(self.stop_timeout) as relay:
            try:
                task = self.create()
                task.start()
            except BaseException as e:
                self.pump.close_all()
                name = "RuntimeFailed" if isinstance(e, KeyboardInterrupt) else type(e).__name__
                message = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
                self.runtime.delete(self.id, force=True, log=self.bundle / "log.json")
                self.report({"error": name, "message": message})
                return 1
            relay.pid = task.pid
            rec = state.read_record(self.imgroot, self.id)
            rec.pid, rec.monitor_pid = task.pid, os.getpid()
            state.write_record(self.bundle, rec)
            self.report({"pid": task.pid})
            code = wait_task(task, relay, self.pump)
            relay.done = True
        self.finish(code, rec)
        return 0

    def finish(self, code: int, rec: state.TaskRecord) -> None:
        for fd in self.held:
            os.close(fd)
        with contextlib.suppress(OSError):  # a full disk: `logs -f` ends by liveness
            self.log.end(code)
        self.log.close()
        self.owner.set_exit(code)
        rec.exit_code, rec.finished_at = code, time.time()
        try:
            teardown(self.imgroot, rec, self.runtime, remove=self.remove)
        finally:
            # after the teardown, `ps` says exited once it is; whatever it left
            if self.bundle.exists():
                with contextlib.suppress(FileNotFoundError):
                    state.write_record(self.bundle, rec)


def main(argv: list[str]) -> int:
    if os.fork() != 0:
        os._exit(0)  # the parent of the real monitor: reaped by spawn_monitor at once
    return _Monitor(json.loads(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
