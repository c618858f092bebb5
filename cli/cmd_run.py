"""``imgpipe run``, ``ps`` and ``rm``: containers from images, with runc.

``run`` exits with the container's status (128+n when a signal n killed it), so a
script sees what the command did. When the container could not be started its exit
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

if TYPE_CHECKING:
    from imgpipe.transports import TransportOptions

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
    p = sub.add_parser(
        "run",
        help="run a command in a new container of an image (pulled and unpacked if needed)",
        description="Run a command in a new container, as `ctr run` does, with runc.",
    )
    p.add_argument("--rm", action="store_true", help="remove the container and its snapshot after")
    p.add_argument("--name", help="container name (default: random)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set a variable")
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
        choices=("none", "host"),
        default="none",
        help="network: none (default, a namespace with only lo) or host",
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
    p.add_argument(
        "--snapshotter",
        choices=("overlay", "btrfs", "native"),
        help="overlay, btrfs or native (default: overlay if it works)",
    )
    p.add_argument("--runtime", help="runtime binary (default: runc on PATH)")
    p.add_argument("--platform", help="os/arch[/variant] of an index (default: this host)")
    p.add_argument(
        "--decrypt-key", action="append", default=[], metavar="FILE[:PASS]", help="ocicrypt key"
    )
    from .cmd_transfer import connection_flags

    connection_flags(p)  # for the pull `run` does when the image is not stored
    p.add_argument("image", metavar="REF")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")
    p.set_defaults(func=run)

    p = sub.add_parser("ps", help="list containers that were not removed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--runtime", help="runtime binary (default: runc on PATH)")
    p.set_defaults(func=ps)

    p = sub.add_parser("rm", help="remove stopped containers (and their snapshots)")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="kill running containers first")
    p.add_argument("--runtime", help="runtime binary (default: runc on PATH)")
    p.set_defaults(func=rm)


def run(args: argparse.Namespace) -> int:
    from imgpipe.errors import InvalidArgument
    from imgpipe.task import CommandNotExecutable, CommandNotFound, ContainerSettings
    from imgpipe.task import run as run_task
    from imgpipe.task.spec import parse_env_file, parse_volume
    from imgpipe.task.task import DEFAULT_STOP_TIMEOUT

    env: list[str] = []
    for path in args.env_file:
        try:
            with open(path, encoding="utf-8") as f:
                env += parse_env_file(f.read())
        except UnicodeDecodeError:
            raise InvalidArgument(f"--env-file {path}: not UTF-8 text") from None
    if args.stop_timeout is not None and args.stop_timeout < 0:
        raise InvalidArgument("--stop-timeout must not be negative")
    env += args.env
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = (args.entrypoint,) if args.entrypoint else ()
    settings = ContainerSettings(
        args=tuple(args.command),
        entrypoint=entrypoint,
        env=tuple(env),
        user=args.user,
        workdir=args.workdir,
        volumes=tuple(parse_volume(v) for v in args.volume),
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
        # progress only matters when a pull happens; the observer is cheap until then
        from .output import make_observer

        observer = make_observer(args)
    try:
        return run_task(
            args.image,
            settings=settings,
            name=args.name,
            remove=args.rm,
            interactive=args.interactive,
            snapshotter=args.snapshotter,
            platform=args.platform,
            decrypt_keys=tuple(args.decrypt_key),
            runtime=args.runtime,
            stop_timeout=DEFAULT_STOP_TIMEOUT if args.stop_timeout is None else args.stop_timeout,
            root=args.root,
            observer=observer,
            options=_options_if_given(args),
        )
    except (CommandNotFound, CommandNotExecutable) as e:
        print(f"imgpipe: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(e, CommandNotFound) else EXIT_NOT_EXECUTABLE
    finally:
        if observer is not None:
            from .output import close_observer

            close_observer(observer)


def _status(rec: Any, live: dict[str, dict[str, Any]]) -> str:
    st = live.get(rec.id)
    if st is not None and st.get("status") in ("running", "created", "paused"):
        return str(st["status"])
    if rec.exit_code is not None:
        return f"exited ({rec.exit_code})"
    return "stopped" if rec.pid else "created"


def _options_if_given(args: argparse.Namespace) -> TransportOptions | None:
    """Registry settings for the pull `run` may need; None (and no import) when the
    command line names none, to keep the run path lean."""
    if not (args.plain_http or args.tls_ca or args.registry_config or args.auth_file):
        return None
    from .cmd_transfer import transport_options

    return transport_options(args, None)


def ps(args: argparse.Namespace) -> int:
    import time

    from imgpipe.store import default_root
    from imgpipe.task import Runc, list_records
    from imgpipe.task.state import RUNC_DIR

    root = args.root or default_root()
    records = list_records(root)
    from pathlib import Path

    from imgpipe.errors import ImgpipeError

    try:
        live = {c["id"]: c for c in Runc(Path(root) / RUNC_DIR, binary=args.runtime).list()}
    except ImgpipeError:
        live = {}  # no runtime here: list what the records say (nothing is running)
    if args.json:
        from .output import print_json

        print_json(
            [
                {
                    "id": r.id,
                    "image": r.image,
                    "command": r.args,
                    "created": r.created_at,
                    "status": _status(r, live),
                    "pid": live.get(r.id, {}).get("pid", 0),
                    "exitCode": r.exit_code,
                    "snapshotter": r.snapshotter,
                }
                for r in records
            ]
        )
        return 0
    from .output import print_table

    now = time.time()
    print_table(
        [
            (
                r.id,
                r.image,
                " ".join(r.args)[:40],
                f"{int(now - r.created_at)}s ago",
                _status(r, live),
            )
            for r in records
        ],
        ("NAME", "IMAGE", "COMMAND", "CREATED", "STATUS"),
    )
    return 0


def rm(args: argparse.Namespace) -> int:
    import sys

    from imgpipe.errors import ImgpipeError
    from imgpipe.task import remove_container

    from .exitcodes import exit_code_for

    # as `docker rm`: every name is tried; the first failure's code is the exit status
    code = 0
    for name in args.names:
        try:
            remove_container(name, force=args.force, runtime=args.runtime, root=args.root)
        except ImgpipeError as e:
            print(f"imgpipe: error: {' '.join(str(e).split())}", file=sys.stderr)
            code = code or exit_code_for(e)
            continue
        print(name)
    return code
