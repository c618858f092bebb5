"""``imgpipe content ls|get|verify|rm`` and ``imgpipe gc``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgpipe.errors import DigestMismatch

from .exitcodes import exit_code_for


def register(sub: Any) -> None:
    p = sub.add_parser("content", help="work on the content store directly")
    csub = p.add_subparsers(dest="content_command", metavar="COMMAND", required=True)
    c = csub.add_parser("ls", help="list blobs with size and labels")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=content_ls)
    c = csub.add_parser(
        "get",
        help="write a blob to stdout, as stored or (--decode) decoded to its tar stream",
    )
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
    c.add_argument(
        "--decrypt-key",
        metavar="FILE[:PASSWORD]",
        action="append",
        default=[],
        help="an ocicrypt private key (PEM); repeat for several",
    )
    c.set_defaults(func=content_get)
    c = csub.add_parser(
        "verify", help="re-hash every blob; exit 8 (digest mismatch) if any is corrupt"
    )
    c.set_defaults(func=content_verify)
    c = csub.add_parser("rm", help="remove blobs by digest (gc does this safely)")
    c.add_argument("digests", metavar="DIGEST", nargs="+")
    c.set_defaults(func=content_rm)

    p = sub.add_parser("gc", help="remove content no image or live lease holds")
    p.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    p.set_defaults(func=gc)


def content_ls(args: argparse.Namespace) -> int:
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
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.digest import Digest
    from imgpipe.formats.mediatype import MediaType
    from imgpipe.store import Store

    from .main import usage_error

    if (args.media_type or args.decrypt_key) and not args.decode:
        return usage_error("--media-type and --decrypt-key need --decode")
    digest = Digest.parse(args.digest)
    out = sys.stdout.buffer
    with Store(args.root) as store:
        if not args.decode:
            with store.content.open(digest) as f:
                _copy(f, out)
            return 0
        from imgpipe.decode import find_descriptor, open_decoded

        if args.media_type:
            try:  # the stored descriptor carries annotations (ocicrypt's wrapped keys)
                annotations = find_descriptor(store, digest).annotations
            except LookupError:
                annotations = {}
            size = store.content.info(digest).size
            desc = Descriptor(MediaType(args.media_type), digest, size, annotations=annotations)
        else:
            desc = find_descriptor(store, digest)
        keys = []
        if args.decrypt_key:
            from imgpipe.processors.ocicrypt import load_private_key

            keys = [load_private_key(spec) for spec in args.decrypt_key]
        with open_decoded(store.content, desc, keys=keys) as stream:
            _copy(stream, out)
    return 0


def _copy(src: Any, dst: Any) -> None:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
    dst.flush()


def content_verify(args: argparse.Namespace) -> int:
    import imgpipe

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
    import imgpipe

    for d in imgpipe.content_remove(args.digests, root=args.root):
        print(f"removed {d}")
    return 0


def gc(args: argparse.Namespace) -> int:
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
