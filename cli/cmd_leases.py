"""``imgpipe leases ls|rm``: the leases that keep what failed or interrupted runs fetched."""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import flags


def register(sub: Any) -> None:
    p = sub.add_parser(
        "leases",
        help="list or drop the leases that keep interrupted downloads",
        description="A pull, convert or unpack holds what it fetches under a lease. When "
        "it succeeds the lease goes; when it fails or is interrupted the lease stays until "
        "it expires ($IMGPIPE_LEASE_EXPIRY or [gc] lease-expiry in config.toml, default "
        "24h), so the next attempt fetches only what is missing. `gc` removes expired "
        "leases and what only they held.",
    )
    lsub = p.add_subparsers(dest="leases_command", metavar="COMMAND", required=True)
    flags.json_output(flags.verb(lsub, "ls", leases_ls))
    c = flags.verb(lsub, "rm", leases_rm)
    c.add_argument("ids", metavar="ID", nargs="+")
    c.add_argument(
        "--no-prune",
        action="store_true",
        help="only delete the leases; what they held goes at a later gc",
    )


def ago(when: float, now: float | None = None) -> str:
    """``when`` (POSIX seconds) as "3m ago" or "in 23h"."""
    delta = (time.time() if now is None else now) - when
    span = abs(delta)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= seconds:
            text = f"{int(span // seconds)}{unit}"
            break
    else:
        text = f"{int(span)}s"
    return f"{text} ago" if delta >= 0 else f"in {text}"


def leases_ls(args: argparse.Namespace) -> int:
    """list leases: id, when they expire, what made them, what they hold"""
    import imgpipe

    from .output import print_json, print_table

    found = imgpipe.leases(root=args.root)
    now = time.time()
    if args.json:
        print_json(
            [
                {
                    "id": d.record.id,
                    "createdAt": d.record.created_at,
                    "expiresAt": d.record.expires_at,
                    "expired": d.record.expires_at is not None and now > d.record.expires_at,
                    "labels": dict(d.record.labels),
                    "resources": [{"kind": k, "key": v} for k, v in d.resources],
                }
                for d in found
            ]
        )
        return 0
    rows = []
    for d in found:
        rec = d.record
        if rec.expires_at is None:
            expires = "never"
        elif now > rec.expires_at:
            expires = f"expired {ago(rec.expires_at, now)}"
        else:
            expires = ago(rec.expires_at, now)
        holds = ", ".join(
            f"{n} {kind}"
            for kind in ("content", "ingest", "snapshot", "image")
            if (n := d.count(kind))
        )
        subject = rec.labels.get("imgpipe.subject", "")
        rows.append((rec.id, ago(rec.created_at, now), expires, holds or "nothing", subject))
    print_table(rows, ("ID", "CREATED", "EXPIRES", "HOLDS", "FOR"))
    return 0


def leases_rm(args: argparse.Namespace) -> int:
    """delete leases, then collect what only they held (partial downloads included)"""
    import imgpipe

    from .cmd_content import print_freed

    result = imgpipe.lease_remove(args.ids, prune=not args.no_prune, root=args.root)
    for lease_id in args.ids:
        print(f"removed lease {lease_id}")
    if result is not None:
        print_freed(result)
    return 0
