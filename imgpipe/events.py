"""Progress events: what stages report to the observer a caller passes in.

Kept apart from :mod:`imgpipe.pipeline` so that displays (the CLI's progress bars) can
import them without loading the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from imgpipe.formats.digest import Digest

__all__ = ["Event", "EventKind", "Observer"]


class EventKind:
    """The kinds of :class:`Event` the built-in stages emit."""

    RESOLVED: Final = "resolved"  # the root descriptor is known
    BLOB_EXISTS: Final = "blob.exists"  # already in the destination, skipped (or mounted)
    BLOB_WAITING: Final = "blob.waiting"  # queued behind other transfers
    BLOB_START: Final = "blob.start"  # transfer begins
    BLOB_PROGRESS: Final = "blob.progress"  # ``offset`` bytes of ``size`` have arrived
    BLOB_DONE: Final = "blob.done"  # transferred and verified
    IMAGE_RECORDED: Final = "image.recorded"
    EXPORTED: Final = "exported"


# A NamedTuple, not a frozen dataclass: the same equality, hash, repr and immutability,
# ~0.2 ms to define instead of ~1.2 ms on the start-up of every verb, and cheaper to make
# (a pull makes thousands).
class Event(NamedTuple):
    """Something a stage did, for progress display and machine-readable logs.

    For blob events ``detail`` is the state a display shows: "waiting", "downloading" or
    "uploading", "verifying" (the last BLOB_PROGRESS, all bytes in), "done",
    "already exists" (or "mounted from REPO" when a registry mounted it).
    """

    kind: str
    digest: Digest | None = None
    media_type: str = ""
    size: int = 0
    detail: str = ""
    offset: int = 0  # bytes done so far (BLOB_PROGRESS)


Observer = Callable[[Event], None]
