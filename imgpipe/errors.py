"""The error hierarchy (defined in :mod:`imgpipe.formats.errors`, the leaf package).

See that module's docstring for the tree. Import from here in code above ``formats``.
"""

from __future__ import annotations

from imgpipe.formats import errors as _errors
from imgpipe.formats.errors import *  # noqa: F403 (the whole tree: formats.errors.__all__)

__all__: list[str] = []
__all__ += _errors.__all__

# -- interrupts ----------------------------------------------------------------------------
# Not an ImgpipeError: an interrupt must not be caught by ``except Exception`` on its way
# out. It *is* a KeyboardInterrupt, so ``except KeyboardInterrupt`` keeps working. Plain
# classes, no dataclasses or digests imported: this module is on every command's start-up.

from typing import TYPE_CHECKING  # noqa: E402 (the error tree above comes first)

if TYPE_CHECKING:
    from imgpipe.formats.digest import Digest


class Kept:
    """What an interrupted (or failed) run leaves in the store for the next attempt.

    ``blobs``: (digest, size) the run committed; ``partial``: (ingest ref, bytes so far)
    of its downloads cut short, resumed from there with ``Range``; ``snapshots``: how many
    snapshots its lease holds (committed layers of an unpack); ``lease`` and
    ``expires_at`` (POSIX seconds): the lease that holds them, and when ``gc`` may take
    them. No lease means nothing was kept here. ``sent``: (digest, size) of the blobs a
    run without a local copy to keep (a push, a conversion between registries) had
    finished writing to its destination, which keeps them. Immutable by convention.
    """

    __slots__ = ("blobs", "expires_at", "lease", "partial", "sent", "snapshots")

    def __init__(
        self,
        *,
        blobs: tuple[tuple[Digest, int], ...] = (),
        partial: tuple[tuple[str, int], ...] = (),
        snapshots: int = 0,
        lease: str | None = None,
        expires_at: float | None = None,
        sent: tuple[tuple[Digest, int], ...] = (),
    ) -> None:
        self.blobs = blobs
        self.sent = sent
        self.partial = partial
        self.snapshots = snapshots
        self.lease = lease
        self.expires_at = expires_at

    @property
    def nothing(self) -> bool:
        return not (self.blobs or self.partial or self.snapshots)

    def __repr__(self) -> str:
        return (
            f"Kept(blobs={len(self.blobs)}, partial={len(self.partial)}, "
            f"snapshots={self.snapshots}, lease={self.lease!r}, sent={len(self.sent)})"
        )


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM. ``kept`` says what it left behind.

    ``str()`` is the reason ("interrupted by SIGTERM"); the CLI exits 130.
    """

    def __init__(self, message: str = "interrupted", *, kept: Kept | None = None) -> None:
        super().__init__(message)
        self.kept = kept if kept is not None else Kept()


__all__ += ["Interrupted", "Kept"]
