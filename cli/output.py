"""Printing for the command line: progress lines, tables, sizes. Only the CLI prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from imgpipe import Event, EventKind


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


class LineProgress:
    """An observer that prints one line per finished step to stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

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
        print(line, file=self.stream, flush=True)


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for r in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
