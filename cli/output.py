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

Observers are called from the transfer worker threads; each one here serialises itself
with a lock. Call :func:`close_observer` when the command ends (on success and failure)
so a live display restores the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

from imgpipe.events import Event, EventKind

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from imgpipe.events import Observer

__all__ = [
    "JSON_PROGRESS_INTERVAL",
    "JsonLines",
    "LineProgress",
    "RichProgress",
    "add_output_flags",
    "close_observer",
    "human_size",
    "make_observer",
    "print_json",
    "print_result",
    "print_table",
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
        help="print progress events and the result as JSON lines on stdout",
    )


def make_observer(args: argparse.Namespace, *, stream: TextIO | None = None) -> Observer | None:
    """The progress observer the command line asks for (see the module docstring).

    ``stream`` overrides where progress goes (stdout for ``--json``, stderr otherwise).
    """
    if getattr(args, "quiet", False):
        return None
    if getattr(args, "json", False):
        return JsonLines(stream or sys.stdout)
    err = stream or sys.stderr
    if _is_terminal(err):
        return RichProgress(stream=err)
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


def print_result(args: argparse.Namespace, text: str, **fields: Any) -> None:
    """The command's final result: ``text`` on stdout, or with ``--json`` one JSON line
    ``{"event": "result", **fields}``."""
    if getattr(args, "json", False):
        line = json.dumps({"event": "result", **fields}, separators=(",", ":"))
        sys.stdout.write(line + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- plain lines ---------------------------------------------------------------------------


class LineProgress:
    """An observer that prints one line per finished step to stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
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
            return
        with self._lock:
            print(line, file=self.stream, flush=True)


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
    """

    def __init__(self, *, stream: TextIO | None = None, console: Console | None = None) -> None:
        self._stream = stream or sys.stderr
        self._console = console
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._closed = False

    def _start(self) -> Progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        console = self._console or Console(file=self._stream)
        progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[state]:<15}"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            console=console,
            transient=False,
        )
        progress.start()
        self._progress = progress
        return progress

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._closed:
                return
            progress = self._progress or self._start()
            if event.kind in (EventKind.RESOLVED, EventKind.IMAGE_RECORDED, EventKind.EXPORTED):
                verb = {
                    EventKind.RESOLVED: "resolved",
                    EventKind.IMAGE_RECORDED: "image",
                    EventKind.EXPORTED: "wrote",
                }[event.kind]
                progress.console.print(f"{verb} {event.detail}: {event.digest}", highlight=False)
                return
            if event.digest is None:
                return
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
                progress.update(task, state="downloading")
            elif event.kind == EventKind.BLOB_PROGRESS:
                verifying = event.size > 0 and event.offset >= event.size
                progress.update(
                    task,
                    completed=event.offset,
                    state="verifying" if verifying else "downloading",
                )
            elif event.kind == EventKind.BLOB_DONE:
                progress.update(task, completed=event.size, total=event.size, state="done")
                progress.stop_task(task)
            elif event.kind == EventKind.BLOB_EXISTS:
                progress.update(
                    task, completed=event.size, total=event.size, state="already exists"
                )
                progress.stop_task(task)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


# -- tables and documents ------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for r in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
