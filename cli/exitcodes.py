"""Exit codes: one table, most specific class first. A test pins every row.

Scripts branch on these, so a code never changes meaning once released.
"""

from __future__ import annotations

from typing import Final

from imgpipe.errors import (
    AlreadyExists,
    Conflict,
    DigestMismatch,
    FailedPrecondition,
    ImgpipeError,
    InvalidArgument,
    MalformedDocument,
    NotFound,
    ResourceLimit,
    SizeMismatch,
    Unauthorized,
    Unavailable,
    Unsupported,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "exit_code_for",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1  # an ImgpipeError with no more specific row
EXIT_USAGE: Final = 2  # bad command line (argparse's own code)
EXIT_INTERNAL: Final = 70  # a bug: an exception imgpipe did not mean to raise (EX_SOFTWARE)
EXIT_INTERRUPTED: Final = 130  # SIGINT, as shells report it

EXIT_CODES: Final[tuple[tuple[type[ImgpipeError], int], ...]] = (
    (MalformedDocument, 4),
    (InvalidArgument, 3),
    (NotFound, 5),
    (AlreadyExists, 6),
    (Conflict, 7),
    (DigestMismatch, 8),
    (SizeMismatch, 9),
    (FailedPrecondition, 10),
    (Unsupported, 11),
    (Unauthorized, 12),
    (Unavailable, 13),
    (ResourceLimit, 14),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    # OSError: the environment refused (permissions, a full disk), not a bug of ours
    if isinstance(exc, ImgpipeError | OSError):
        return EXIT_ERROR
    return EXIT_INTERNAL
