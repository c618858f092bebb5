"""``imgpipe content ls|get|verify|rm`` and ``imgpipe gc``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import flags


def register(sub: Any) -> None:
    p = sub.add_parser("content", help="work on the content store directly")
    csub = p.add_subparsers(dest="content_command", metavar="COMMAND", required=True)
    flags.json_output(flags.verb(csub, "ls", content_ls))
    c = flags.verb(csub, "get", content_get)
    c.add_argument("digest", metavar="DIGEST")
    c.add_argument(
        "--decode",
        action="store_true",
        help="decrypt and decompress through the processor chain of its media type",
    )
    c.add_argument(
        "--media-type",
        metavar="MT",
        help="the blob's media type (default: from the stored image that refers to it)",
    )
    flags.decrypt_keys(c, help="an ocicrypt private key (PEM); repeat for several")
    flags.verb(csub, "verify", content_verify)
    c = flags.verb(csub, "rm", content_rm)
    c.add_argument("digests", metavar="DIGEST", nargs="+")

    p = flags.verb(sub, "gc", gc)
    p.add_argument("--dry-run", action="store_true", help="report, remove nothing")


def content_ls(args: argparse.Namespace) -> int:
    """list blobs with size and labels"""
    import imgpipe

    from .output import human_size, print_json, print_table

    blobs = imgpipe.content_list(root=args.root)
    if args.json:
        print_json(
            [{"digest": str(i.digest), "size": i.size, "labels": labels} for i, labels in blobs]
        )
        return 0
    rows = [
        (str(i.digest), human_size(i.size), ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        for i, labels in blobs
    ]
    print_table(rows, ("DIGEST", "SIZE", "LABELS"))
    return 0


def content_get(args: argparse.Namespace) -> int:
    """write a blob to stdout, as stored or (--decode) decoded to its tar stream"""
    import imgpipe

    from .main import usage_error

    if (args.media_type or args.decrypt_key) and not args.decode:
        return usage_error("--media-type and --decrypt-key need --decode")
    imgpipe.content_get(
        args.digest,
        sys.stdout.buffer,
        decode=args.decode,
        media_type=args.media_type,
        decrypt_keys=args.decrypt_key,
        root=args.root,
    )
    return 0


def content_verify(args: argparse.Namespace) -> int:
    """re-hash every blob; exit 8 (digest mismatch) if any is corrupt"""
    import imgpipe
    from imgpipe.errors import DigestMismatch

    from .exitcodes import exit_code_for

    problems = imgpipe.content_verify(root=args.root)
    for p in problems:
        print(f"{p.digest}: {p.problem}")
    if problems:
        print(f"imgpipe: error: {len(problems)} corrupt blob(s)", file=sys.stderr)
        return exit_code_for(DigestMismatch("corrupt content"))
    if not args.quiet:
        print("all blobs verified")
    return 0


def content_rm(args: argparse.Namespace) -> int:
    """remove blobs by digest (gc does this safely)"""
    import imgpipe

    for d in imgpipe.content_remove(args.digests, root=args.root):
        print(f"removed {d}")
    return 0


def gc(args: argparse.Namespace) -> int:
    """remove content no image or live lease holds"""
    import imgpipe

    from .output import human_size

    result = imgpipe.gc(dry_run=args.dry_run, root=args.root)
    verb = "would remove" if args.dry_run else "removed"
    for digest, size in result.removed_blobs:
        print(f"{verb} {digest} {human_size(size)}")
    for ref in result.removed_ingests:
        print(f"{verb} ingest {ref}")
    for snapshotter, key in result.removed_snapshots:
        print(f"{verb} snapshot {snapshotter} {key}")
    print(f"{'would free' if args.dry_run else 'freed'} {human_size(result.bytes_freed)}")
    return 0
