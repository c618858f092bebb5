"""``imgpipe run``: containers from images, with runc (``ps``, ``rm``, ``logs``, ``stop``
and ``wait`` are in cmd_containers.py).

``run`` exits with the container's status (128+n when a signal n killed it), so a
script sees what the command did; ``run -d`` prints the container's name once it runs
under its monitor, and exits 0. When the container could not be started its exit
status is the shell's: 127 for a command missing from the image, 126 for one that
cannot be executed; any other failure of imgpipe's is reported with the usual exit
codes (cli/exitcodes.py). Imports stay inside the verbs: start-up is part of the cost
of every ``imgpipe run``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any, Final

from . import flags

if TYPE_CHECKING:
    import imgpipe

#: Shell conventions (and Docker's) for a command that could not be run.
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126

_SIZE_RE: Final = re.compile(r"(\d+)([bkmg]?)", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes of ``512m``-style sizes (b, k, m, g; powers of 1024, as Docker)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 64m, 1g, 1048576)")
    return int(m[1]) * _SIZE_UNITS[m[2].lower()]


def register(sub: Any) -> None:
    p = flags.verb(sub, "run", run)
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="run in the background under a monitor; print its name (logs, stop, wait it)",
    )
    p.add_argument("--rm", action="store_true", help="remove the container and its snapshot after")
    p.add_argument("--name", help="container name (default: random)")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V|K",
        help="set a variable (a bare K passes this environment's value of K)",
    )
    p.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read K=V lines")
    p.add_argument("-w", "--workdir", default="", metavar="DIR", help="working directory")
    p.add_argument("-u", "--user", default="", help="name|uid[:group|gid]")
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="bind-mount a host directory",
    )
    p.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    p.add_argument(
        "--net",
        "--network",
        dest="net",
        choices=("none", "host"),
        default="none",
        help="network: none (default, a namespace with only lo) or host",
    )
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        # refused with its own message (not argparse's "unrecognized"), and kept out of
        # the usage and the command summary: it is no feature
        help=argparse.SUPPRESS,
    )
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="connect stdin")
    p.add_argument("--hostname", default="", help="container host name (default: its name)")
    p.add_argument("--entrypoint", help="replace the image's entrypoint (and its Cmd)")
    p.add_argument("--memory", type=parse_size, metavar="BYTES", help="memory limit (e.g. 64m)")
    p.add_argument("--cpus", type=float, help="CPU quota, in CPUs (e.g. 0.5)")
    p.add_argument("--pids-limit", type=int, metavar="N", help="process limit")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after a forwarded signal, SIGKILL the container this late (default 10)",
    )
    flags.snapshotter(p)
    flags.runtime(p)
    flags.platform(p, "os/arch[/variant] of an index (default: this host)")
    flags.decrypt_keys(p, help="ocicrypt key")
    flags.connection(p)  # for the pull `run` does when the image is not stored
    from .lazyreport import add_lazy_flags

    add_lazy_flags(
        p,
        "pull lazily and mount eStargz/zstd:chunked layers over FUSE: the container starts "
        "once the TOCs are in, files are fetched when read. An image that cannot be run "
        "lazily is pulled in full, and a line says why",
    )
    p.add_argument("image", metavar="REF")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")


def run(args: argparse.Namespace) -> int:
    """run a command in a new container of an image (pulled and unpacked if needed)

    Run a command in a new container, as `ctr run` does, with runc.
    """
    import imgpipe
    from imgpipe.errors import InvalidArgument

    env: list[str] = []
    for path in args.env_file:
        try:
            with open(path, encoding="utf-8") as f:
                env += imgpipe.parse_env_file(f.read())
        except UnicodeDecodeError:
            raise InvalidArgument(f"--env-file {path}: not UTF-8 text") from None
    if args.stop_timeout is not None and args.stop_timeout < 0:
        raise InvalidArgument("--stop-timeout must not be negative")
    if args.publish:
        raise imgpipe.Unsupported(
            f"-p {args.publish[0]}: publishing ports is not supported: use --net host"
        )
    env += imgpipe.pass_host_env(args.env)
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = (args.entrypoint,) if args.entrypoint else ()
    settings = imgpipe.ContainerSettings(
        args=tuple(args.command),
        entrypoint=entrypoint,
        env=tuple(env),
        user=args.user,
        workdir=args.workdir,
        volumes=tuple(imgpipe.parse_volume(v) for v in args.volume),
        read_only=args.read_only,
        net=args.net,
        terminal=args.tty,
        hostname=args.hostname,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
    )
    observer = None
    if not args.quiet and sys.stderr.isatty():
        # progress only matters when a pull happens; the observer is cheap until then.
        # Its bars are erased once the image is recorded: the container's output follows.
        from .output import make_observer

        observer = make_observer(args, until_recorded=True)
    kw: dict[str, Any] = {
        "settings": settings,
        "name": args.name,
        "remove": args.rm,
        "interactive": args.interactive,
        "snapshotter": args.snapshotter,
        "platform": args.platform,
        "decrypt_keys": tuple(args.decrypt_key),
        "runtime": args.runtime,
        "root": args.root,
        "observer": observer,
        "options": _options_if_given(args),
    }
    if args.stop_timeout is not None:
        kw["stop_timeout"] = args.stop_timeout
    if args.lazy:
        from .lazyreport import lazy_run

        kw["lazy"] = lazy_run(args, observer)
    try:
        if not args.detach:
            code: int = imgpipe.run(args.image, **kw)
            return code
        # `run -d`: the container runs under its monitor; its name is printed below the
        # progress display, once that is closed
        name = imgpipe.run_detached(args.image, **kw)
    except (imgpipe.CommandNotFound, imgpipe.CommandNotExecutable) as e:
        return _not_runnable(e)
    finally:
        if observer is not None:
            from .output import close_observer

            close_observer(observer)
    print(name)
    return 0


def _options_if_given(args: argparse.Namespace) -> imgpipe.TransportOptions | None:
    """Registry settings for the pull `run` may need; None (the library's defaults) when
    neither the command line nor a default registries.toml names any."""
    import imgpipe

    if not flags.connection_given(args) and imgpipe.default_registry_config() is None:
        return None
    return flags.transport_options(args)


def _not_runnable(e: Exception) -> int:
    """The shell's status for a command that could not be run (its one error line)."""
    import imgpipe

    print(f"imgpipe: error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_NOT_FOUND if isinstance(e, imgpipe.CommandNotFound) else EXIT_NOT_EXECUTABLE
