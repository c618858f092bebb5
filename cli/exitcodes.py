"""Exit codes: one table, most specific class first. A test pins every row.

Scripts branch on these, so a code never changes meaning once released.

The table is built on first use (PEP 562 ``__getattr__``): the codes are imported on
every start-up (``EXIT_INTERRUPTED`` by the signal handling), the error tree only when
a command fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from imgpipe import errors

    EXIT_CODES: tuple[tuple[type[errors.ImgpipeError], int], ...]

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


def _table() -> tuple[tuple[type[errors.ImgpipeError], int], ...]:
    from imgpipe import errors

    return (
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


_built: list[tuple[tuple[type[errors.ImgpipeError], int], ...]] = []


def _codes() -> tuple[tuple[type[errors.ImgpipeError], int], ...]:
    if not _built:
        _built.append(_table())
    return _built[0]


def __getattr__(name: str) -> Any:
    if name == "EXIT_CODES":
        return _codes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    from imgpipe import errors

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    for cls, code in _codes():
        if isinstance(exc, cls):
            return code
    # OSError: the environment refused (permissions, a full disk), not a bug of ours
    if isinstance(exc, errors.ImgpipeError | OSError):
        return EXIT_ERROR
    return EXIT_INTERNAL
