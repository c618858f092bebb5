"""The ``imgpipe`` command: argument parsing, dispatch, and one error line per failure.

Each verb lives in its own small module (``cli/cmd_*.py``) with a ``register`` function
that adds its subparser and binds ``func``. Heavy imports happen inside the verbs, so
``imgpipe --version`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from . import (
    cmd_content,
    cmd_convert,
    cmd_images,
    cmd_login,
    cmd_report,
    cmd_run,
    cmd_sync,
    cmd_transfer,
    cmd_unpack,
)
from .exitcodes import EXIT_USAGE, exit_code_for

#: Where the state lives, as imgpipe.store.default_root looks for it.
_ROOT_HELP = (
    "state directory (default: $IMGPIPE_ROOT, /var/lib/imgpipe as root, "
    "else $XDG_DATA_HOME/imgpipe)"
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgpipe")
    except PackageNotFoundError:
        return "0.0.0"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked: reading the installed metadata costs
    ~17 ms, which every other command would pay if the parser computed it up front."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"imgpipe {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="containerd's image pipeline: pull, verify, store, inspect and export images.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    parser.add_argument("--root", metavar="DIR", help=_ROOT_HELP)
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd_transfer.register(sub)
    cmd_images.register(sub)
    cmd_content.register(sub)
    cmd_login.register(sub)
    cmd_run.register(sub)
    cmd_convert.register(sub)
    cmd_unpack.register(sub)
    cmd_sync.register(sub)
    cmd_report.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `imgpipe images | head`: the reader left; stop quietly, as Go tools do on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KeyboardInterrupt, Exception) as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        elif not _is_expected(exc):
            message = f"internal error ({type(exc).__name__}): {message}"
        # one line, whatever the message held
        print(f"imgpipe: error: {' '.join(message.split())}", file=sys.stderr)
        return exit_code_for(exc)


def _is_expected(exc: BaseException) -> bool:
    from imgpipe.errors import ImgpipeError

    return isinstance(exc, ImgpipeError | OSError)


def usage_error(message: str) -> int:
    print(f"imgpipe: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
