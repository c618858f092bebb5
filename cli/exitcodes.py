"""Exit codes: one table, most specific class first. A test pins every row.

Scripts branch on these, so a code never changes meaning once released.
"""

from __future__ import annotations

from typing import Final

from imgpipe import errors

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

EXIT_CODES: Final[tuple[tuple[type[errors.ImgpipeError], int], ...]] = (
    (errors.MalformedDocument, 4),
    (errors.InvalidArgument, 3),
    (errors.NotFound, 5),
    (errors.AlreadyExists, 6),
    (errors.Conflict, 7),
    (errors.DigestMismatch, 8),
    (errors.SizeMismatch, 9),
    (errors.FailedPrecondition, 10),
    (errors.Unsupported, 11),
    (errors.Unauthorized, 12),
    (errors.Unavailable, 13),
    (errors.ResourceLimit, 14),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    # OSError: the environment refused (permissions, a full disk), not a bug of ours
    if isinstance(exc, errors.ImgpipeError | OSError):
        return EXIT_ERROR
    return EXIT_INTERNAL
