"""Printing for the command line: progress, results, tables, sizes. Only the CLI prints.

Progress of ``pull`` and ``push`` goes through one observer, chosen by
:func:`make_observer`:

- ``--quiet``: none; only the result line is printed.
- ``--json``: JSON lines on **stdout**, one object per event, then one ``result`` object
  (see :func:`print_result`). stdout because CI tools read a command's machine output
  there and keep stderr for diagnostics; errors still go to stderr as one line, with the
  exit code. Each object has ``event`` plus ``digest``, ``mediaType``, ``size`` and, by
  kind, ``offset`` and ``detail``. ``blob.progress`` is rate-limited per blob
  (:data:`JSON_PROGRESS_INTERVAL`) so a CI log stays readable; every other event is
  printed.
- stderr is a terminal: a live display like ``docker pull``, one bar per blob with its
  short digest, state (waiting, downloading, verifying, done, already exists), bytes and
  speed (rich, imported only then).
- otherwise: :class:`LineProgress`, one plain line per finished step on stderr.

Both human displays end with a summary line once something was transferred, as ctr's
``elapsed: 17.8s total: 61.3 M (3.4 MiB/s)``: :func:`summary_line`. On a terminal the
last lines (``image NAME: DIGEST``, the summary) come below the bars, and
:func:`clear_progress` erases the bars before other output takes the terminal (a
container's, in ``run``).

Observers are called from the transfer worker threads; each one here serialises itself
with a lock. Call :func:`close_observer` when the command ends (on success and failure)
so a live display restores the terminal.

``imgpipe.events`` is imported only when an event arrives: this module is loaded while
the parser is built (``add_output_flags``), on every start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from imgpipe.events import Event, Observer

__all__ = [
    "JSON_PROGRESS_INTERVAL",
    "JsonLines",
    "LineProgress",
    "RichProgress",
    "Tally",
    "add_output_flags",
    "clear_progress",
    "close_observer",
    "human_size",
    "make_observer",
    "print_error",
    "print_json",
    "print_result",
    "print_table",
    "summary_line",
]

#: Seconds between two ``blob.progress`` lines for one blob in ``--json`` output.
JSON_PROGRESS_INTERVAL: Final = 0.5
#: Not yet in EventKind: a blob known but queued behind others; shown if a stage emits it.
BLOB_WAITING: Final = "blob.waiting"


def human_size(n: int) -> str:
    """Sizes as `docker images` shows them: powers of 1000, three significant digits."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _kind(media_type: str) -> str:
    from imgpipe.formats.mediatype import MediaType

    mt = MediaType(media_type)
    if mt.is_index():
        return "index"
    if mt.is_manifest():
        return "manifest"
    if mt.is_config():
        return "config"
    if mt.is_layer():
        return "layer"
    return "blob"


# -- choosing the display ------------------------------------------------------------------


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` to a transfer command's parser (``--quiet`` is global)."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print progress events and the result as JSON lines on stdout (docs/json.md)",
    )


def make_observer(
    args: argparse.Namespace, *, stream: TextIO | None = None, until_recorded: bool = False
) -> Observer | None:
    """The progress observer the command line asks for (see the module docstring).

    ``stream`` overrides where progress goes (stdout for ``--json``, stderr otherwise).
    ``until_recorded``: the terminal display ends, bars erased, as soon as the image is
    recorded (``run``: the container's output follows on the same terminal).
    """
    if getattr(args, "quiet", False):
        return None
    if getattr(args, "json", False):
        return JsonLines(stream or sys.stdout)
    err = stream or sys.stderr
    if _is_terminal(err):
        return RichProgress(stream=err, until_recorded=until_recorded)
    return LineProgress(err)


def _is_terminal(stream: TextIO) -> bool:
    import os

    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def close_observer(observer: Observer | None) -> None:
    """End a display started by :func:`make_observer`; safe to call twice or with None."""
    close = getattr(observer, "close", None)
    if callable(close):
        close()


def clear_progress(observer: Observer | None) -> None:
    """End the display now and erase its bars, keeping its final lines: the hook for a
    command whose own output follows on the terminal (``run``). Later events are ignored."""
    clear = getattr(observer, "clear", None)
    if callable(clear):
        clear()
    else:
        close_observer(observer)


def print_result(args: argparse.Namespace, text: str, **fields: Any) -> None:
    """The command's final result: ``text`` on stdout, or with ``--json`` one JSON line
    ``{"event": "result", "exitCode": 0, "message": text, **fields}`` (docs/json.md)."""
    if getattr(args, "json", False):
        obj = {"event": "result", "exitCode": 0, "message": text, **fields}
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_error(code: int, message: str) -> None:
    """The ``--json`` line of a failed command, last on stdout (docs/json.md)."""
    obj = {"event": "error", "exitCode": code, "message": message}
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# -- what a transfer did -------------------------------------------------------------------


class Tally:
    """Bytes moved, blobs moved and blobs already there, since the display started: the
    summary line. Not locked: the observers call it under their own lock."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.bytes = 0
        self.moved = 0
        self.present = 0
        self._offsets: dict[str, int] = {}

    def add(self, event: Event) -> None:
        from imgpipe.events import EventKind

        key = str(event.digest)
        if event.kind == EventKind.BLOB_START:
            self._offsets[key] = event.offset  # a resumed blob moves only the rest
        elif event.kind == EventKind.BLOB_DONE:
            self.bytes += max(0, event.size - self._offsets.pop(key, 0))
            self.moved += 1
        elif event.kind == EventKind.BLOB_EXISTS:
            self.present += 1

    def line(self) -> str | None:
        """The summary, or None when no blob was seen (nothing to sum up)."""
        if not (self.moved or self.present):
            return None
        return summary_line(time.monotonic() - self.started, self.bytes, self.moved, self.present)


def summary_line(seconds: float, size: int, moved: int, present: int) -> str:
    """``elapsed: 2.1s  total: 61.3 MB (29.2 MB/s)  3 blobs, 2 already present``."""
    rate = f"{human_size(int(size / seconds))}/s" if seconds > 0 else "-"
    line = f"elapsed: {seconds:.1f}s  total: {human_size(size)} ({rate})  "
    line += f"{moved} blob{'' if moved == 1 else 's'}"
    return line + (f", {present} already present" if present else "")


# -- plain lines ---------------------------------------------------------------------------


class LineProgress:
    """An observer that prints one line per finished step to stderr, and the summary
    when closed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._tally = Tally()
        self._closed = False

    def __call__(self, event: Event) -> None:
        from imgpipe.events import EventKind

        d = event.digest.short() if event.digest else ""
        if event.kind == EventKind.RESOLVED:
            line = f"resolved {event.detail}: {event.digest}"
        elif event.kind == EventKind.BLOB_EXISTS:
            line = f"{d}  {_kind(event.media_type):8} {human_size(event.size):>9}  already exists"
        elif event.kind == EventKind.BLOB_DONE:
            line = f"{d}  {_kind(event.media_type):8} {human_size(event.size):>9}  done"
        elif event.kind == EventKind.IMAGE_RECORDED:
            line = f"image {event.detail}: {event.digest}"
        elif event.kind == EventKind.EXPORTED:
            line = f"wrote {event.detail}: {event.digest}"
        else:
            line = ""
        with self._lock:
            if self._closed:
                return
            self._tally.add(event)
            if line:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            summary = self._tally.line()
            if summary:
                print(summary, file=self.stream, flush=True)


# -- JSON lines ----------------------------------------------------------------------------


class JsonLines:
    """An observer writing one JSON object per event, one per line (``--json``)."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = JSON_PROGRESS_INTERVAL
    ) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self._lock = threading.Lock()
        self._last_progress: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        from imgpipe.events import EventKind

        key = str(event.digest) if event.digest else ""
        obj: dict[str, Any] = {"event": event.kind}
        if event.digest is not None:
            obj["digest"] = key
        if event.media_type:
            obj["mediaType"] = event.media_type
        obj["size"] = event.size
        if event.kind in (EventKind.BLOB_PROGRESS, EventKind.BLOB_START) or event.offset:
            obj["offset"] = event.offset
        if event.detail:
            obj["detail"] = event.detail
        line = json.dumps(obj, separators=(",", ":"))
        with self._lock:
            if event.kind == EventKind.BLOB_PROGRESS:
                now = time.monotonic()
                last = self._last_progress.get(key)
                if last is not None and now - last < self.interval:
                    return
                self._last_progress[key] = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


# -- rich bars -----------------------------------------------------------------------------


class RichProgress:
    """A live display like ``docker pull``: one row per blob, drawn with rich.

    rich is imported on the first event, so a command that shows no bar pays nothing.
    ``console`` is for tests (a ``Console(file=StringIO(), force_terminal=True)``).
    The ``image``/``wrote`` lines are held back and printed below the bars when the
    display ends, then the summary; ``until_recorded`` ends it, bars erased, at the
    ``image.recorded`` event (see :func:`make_observer`).
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        console: Console | None = None,
        until_recorded: bool = False,
    ) -> None:
        self._stream = stream or sys.stderr
        self._console = console
        self._until_recorded = until_recorded
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._closed = False
        self._final: list[str] = []
        self._tally = Tally()

    def _start(self) -> Progress:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        console = self._console or Console(file=self._stream)
        progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[state]:<15}"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=False),
            _speed_column(),
            console=console,
            transient=False,
        )
        progress.start()
        self._progress = progress
        return progress

    def __call__(self, event: Event) -> None:
        from imgpipe.events import EventKind

        with self._lock:
            if self._closed:
                return
            self._tally.add(event)
            progress = self._progress or self._start()
            if event.kind == EventKind.RESOLVED:
                progress.console.print(f"resolved {event.detail}: {event.digest}", highlight=False)
                return
            if event.kind in (EventKind.IMAGE_RECORDED, EventKind.EXPORTED):
                verb = "image" if event.kind == EventKind.IMAGE_RECORDED else "wrote"
                self._final.append(f"{verb} {event.detail}: {event.digest}")
                if self._until_recorded and event.kind == EventKind.IMAGE_RECORDED:
                    self._end(erase=True)
                return
            if event.digest is None:
                return
            self._update(progress, event)

    def _update(self, progress: Progress, event: Event) -> None:
        from imgpipe.events import EventKind

        assert event.digest is not None
        key = str(event.digest)
        task = self._tasks.get(key)
        if task is None:
            label = f"{event.digest.short()} {_kind(event.media_type):8}"
            task = progress.add_task(label, total=event.size or None, state="waiting")
            self._tasks[key] = task
        if event.kind == BLOB_WAITING:
            progress.update(task, state="waiting")
        elif event.kind == EventKind.BLOB_START:
            # a resumed transfer starts at its committed offset
            progress.reset(task, total=event.size or None, completed=event.offset)
            # the stage says what it does: downloading, uploading, converting, copying
            progress.update(task, state=event.detail or "downloading")
        elif event.kind == EventKind.BLOB_PROGRESS:
            verifying = event.size > 0 and event.offset >= event.size
            progress.update(
                task,
                completed=event.offset,
                state="verifying" if verifying else event.detail or "downloading",
            )
        elif event.kind == EventKind.BLOB_DONE:
            progress.update(task, completed=event.size, total=event.size, state="done")
            progress.stop_task(task)
        elif event.kind == EventKind.BLOB_EXISTS:
            progress.update(task, completed=event.size, total=event.size, state="already exists")
            progress.stop_task(task)

    def _end(self, *, erase: bool) -> None:
        """Stop the live display (under the lock): the held-back lines and the summary
        go below the bars, or where the bars were when ``erase``."""
        self._closed = True
        progress, self._progress = self._progress, None
        if progress is None:
            return
        if erase:
            progress.live.transient = True  # Live.stop moves the cursor back over the bars
        progress.stop()
        summary = self._tally.line()
        for line in [*self._final, *([summary] if summary else [])]:
            progress.console.print(line, highlight=False)

    def clear(self) -> None:
        with self._lock:
            if not self._closed:
                self._end(erase=True)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._end(erase=False)


def _speed_column() -> Any:
    """rich's speed column without its ``?``: a blob too small or too quick to sample
    shows its average speed, or nothing (rich is imported by the caller already)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: Task) -> Text:
            if task.fields.get("state") == "already exists":
                return Text("")
            speed = task.finished_speed or task.speed
            if speed is None and task.finished and task.elapsed:
                speed = task.completed / task.elapsed
            return Text(f"{human_size(int(speed))}/s" if speed else "", style="progress.data.speed")

    return Speed()


# -- tables and documents ------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for r in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
