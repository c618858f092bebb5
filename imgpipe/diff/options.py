"""What :func:`~imgpipe.diff.apply.apply_layer` is asked to do and what it reports: the
whiteout modes, the bounds on hostile input, :class:`ApplyOptions`, :class:`ApplyResult`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.digest import Digest

__all__ = [
    "MAX_DEVICE_MAJOR",
    "MAX_DEVICE_MINOR",
    "MAX_ENTRIES",
    "MAX_HEADER_SIZE",
    "MAX_ID",
    "MAX_PATH",
    "MAX_WARNINGS",
    "WHITEOUT_DELETE",
    "WHITEOUT_OVERLAY",
    "WHITEOUT_OVERLAY_USER",
    "ApplyOptions",
    "ApplyResult",
]

WHITEOUT_DELETE: Final = "delete"
WHITEOUT_OVERLAY: Final = "overlay"
WHITEOUT_OVERLAY_USER: Final = "overlay-user"
_WHITEOUT_MODES: Final = (WHITEOUT_DELETE, WHITEOUT_OVERLAY, WHITEOUT_OVERLAY_USER)

#: Entries per layer. Real layers have up to a few hundred thousand; a bound turns a
#: stream of empty headers into an error instead of hours of work.
MAX_ENTRIES: Final = 4_000_000
#: Bytes of one entry's path or link target (Linux PATH_MAX). Longer names cannot be
#: used by path anyway, and tarfile holds them in memory.
MAX_PATH: Final = 4096
#: Bytes of one PAX or GNU long-name header: tarfile reads it into memory whole, so an
#: unbounded one would be a memory bomb. 1 MiB holds thousands of xattrs.
MAX_HEADER_SIZE: Final = 1 << 20
#: uid/gid ceiling: above 2^31-1 ids wrap to 0 in places (containerd CVE-2024-40635).
MAX_ID: Final = 2**31 - 1
#: Linux keeps 12 bits of major and 20 of minor (``new_encode_dev``); larger numbers
#: would be silently truncated into another device, so they are refused. (containerd
#: refuses only above 2^32-1.)
MAX_DEVICE_MAJOR: Final = (1 << 12) - 1
MAX_DEVICE_MINOR: Final = (1 << 20) - 1
#: Warnings kept in the result; the rest are counted in a last line.
MAX_WARNINGS: Final = 100


def _is_root() -> bool:
    return os.geteuid() == 0


class ApplyOptions(FrozenValue):
    """How :func:`~imgpipe.diff.apply.apply_layer` writes a layer.

    ``whiteouts`` picks the on-disk whiteout format (:mod:`imgpipe.diff.whiteouts`).
    ``lowers`` are the parent layers' directories, nearest first; they are only read, in
    overlay modes, to copy up parent directory metadata and hardlink targets.
    ``same_owner`` applies the tar's uid/gid (``lchown``; needs root). ``devices``
    creates character and block devices (needs CAP_MKNOD); without it they are skipped
    with a warning. Both default (None) to whether this process runs as root. FIFOs are
    always created. ``use_openat2``: None uses openat2 when the kernel has it; False
    forces the userspace walk (tests run both); True is a request, ignored without
    kernel support. (A hand-written value class, not a dataclass: every unpack defines
    it.)
    """

    __slots__ = (
        "devices",
        "lowers",
        "max_entries",
        "max_path",
        "same_owner",
        "use_openat2",
        "whiteouts",
    )
    whiteouts: str
    lowers: tuple[Path, ...]
    same_owner: bool
    devices: bool
    max_entries: int
    max_path: int
    use_openat2: bool | None

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        whiteouts: str = WHITEOUT_DELETE,
        lowers: Iterable[str | Path] = (),
        same_owner: bool | None = None,
        devices: bool | None = None,
        max_entries: int = MAX_ENTRIES,
        max_path: int = MAX_PATH,
        use_openat2: bool | None = None,
    ) -> None:
        if whiteouts not in _WHITEOUT_MODES:
            raise ValueError(f"whiteouts must be one of {_WHITEOUT_MODES}, not {whiteouts!r}")
        self._set(
            whiteouts=whiteouts,
            lowers=tuple(Path(p) for p in lowers),
            same_owner=_is_root() if same_owner is None else same_owner,
            devices=_is_root() if devices is None else devices,
            max_entries=max_entries,
            max_path=max_path,
            use_openat2=use_openat2,
        )


class ApplyResult(NamedTuple):
    """What :func:`~imgpipe.diff.apply.apply_layer` did: the DiffID and size of the
    uncompressed tar stream, the number of tar entries processed, and warnings (skipped
    devices, refused xattrs, entries that resolved to the root), at most
    :data:`MAX_WARNINGS` of them."""

    diff_id: Digest
    size: int
    entries: int
    warnings: tuple[str, ...]
