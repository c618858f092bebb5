"""``imgpipe pull`` and ``imgpipe push``: move images between transports and the store."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="import an image into the store",
        description="Import an image, verifying every blob. SOURCE is oci:DIR[:TAG], "
        "oci-archive:FILE[:TAG] or docker-archive:FILE[:REF].",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--name", help="local name (default: the source's tag or image name)")
    p.add_argument(
        "--platform", help="os/arch[/variant] to take from an index (default: this host)"
    )
    p.add_argument("--all-platforms", action="store_true", help="take every platform of an index")
    p.set_defaults(func=pull)

    p = sub.add_parser(
        "push",
        help="export an image from the store",
        description="Write the image NAME to DEST: oci:DIR[:TAG] or oci-archive:FILE[:TAG].",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(func=push)


def pull(args: argparse.Namespace) -> int:
    import imgpipe

    from .output import LineProgress

    if args.platform and args.all_platforms:
        from .main import usage_error

        return usage_error("--platform and --all-platforms exclude each other")
    rec = imgpipe.pull(
        args.source,
        name=args.name,
        platform=args.platform,
        all_platforms=args.all_platforms,
        root=args.root,
        observer=None if args.quiet else LineProgress(),
    )
    print(f"{rec.name} {rec.target.digest}")
    return 0


def push(args: argparse.Namespace) -> int:
    import imgpipe

    from .output import LineProgress

    desc = imgpipe.push(
        args.name, args.dest, root=args.root, observer=None if args.quiet else LineProgress()
    )
    print(f"{args.dest} {desc.digest}")
    return 0
