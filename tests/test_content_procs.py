"""The content store shared by several processes: kill and resume, locking, races.

The other processes run tests/helpers_content/writer_proc.py and report each step on a
line of stdout; the test waits for those lines (never for time) before acting.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgpipe.content import ContentStore
from imgpipe.formats.digest import Digest

HELPER = Path(__file__).parent / "helpers_content" / "writer_proc.py"

# Only a guard against a hung helper failing the run forever; nothing waits this long
# when things work, and no assertion depends on it.
HANG_GUARD_SECONDS = 120


class Helper:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def line(self) -> str:
        """The helper's next line ("" at EOF); fails if it hangs."""
        try:
            return self._lines.get(timeout=HANG_GUARD_SECONDS)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"helper {self.proc.args!r} printed nothing") from None

    def _pump(self) -> None:
        # A thread reads stdout so that lines arriving together are not lost in a
        # buffer that select() cannot see.
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.rstrip("\n"))
        self._lines.put("")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=HANG_GUARD_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join()
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join()  # the pipe is at EOF now that the process is gone
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def helpers() -> Iterator[list[Helper]]:
    started: list[Helper] = []
    yield started
    for h in started:
        h.kill()


@pytest.fixture
def payload(tmp_path: Path) -> tuple[bytes, Digest, Path]:
    data = os.urandom(3 * (1 << 20) + 4321)  # several chunks
    path = tmp_path / "payload"
    path.write_bytes(data)
    return data, Digest.from_bytes(data), path


def start(helpers: list[Helper], *args: str) -> Helper:
    h = Helper(*args)
    helpers.append(h)
    return h


def test_sigkill_mid_write_then_resume(tmp_path, payload, helpers):
    data, digest, path = payload
    root = tmp_path / "content"
    n = 1_500_000
    h = start(helpers, "hold", str(root), "pull-1", str(path), str(n))
    assert h.line() == f"written {n}"
    cs = ContentStore(root)
    assert cs.ingest_status("pull-1").locked
    h.proc.send_signal(signal.SIGKILL)
    assert h.proc.wait() == -signal.SIGKILL

    status = cs.ingest_status("pull-1")
    assert (status.offset, status.total, status.expected, status.locked) == (
        n,
        len(data),
        digest,
        False,
    )
    with cs.writer("pull-1", expected=digest, total=len(data), timeout=0) as w:
        assert w.offset == n
        assert w.digest() == Digest.from_bytes(data[:n])
        w.write(data[n:])
        w.commit(len(data), digest)
    with cs.open(digest) as f:
        assert f.read() == data
    assert list(cs.verify()) == []
    assert list(cs.ingests()) == []


def test_second_process_conflicts_without_timeout_then_waits_with_one(tmp_path, payload, helpers):
    data, digest, path = payload
    root = tmp_path / "content"
    holder = start(helpers, "hold", str(root), "shared", str(path), "100000")
    assert holder.line() == "written 100000"

    # timeout=0: refused at once, and nothing of its bytes reached the ingest.
    quick = start(helpers, "ingest", str(root), "shared", str(path), "0")
    assert quick.line() == "conflict"
    quick.finish()
    assert ContentStore(root).ingest_status("shared").offset == 100000

    # With a timeout: the waiter reports its first back-off, only then may the holder
    # finish, so the waiter has certainly waited for the commit.
    waiter = start(helpers, "ingest", str(root), "shared", str(path), "600")
    assert waiter.line() == "waiting"
    holder.send("commit")
    assert holder.line() == "committed"
    holder.finish()
    assert waiter.line() == "result False"  # found the blob committed by the holder
    waiter.finish()

    cs = ContentStore(root)
    with cs.open(digest) as f:
        assert f.read() == data
    assert list(cs.verify()) == []
    assert list(cs.ingests()) == []


def test_holder_exits_without_commit_waiter_resumes(tmp_path, payload, helpers):
    data, digest, path = payload
    root = tmp_path / "content"
    holder = start(helpers, "hold", str(root), "shared", str(path), "200000")
    assert holder.line() == "written 200000"
    waiter = start(helpers, "ingest", str(root), "shared", str(path), "600")
    assert waiter.line() == "waiting"
    holder.send("leave")  # closes the writer, keeps the ingest
    holder.finish()
    assert waiter.line() == "result True"
    waiter.finish()
    cs = ContentStore(root)
    assert cs.read_bytes(digest, limit=len(data)) == data
    assert list(cs.ingests()) == []


@pytest.mark.parametrize("same_ref", [True, False], ids=["same-ref", "ref-per-process"])
def test_many_processes_ingest_one_blob_at_once(tmp_path, payload, helpers, same_ref):
    _, digest, path = payload
    root = tmp_path / "content"
    procs = [
        start(
            helpers,
            "ingest",
            str(root),
            "race" if same_ref else f"race-{i}",
            str(path),
            "600",
            "ready",
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.line() == "ready"
    for p in procs:  # release them together: they race to create the same ingest dir
        p.send("go")
    results = []
    for p in procs:
        line = p.line()
        while line == "waiting":
            line = p.line()
        results.append(line)
        p.finish()
    assert set(results) <= {"result True", "result False"}
    if same_ref:
        # One ref is one writer at a time: exactly one commits, the others find the blob.
        assert results.count("result True") == 1
    else:
        assert "result True" in results
    cs = ContentStore(root)
    assert [i.digest for i in cs.walk()] == [digest]
    assert list(cs.verify()) == []
    assert list(cs.ingests()) == []
    leftovers = os.listdir(root / "ingest") if (root / "ingest").exists() else []
    assert leftovers == []


def test_abort_from_another_process_while_one_waits(tmp_path, payload, helpers):
    """An abort removes the ingest under a waiter; the waiter starts a fresh one."""
    data, digest, path = payload
    root = tmp_path / "content"
    cs = ContentStore(root)
    w = cs.writer("r", expected=digest, total=len(data))
    w.write(b"\0" * 1000)  # wrong bytes: if the waiter resumed them, the digest would fail
    waiter = start(helpers, "ingest", str(root), "r", str(path), "600")
    assert waiter.line() == "waiting"
    w.discard()  # the holder's abort: the directory the waiter polls is renamed away
    assert waiter.line() == "result True"
    waiter.finish()
    assert cs.read_bytes(digest, limit=len(data)) == data
    assert list(cs.ingests()) == []
