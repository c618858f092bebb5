"""The one scheduler (imgpipe.pipeline.scheduler): bounded pool, progress, cancellation."""

from __future__ import annotations

import io
import signal
import threading

import pytest

from imgpipe.events import Event, EventKind
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.pipeline import Background, Cancelled, ProgressReader, run_concurrently
from imgpipe.pipeline.scheduler import CANCEL_READ_SIZE


def _desc(n: int, size: int = 10) -> Descriptor:
    return Descriptor("application/octet-stream", Digest("sha256", f"{n:064x}"), size)


def test_run_concurrently_keeps_order_and_announces_the_queue() -> None:
    events: list[Event] = []
    descs = [_desc(i) for i in range(6)]
    out = run_concurrently(events.append, descs, 2, "t", lambda d: d.digest)
    assert out == [d.digest for d in descs]
    waiting = [e.digest for e in events if e.kind == EventKind.BLOB_WAITING]
    assert waiting == [d.digest for d in descs[2:]]


def test_run_concurrently_raises_the_first_failure() -> None:
    def job(i: int) -> int:
        if i == 3:
            raise ValueError("boom")
        return i

    def describe(i: int) -> Descriptor:
        return _desc(i)

    with pytest.raises(ValueError, match="boom"):
        run_concurrently(lambda e: None, list(range(8)), 2, "t", job, describe=describe)


def test_run_concurrently_with_one_worker_runs_here() -> None:
    here = threading.get_ident()
    assert run_concurrently(
        lambda e: None, [_desc(1)], 1, "t", lambda d: threading.get_ident()
    ) == [here]


def test_progress_reader_reports_and_ends_with_the_final_state() -> None:
    events: list[Event] = []
    d = _desc(1, size=3000)
    r = ProgressReader(io.BytesIO(b"x" * 3000), events.append, d, "converting", final="done-ish")
    assert r.read(1000) == b"x" * 1000
    r.seek(2000)
    assert r.tell() == 2000
    assert r.read() == b"x" * 1000
    progress = [e for e in events if e.kind == EventKind.BLOB_PROGRESS]
    assert progress[-1].detail == "done-ish" and progress[-1].offset == 3000
    assert progress[0].detail == "converting"


def test_progress_reader_stops_once_cancelled() -> None:
    cancel = threading.Event()
    r = ProgressReader(io.BytesIO(b"y" * 100), lambda e: None, _desc(1, 100), "v", cancel=cancel)
    assert r.read(10)
    cancel.set()
    with pytest.raises(Cancelled):
        r.read(10)


def test_background_waits_per_key_and_the_first_failure_wins() -> None:
    release = threading.Event()

    def ok(cancel: threading.Event) -> None:
        return None

    def slow(cancel: threading.Event) -> None:
        release.wait(5)
        if cancel.is_set():
            raise Cancelled("called off")

    def bad(cancel: threading.Event) -> None:
        raise KeyError("bad blob")

    with Background([("a", ok), ("b", slow)], 2, "t") as bg:
        bg.wait("a")
        assert bg.done("a")
        release.set()
        bg.wait_all()
    release.clear()
    with pytest.raises(KeyError), Background([("s", slow), ("x", bad)], 2, "t") as bg:
        try:
            bg.wait("s")
        finally:
            release.set()
    assert bg.cancel_event.is_set()


class _Endless(io.RawIOBase):
    """A stream that never ends (a transfer that would run on for ever), telling when the
    first read came."""

    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self.started.set()
        view = memoryview(b).cast("B")
        view[:] = b"\0" * len(view)
        return len(view)


def test_a_failure_stops_the_transfers_still_running() -> None:
    """One job fails while another is mid-transfer on an endless stream: the run's cancel
    is set, the transfer stops at its next read, the failure (not Cancelled) is raised.
    Without the cancel this would never return."""
    cancel = threading.Event()
    started = threading.Event()
    sizes: list[int] = []

    def job(i: int) -> int:
        if i == 0:
            started.wait(30)
            raise ValueError("boom")
        r = ProgressReader(_Endless(started), lambda e: None, _desc(1, 1 << 62), "v", cancel=cancel)
        buf = bytearray(1 << 20)
        while n := r.readinto(buf):
            sizes.append(n)
        return 0

    with pytest.raises(ValueError, match="boom"):
        run_concurrently(lambda e: None, [0, 1], 2, "t", job, describe=_desc, cancel=cancel)
    assert cancel.is_set()
    # reads of a cancellable reader are short, so a slow link stops soon after the cancel
    assert sizes and max(sizes) <= CANCEL_READ_SIZE


def test_ctrl_c_in_the_waiting_thread_cancels_the_workers() -> None:
    """A real SIGINT to the main thread while run_concurrently waits there: the
    KeyboardInterrupt comes out, the cancel is set and the running transfer stops."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    cancel = threading.Event()
    started = threading.Event()
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def job(i: int) -> int:
        if i == 0:
            started.wait(30)
            signal.pthread_kill(main, signal.SIGINT)
            return 0
        r = ProgressReader(_Endless(started), lambda e: None, _desc(1, 1 << 62), "v", cancel=cancel)
        while r.read(1 << 20):
            pass
        return 0

    with pytest.raises(KeyboardInterrupt):
        run_concurrently(lambda e: None, [0, 1], 2, "t", job, describe=_desc, cancel=cancel)
    assert cancel.is_set()
