"""What an ingest directory records about itself: small text files next to its data.

``ref`` (written last: an ingest without it does not exist yet), ``total`` and
``expected`` (optional: the declared size and digest), ``startedat`` and ``updatedat``
(Unix times). Each is replaced atomically by its lock holder and read back with a size
cap; a file that cannot be read or parsed marks the ingest ``damaged`` (it restarts).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final, NamedTuple

from imgpipe.formats.digest import Digest

from .layout import DATA_MODE

__all__ = ["IngestMeta", "fmt_time", "read_meta", "set_meta", "write_meta"]

# Metadata files hold a ref, a digest, a number or a time: a few hundred bytes at most.
_META_LIMIT: Final = 4096


# A NamedTuple, not a frozen dataclass: ~1 ms less to define (see content/store.py).
class IngestMeta(NamedTuple):
    """What an ingest directory records about itself; ``damaged`` if a file is unreadable."""

    ref: str | None
    total: int | None
    expected: Digest | None
    started_at: float | None
    updated_at: float | None
    damaged: bool


def fmt_time(t: float) -> str:
    return f"{t:.9f}"


def _read_small(path: Path) -> str | None:
    """A metadata file's text; None if missing. ValueError if oversized or not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, _META_LIMIT + 1)
    finally:
        os.close(fd)
    if len(raw) > _META_LIMIT:
        raise ValueError(f"{path} is larger than {_META_LIMIT} bytes")
    return raw.decode("utf-8")


def read_meta(directory: Path) -> IngestMeta:
    damaged = False
    values: dict[str, str | None] = {}
    for name in ("ref", "total", "expected", "startedat", "updatedat"):
        try:
            values[name] = _read_small(directory / name)
        except (OSError, ValueError):
            values[name], damaged = None, True
    total: int | None = None
    expected: Digest | None = None
    times: dict[str, float | None] = {"startedat": None, "updatedat": None}
    try:
        if (t := values["total"]) is not None:
            total = int(t)
            if total < 0:
                raise ValueError(t)
        if (e := values["expected"]) is not None:
            expected = Digest.parse(e)
        for name in times:
            if (v := values[name]) is not None:
                times[name] = float(v)
    except ValueError:  # InvalidDigest is a ValueError too
        damaged = True
    return IngestMeta(
        ref=values["ref"],
        total=total,
        expected=expected,
        started_at=times["startedat"],
        updated_at=times["updatedat"],
        damaged=damaged,
    )


def write_meta(directory: Path, name: str, text: str) -> None:
    """Replace a metadata file atomically (callers hold the ingest lock)."""
    tmp = directory / f".{name}.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, DATA_MODE
    )
    try:
        data = text.encode("utf-8")
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)


def set_meta(directory: Path, name: str, text: str | None) -> None:
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    else:
        write_meta(directory, name, text)
