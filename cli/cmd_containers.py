"""``imgpipe ps``, ``rm``, ``logs``, ``stop`` and ``wait``: the containers ``run`` left,
foreground or detached, as docker's verbs of the same names.

The verbs taking several names try each one, print the name (``wait``: the exit code)
of each that worked and an error line for each that did not; the first failure's exit
code is the exit status, as ``docker rm a nosuch`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import flags


def register(sub: Any) -> None:
    p = flags.verb(sub, "ps", ps)
    p.add_argument(
        "-a", "--all", action="store_true", help="exited containers too (default: running ones)"
    )
    flags.json_output(p)
    flags.runtime(p)

    p = flags.verb(sub, "rm", rm)
    p.add_argument("names", metavar="NAME", nargs="+", help="container names")
    p.add_argument("-f", "--force", action="store_true", help="kill running containers first")
    flags.runtime(p)

    p = flags.verb(sub, "logs", logs)
    p.add_argument("name", metavar="NAME", help="a container run with -d")
    p.add_argument(
        "-f", "--follow", action="store_true", help="go on printing until the container exits"
    )

    p = flags.verb(sub, "stop", stop)
    p.add_argument("names", metavar="NAME", nargs="+", help="container names")
    p.add_argument(
        "-t",
        "--time",
        "--timeout",
        dest="timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL after this long if SIGTERM did not end it "
        "(default: the container's run --stop-timeout, else 10)",
    )
    flags.runtime(p)

    p = flags.verb(sub, "wait", wait)
    p.add_argument("names", metavar="NAME", nargs="+", help="container names")


def ps(args: argparse.Namespace) -> int:
    """list running containers (-a: every container not removed)

    Running containers with their image, command and status; with -a also those that
    exited ("exited (N)": N is the exit status, 128+n for signal n), until `imgpipe rm`.
    """
    import time

    import imgpipe

    containers = imgpipe.list_containers(runtime=args.runtime, root=args.root)
    if not args.all:
        containers = [c for c in containers if c.running]
    if args.json:
        from .output import print_json

        print_json(
            [
                {
                    "id": c.record.id,
                    "image": c.record.image,
                    "command": c.record.args,
                    "created": c.record.created_at,
                    "status": c.status,
                    "pid": c.pid,
                    "exitCode": c.record.exit_code,
                    "snapshotter": c.record.snapshotter,
                    "detached": c.record.detached,
                    "lazyFailure": c.lazy_failure,
                }
                for c in containers
            ]
        )
        return 0
    from .output import print_table

    now = time.time()
    print_table(
        [
            (
                c.record.id,
                c.record.image,
                " ".join(c.record.args)[:40],
                f"{int(now - c.record.created_at)}s ago",
                c.status
                if not c.lazy_failure
                else f"{c.status}, lazy mount failed: {c.lazy_failure} (its reads fail with EIO)",
            )
            for c in containers
        ],
        ("NAME", "IMAGE", "COMMAND", "CREATED", "STATUS"),
    )
    return 0


def _each(names: list[str], action: Callable[[str], object]) -> int:
    """``action`` on every name; prints what it returns, or the error line."""
    import imgpipe

    from .exitcodes import exit_code_for

    code = 0
    for name in names:
        try:
            out = action(name)
        except imgpipe.ImgpipeError as e:
            print(f"imgpipe: error: {' '.join(str(e).split())}", file=sys.stderr)
            code = code or exit_code_for(e)
            continue
        print(out, flush=True)
    return code


def rm(args: argparse.Namespace) -> int:
    """remove stopped containers (and their snapshots)

    Deletes the container's runtime state, unmounts its rootfs, removes its snapshot and
    directory (its log too). A running container is refused unless -f: it is then
    killed, and removed once whoever waits for it (its run or monitor) has finished.
    """
    import imgpipe

    def remove(name: str) -> str:
        imgpipe.remove_container(name, force=args.force, runtime=args.runtime, root=args.root)
        return name

    return _each(args.names, remove)


def logs(args: argparse.Namespace) -> int:
    """print what a detached container wrote (stdout and stderr)

    Its output is kept in a log under the root by its monitor, in the order it was
    written, until `imgpipe rm`; stdout goes to stdout, stderr to stderr. -f follows it
    until the container exits.
    """
    import imgpipe

    def sink(stream: Any) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            stream.buffer.write(data)
            stream.buffer.flush()

        return write

    imgpipe.container_logs(
        args.name,
        stdout=sink(sys.stdout),
        stderr=sink(sys.stderr),
        follow=args.follow,
        root=args.root,
    )
    return 0


def stop(args: argparse.Namespace) -> int:
    """stop running containers: SIGTERM, then SIGKILL after a timeout

    Sends SIGTERM to the container's first process; if it has not exited after the
    timeout (an init that ignores SIGTERM, as a shell or sleep as PID 1 does), every
    process of the container gets SIGKILL. Returns once its exit status is recorded.
    """
    import imgpipe

    if args.timeout is not None and args.timeout < 0:
        raise imgpipe.InvalidArgument("stop -t must not be negative")

    def stop_one(name: str) -> str:
        imgpipe.stop_container(name, timeout=args.timeout, runtime=args.runtime, root=args.root)
        return name

    return _each(args.names, stop_one)


def wait(args: argparse.Namespace) -> int:
    """wait for containers to exit; print each one's exit code

    Blocks until the container has exited and its status is recorded, then prints it
    (128+n if signal n killed it), one line per container, as `docker wait`.
    """
    import imgpipe

    return _each(args.names, lambda name: imgpipe.wait_container(name, root=args.root))
