"""``imgpipe content ls|get|verify|rm`` and ``imgpipe gc``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import flags


def register(sub: Any) -> None:
    p = sub.add_parser("content", help="work on the content store directly")
    csub = p.add_subparsers(dest="content_command", metavar="COMMAND", required=True)
    c = flags.verb(csub, "ls", content_ls)
    flags.json_output(c)
    c.add_argument(
        "--ingests",
        action="store_true",
        help="list partial downloads (ingests) instead of blobs: bytes so far, the lease "
        "holding each, whether a writer has it open",
    )
    c.add_argument(
        "--lazy",
        action="store_true",
        help="list the lazy layer caches instead of blobs (pull/run --lazy): bytes on disk, "
        "whether a process holds it; gc removes those of layers no image holds",
    )
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
    """list blobs with size and labels (--ingests: partial downloads)"""
    import imgpipe

    from .output import human_size, print_json, print_table

    if args.ingests and args.lazy:
        from .main import usage_error

        return usage_error("--ingests and --lazy exclude each other")
    if args.ingests:
        return _ingests_ls(args)
    if args.lazy:
        return _caches_ls(args)
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


def _caches_ls(args: argparse.Namespace) -> int:
    import imgpipe

    from .output import human_size, print_json, print_table

    caches = imgpipe.content_caches(root=args.root)
    if args.json:
        print_json(
            [{"digest": str(c.digest), "diskBytes": c.size, "inUse": c.locked} for c in caches]
        )
        return 0
    rows = [(str(c.digest), human_size(c.size), "in use" if c.locked else "") for c in caches]
    print_table(rows, ("LAYER", "ON DISK", "STATE"))
    return 0


def _ingests_ls(args: argparse.Namespace) -> int:
    import imgpipe

    from .cmd_leases import ago
    from .output import human_size, print_json, print_table

    ingests = imgpipe.content_ingests(root=args.root)
    if args.json:
        print_json(
            [
                {
                    "ref": i.status.ref,
                    "expected": str(i.status.expected) if i.status.expected else None,
                    "offset": i.status.offset,
                    "total": i.status.total,
                    "startedAt": i.status.started_at,
                    "updatedAt": i.status.updated_at,
                    "locked": i.status.locked,
                    "leases": list(i.leases),
                }
                for i in ingests
            ]
        )
        return 0
    rows = []
    for i in ingests:
        st = i.status
        total = f"/{human_size(st.total)}" if st.total is not None else ""
        state = "writing" if st.locked else ("leased " + ",".join(i.leases) if i.leases else "")
        rows.append((st.ref, f"{human_size(st.offset)}{total}", ago(st.updated_at), state))
    print_table(rows, ("REF", "SIZE", "UPDATED", "STATE"))
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
    """remove content no image or live lease holds

    Expired leases go first, then every blob, snapshot and partial download (ingest)
    that no image and no live lease holds; an unleased ingest also needs to be older
    than the lease expiry ($IMGPIPE_LEASE_EXPIRY or [gc] lease-expiry, 24h)."""
    import imgpipe

    from .output import human_size

    result = imgpipe.gc(dry_run=args.dry_run, root=args.root)
    print_freed(result, dry_run=args.dry_run)
    # what a user freeing space wants to know next: what gc left because a lease holds it
    held = [
        i.status
        for i in imgpipe.content_ingests(root=args.root)
        if i.leases and not i.status.locked and i.status.ref not in result.removed_ingests
    ]
    if held and not args.quiet:
        size = human_size(sum(st.offset for st in held))
        print(
            f"kept {len(held)} partial download(s) ({size}) that leases of failed or "
            "interrupted runs hold: `imgpipe leases ls` shows them, `imgpipe leases rm ID` "
            "frees them now"
        )
    return 0


def print_freed(result: Any, *, dry_run: bool = False) -> None:
    """What a collection removed, one line each, then the total (``gc``, ``leases rm``)."""
    from .output import human_size

    verb = "would remove" if dry_run else "removed"
    for lease in result.removed_leases:
        print(f"{verb} expired lease {lease}")
    for digest, size in result.removed_blobs:
        print(f"{verb} {digest} {human_size(size)}")
    sizes = result.ingest_sizes or (0,) * len(result.removed_ingests)
    for ref, size in zip(result.removed_ingests, sizes, strict=True):
        print(f"{verb} ingest {ref} {human_size(size)}")
    for snapshotter, key in result.removed_snapshots:
        print(f"{verb} snapshot {snapshotter} {key}")
    caches = getattr(result, "removed_caches", ())
    for digest, size in caches:
        print(f"{verb} lazy cache {digest} {human_size(size)}")
    counts = (
        f"{len(result.removed_blobs)} blob(s), {len(result.removed_ingests)} ingest(s), "
        f"{len(result.removed_leases)} lease(s)"
    )
    if caches:
        counts += f", {len(caches)} lazy cache(s)"
    print(f"{'would free' if dry_run else 'freed'} {human_size(result.bytes_freed)} ({counts})")
