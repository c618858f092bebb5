"""runc, driven as containerd's shim drives it: ``create``/``start``/``kill``/``delete``.

Every call runs ``RUNTIME --root <state dir> --log <bundle>/log.json --log-format json``
so imgpipe's containers live in a state directory of their own (never runc's default
/run/runc) and the runtime's errors can be read back from the log, apart from whatever
the container prints. crun takes the same arguments.

Exit statuses are observed by the caller, not by runc (there is no ``runc wait``): the
process that creates a container becomes a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``) so that the container's init, orphaned when
``runc create`` exits, is re-parented to it and can be ``waitpid``-ed, as
containerd-shim-runc-v2 does.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import select
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from imgpipe.errors import FailedPrecondition, NotFound, Unsupported

__all__ = [
    "DEFAULT_RUNTIME",
    "CommandNotExecutable",
    "CommandNotFound",
    "Runc",
    "RuntimeFailed",
    "become_subreaper",
]

#: The runtime looked up on PATH when none is given.
DEFAULT_RUNTIME: Final = "runc"
#: Bound on one control call (create/start/kill/delete/state): runc answers in tens of
#: milliseconds; a wedged runtime must not hang imgpipe forever.
CONTROL_TIMEOUT: Final = 60.0
_PR_SET_CHILD_SUBREAPER: Final = 36


class RuntimeFailed(FailedPrecondition):
    """The runtime refused or failed an operation; the message is its own error."""


class CommandNotFound(NotFound):
    """The command to run does not exist in the image (shells and Docker exit 127)."""


class CommandNotExecutable(RuntimeFailed):
    """The command exists but cannot be executed (permission; Docker exits 126)."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (idempotent).

    Needed to ``waitpid`` a container's init after ``runc create`` exits. A process-wide
    setting: orphans of any child are re-parented here and become our zombies until
    reaped.
    """
    if _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _classify(message: str) -> RuntimeFailed | CommandNotFound:
    missing = "executable file not found" in message or "no such file or directory" in message
    if "exec:" in message and missing:
        return CommandNotFound(message)
    if "exec:" in message and "permission denied" in message:
        return CommandNotExecutable(message)
    return RuntimeFailed(message)


class Runc:
    """One runtime binary with one state directory."""

    def __init__(self, state_root: str | os.PathLike[str], *, binary: str | None = None) -> None:
        """``binary`` is a path or a name looked up on PATH (default ``runc``).
        Unsupported, with an install hint, when it cannot be found."""
        name = binary or DEFAULT_RUNTIME
        found = shutil.which(name)
        if found is None:
            hint = " (apt-get install runc)" if name == DEFAULT_RUNTIME else ""
            raise Unsupported(f"container runtime {name!r} not found{hint}")
        self.binary = found
        self.state_root = Path(state_root)

    def _argv(self, log: Path | None, *args: str) -> list[str]:
        argv = [self.binary, "--root", str(self.state_root)]
        if log is not None:
            argv += ["--log", str(log), "--log-format", "json"]
        return [*argv, *args]

    @staticmethod
    def _log_offset(log: Path | None) -> int:
        if log is None:
            return 0
        try:
            return log.stat().st_size
        except FileNotFoundError:
            return 0

    @staticmethod
    def _log_error(log: Path | None, offset: int) -> str:
        """The last error the runtime logged since ``offset``, or ""."""
        if log is None:
            return ""
        try:
            with log.open("rb") as f:
                f.seek(offset)
                tail = f.read(1 << 20)
        except FileNotFoundError:
            return ""
        message = ""
        for line in tail.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                message = str(entry.get("msg", ""))
        return message

    def _control(self, log: Path | None, *args: str, ok_missing: bool = False) -> str:
        offset = self._log_offset(log)
        proc = subprocess.run(
            self._argv(log, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CONTROL_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            message = (
                self._log_error(log, offset) or proc.stderr.strip() or f"exit {proc.returncode}"
            )
            if "does not exist" in message or "not exist" in message:
                if ok_missing:
                    return ""
                raise NotFound(f"{args[0]} {args[-1]}: {message}")
            raise _classify(f"{os.path.basename(self.binary)} {args[0]}: {message}")
        return proc.stdout

    def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        pid_file: Path,
        log: Path | None = None,
        console_socket: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``runc create`` and return it running; the caller waits for it and then
        calls :meth:`check_create`. Without a console socket the container inherits
        ``stdin``/``stdout``/``stderr`` (the fds, or ours when None) as they are."""
        args = ["create", "--bundle", str(bundle), "--pid-file", str(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", console_socket]
        return subprocess.Popen(
            self._argv(log, *args, container_id),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            # Its own session: a terminal's ^C reaches imgpipe only, which forwards it
            # once (the container is in no process group of the terminal either way).
            start_new_session=True,
        )

    def check_create(self, proc: subprocess.Popen[bytes], log: Path | None, offset: int) -> None:
        """Raise the runtime's error if ``runc create`` failed (after it exited)."""
        # Popen.wait(timeout) polls with sleeps (tens of ms lost per call); a pidfd
        # wakes us the moment runc exits.
        fd = os.pidfd_open(proc.pid)
        try:
            ready, _, _ = select.select([fd], [], [], CONTROL_TIMEOUT)
        finally:
            os.close(fd)
        if not ready:
            proc.kill()
        rc = proc.wait()
        if rc != 0:
            message = self._log_error(log, offset) or f"exit status {rc}"
            raise _classify(message)

    def start(self, container_id: str, *, log: Path | None = None) -> None:
        self._control(log, "start", container_id)

    def kill(
        self, container_id: str, sig: int, *, all_processes: bool = False, log: Path | None = None
    ) -> bool:
        """Send ``sig``; False if the container is already gone (not an error)."""
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(int(sig))]
        try:
            self._control(log, *args)
        except NotFound:
            return False
        except RuntimeFailed as e:
            # "container not running" / "process already finished": nothing to signal.
            if "not running" in str(e) or "finished" in str(e):
                return False
            raise
        return True

    def delete(self, container_id: str, *, force: bool = False, log: Path | None = None) -> None:
        """Delete the container's runtime state and cgroup. Idempotent (a container the
        runtime does not know is success); ``force`` kills a running one first."""
        self._control(log, "delete", *(["--force"] if force else []), container_id, ok_missing=True)

    def state(self, container_id: str) -> dict[str, Any] | None:
        """``runc state``: status (created/running/paused/stopped), pid...; None if the
        runtime does not know the container."""
        try:
            out = self._control(None, "state", container_id)
        except NotFound:
            return None
        state: dict[str, Any] = json.loads(out)
        return state

    def list(self) -> list[dict[str, Any]]:
        """``runc list``: every container in this state directory."""
        if not self.state_root.exists():
            return []
        out = self._control(None, "list", "--format", "json")
        items = json.loads(out or "null")
        return list(items or [])

    def run(
        self,
        container_id: str,
        bundle: Path,
        *,
        log: Path | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> int:
        """``runc run`` in the foreground: create, start, wait and delete in one call;
        the container's exit status (128+n for a signal). The runtime forwards the
        signals it receives. RuntimeFailed/CommandNotFound if it could not start."""
        offset = self._log_offset(log)
        rc = subprocess.run(
            self._argv(log, "run", "--bundle", str(bundle), container_id),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            check=False,
        ).returncode
        message = self._log_error(log, offset)
        if message:
            raise _classify(message)
        return rc


def exit_status(wait_status: int) -> int:
    """A ``waitpid`` status as a shell reports it: the exit code, or 128+n for signal n."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status) if os.WIFEXITED(wait_status) else 128


def wait_pid(pid: int, *, block: bool = True) -> int | None:
    """waitpid for our child ``pid`` (retried on EINTR); its exit status, or None if it
    runs on (``block=False``) or is not our child any more (reaped elsewhere)."""
    try:
        got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    except OSError as e:  # pragma: no cover - waitpid fails only with ECHILD/EINTR
        if e.errno == errno.ECHILD:
            return None
        raise
    if got == 0:
        return None
    return exit_status(status)
