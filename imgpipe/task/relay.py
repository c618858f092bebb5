"""Signals and the wait: the first SIGINT/SIGTERM/SIGHUP goes on to the container's
init, SIGKILL when it is overdue or a second comes; the terminal relay for ``-t``; the
:class:`Pump` that copies a container's pipes while it is waited for."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .task import Task

#: Seconds a container gets after a forwarded signal before SIGKILL (Docker's default).
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: The signals imgpipe passes on to the container.
FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Copy buffer of the terminal relay and the pump.
_TTY_CHUNK: Final = 64 * 1024
#: After the init exited, how long the pump waits for more output before it gives up on
#: an EOF: every process of the container's pid namespace is killed with its init, so the
#: pipes close at once; the bound only keeps a wedged kernel from hanging imgpipe.
DRAIN_LIMIT: Final = 10.0


class Relay:
    """Signal handling for one run: interrupt before start, forward after."""

    def __init__(self, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self.pid = 0
        self.deadline: float | None = None
        self.received: list[int] = []
        #: set when the container has ended: signals then change nothing
        self.done = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Relay:
        for sig in FORWARDED_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.done:
            return
        if not self.pid:
            raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")
        if len(self.received) == 1:
            self.deadline = time.monotonic() + self.stop_timeout
            _kill_quietly(self.pid, signum)
        else:
            _kill_quietly(self.pid, signal.SIGKILL)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 64):
                pass

    def kill_if_overdue(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            _kill_quietly(self.pid, signal.SIGKILL)
            self.deadline = None

    def timeout(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def _kill_quietly(pid: int, sig: int) -> None:
    # The init's pid stays ours (a zombie child of this subreaper) until we reap it, so
    # it cannot have been reused for another process.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Pump:
    """Copies pipes (read ends, owned and closed here) to sinks until each one's EOF."""

    def __init__(self) -> None:
        self.sinks: dict[int, Callable[[bytes], object]] = {}

    def add(self, fd: int, sink: Callable[[bytes], object]) -> None:
        self.sinks[fd] = sink

    @property
    def fds(self) -> list[int]:
        return list(self.sinks)

    def pump(self, ready: list[int]) -> None:
        """Copy one chunk from each of the ``ready`` fds that is ours."""
        for fd in ready:
            sink = self.sinks.get(fd)
            if sink is None:
                continue
            try:
                data = os.read(fd, _TTY_CHUNK)
            except OSError as e:
                if e.errno != errno.EIO:  # a pty master: every slave closed
                    raise
                data = b""
            if not data:
                self.close(fd)
            else:
                sink(data)

    def drain(self) -> None:
        """Copy until every pipe is at EOF (bounded by :data:`DRAIN_LIMIT` of silence)."""
        while self.sinks:
            ready, _, _ = select.select(self.fds, [], [], DRAIN_LIMIT)
            if not ready:
                break
            self.pump(ready)
        self.close_all()

    def close(self, fd: int) -> None:
        if self.sinks.pop(fd, None) is not None:
            os.close(fd)

    def close_all(self) -> None:
        for fd in self.fds:
            self.close(fd)


def write_quietly(fd: int) -> Callable[[bytes], None]:
    """A sink writing to ``fd``, dropping the data once the reader has gone (EPIPE):
    the container's output must not end imgpipe's wait for it."""
    broken = False

    def sink(data: bytes) -> None:
        nonlocal broken
        if broken:
            return
        try:
            _write_all(fd, data)
        except OSError:
            broken = True

    return sink


def wait_task(task: Task, relay: Relay, pump: Pump | None = None) -> int:
    """Wait for the container, killing it when a forwarded signal is overdue, copying
    ``pump``'s pipes meanwhile (and to their end after the init exited)."""
    pidfd = os.pidfd_open(task.pid)
    pump = pump or Pump()
    try:
        while True:
            watch = [pidfd, relay.wake_r, *pump.fds]
            ready, _, _ = select.select(watch, [], [], relay.timeout())
            relay.drain()
            pump.pump(ready)
            if pidfd in ready:
                code = task.wait()
                assert code is not None
                pump.drain()
                return code
            relay.kill_if_overdue()
    finally:
        os.close(pidfd)
        pump.close_all()


def relay_terminal(task: Task, relay: Relay, *, interactive: bool, stdin: int, stdout: int) -> int:
    """Copy between our stdio and the container's pty until it exits; its status."""
    assert task.console is not None
    master = task.console
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    saved = None
    if interactive and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
    old_winch = None
    if os.isatty(stdout):

        def resize(*_: object) -> None:
            with contextlib.suppress(OSError):
                termios.tcsetwinsize(master, termios.tcgetwinsize(stdout))

        resize()
        old_winch = signal.signal(signal.SIGWINCH, resize)
    pidfd = os.pidfd_open(task.pid)
    reading_stdin = interactive
    try:
        open_master = True
        while open_master:
            watch = [master, relay.wake_r, *([stdin] if reading_stdin else [])]
            ready, _, _ = select.select(watch, [], [], relay.timeout())
            relay.drain()
            relay.kill_if_overdue()
            if master in ready:
                try:
                    data = os.read(master, _TTY_CHUNK)
                except OSError as e:
                    if e.errno != errno.EIO:  # EIO: every slave closed, the container ended
                        raise
                    data = b""
                if not data:
                    open_master = False
                else:
                    _write_all(stdout, data)
            if reading_stdin and stdin in ready:
                data = os.read(stdin, _TTY_CHUNK)
                if data:
                    _write_all(master, data)
                else:
                    reading_stdin = False
                    _write_all(master, b"\x04")  # EOF: ^D to the line discipline
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
    code = task.wait()
    assert code is not None
    return code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
