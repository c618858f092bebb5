"""``imgpipe unpack``, ``mount``, ``umount`` and ``snapshots ls|rm``: images as root
filesystems."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgpipe.unpacking import UnpackResult

_SNAPSHOTTERS = ("overlay", "btrfs", "native")
_SNAPSHOTTER_HELP = "overlay, btrfs or native (default: overlay where it works, else native)"


def add_unpack_flags(p: Any, *, platform: bool = True) -> None:
    """``--snapshotter`` and ``--decrypt-key`` (and ``--platform``), shared with ``pull``.

    ``p`` is a parser or an argument group (argparse has no public type for both)."""
    p.add_argument("--snapshotter", choices=_SNAPSHOTTERS, help=_SNAPSHOTTER_HELP)
    if platform:
        p.add_argument("--platform", help="os/arch[/variant] of a multi-platform image")
    p.add_argument(
        "--decrypt-key",
        action="append",
        default=[],
        metavar="FILE[:PASS]",
        help="private key (PEM/DER) for encrypted layers; PASS is pass:TEXT, env:VAR, "
        "file:PATH or the password itself; repeatable",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "unpack",
        help="unpack an image's layers into snapshots",
        description="Apply each layer of the stored image REF into a snapshot keyed by "
        "its chain ID (reusing those already there), or with --export write the "
        "flattened root filesystem into a plain directory (no root needed).",
    )
    p.add_argument("name", metavar="REF")
    add_unpack_flags(p)
    p.add_argument("--export", metavar="DIR", help="write a flattened copy into DIR instead")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=unpack)

    p = sub.add_parser(
        "mount",
        help="mount an image's root filesystem on a directory",
        description="Unpack REF if needed and mount its root filesystem on DIR: a "
        "read-write snapshot (changes are dropped by umount) or --read-only a view.",
    )
    p.add_argument("name", metavar="REF")
    p.add_argument("target", metavar="DIR")
    p.add_argument("--read-only", action="store_true", help="mount a read-only view")
    add_unpack_flags(p)
    p.set_defaults(func=mount)

    p = sub.add_parser("umount", help="unmount what `imgpipe mount` mounted; drop its snapshot")
    p.add_argument("target", metavar="DIR")
    p.set_defaults(func=umount)

    p = sub.add_parser("snapshots", help="list or remove snapshots")
    ssub = p.add_subparsers(dest="snapshots_command", metavar="COMMAND", required=True)
    s = ssub.add_parser("ls", help="list snapshots")
    s.add_argument("--snapshotter", choices=_SNAPSHOTTERS, help="only this snapshotter's")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=snapshots_ls)
    s = ssub.add_parser("rm", help="remove snapshots by key (gc removes unused ones safely)")
    s.add_argument("keys", metavar="KEY", nargs="+")
    s.add_argument("--snapshotter", choices=_SNAPSHOTTERS, help="where KEY is, if ambiguous")
    s.set_defaults(func=snapshots_rm)


def print_layers(args: argparse.Namespace, result: UnpackResult) -> None:
    """One line per layer on stderr (not with -q or --json)."""
    import sys

    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return
    for layer in result.layers:
        state = "reused" if layer.reused else f"unpacked in {layer.seconds:.2f}s"
        print(f"{layer.digest.short()}  {layer.chain_id}  {state}", file=sys.stderr)


def result_fields(result: UnpackResult) -> dict[str, Any]:
    """The JSON result of an unpack."""
    return {
        "image": result.image,
        "snapshotter": result.snapshotter,
        "chainID": str(result.chain_id),
        "layers": [
            {
                "digest": str(layer.digest),
                "diffID": str(layer.diff_id),
                "chainID": str(layer.chain_id),
                "reused": layer.reused,
                "seconds": round(layer.seconds, 6),
            }
            for layer in result.layers
        ],
    }


def unpack(args: argparse.Namespace) -> int:
    import imgpipe.unpacking as lib

    from .main import usage_error
    from .output import print_result

    if args.export:
        if args.snapshotter:
            return usage_error("--export and --snapshotter exclude each other")
        result = lib.export_rootfs(
            args.name,
            args.export,
            platform=args.platform,
            decrypt_keys=args.decrypt_key,
            root=args.root,
        )
        text = f"{result.image} exported to {args.export}"
    else:
        result = lib.unpack(
            args.name,
            snapshotter=args.snapshotter,
            platform=args.platform,
            decrypt_keys=args.decrypt_key,
            root=args.root,
        )
        reused = sum(1 for layer in result.layers if layer.reused)
        text = (
            f"{result.image} {result.snapshotter} {result.chain_id} "
            f"({len(result.layers)} layers, {reused} reused)"
        )
    print_layers(args, result)
    print_result(args, text, **result_fields(result))
    return 0


def mount(args: argparse.Namespace) -> int:
    import imgpipe.unpacking as lib

    key = lib.mount(
        args.name,
        args.target,
        read_only=args.read_only,
        snapshotter=args.snapshotter,
        platform=args.platform,
        decrypt_keys=args.decrypt_key,
        root=args.root,
    )
    print(key)
    return 0


def umount(args: argparse.Namespace) -> int:
    import imgpipe.unpacking as lib

    lib.umount(args.target, root=args.root)
    return 0


def snapshots_ls(args: argparse.Namespace) -> int:
    import imgpipe.unpacking as lib

    from .output import print_json, print_table

    rows = lib.snapshots_list(snapshotter=args.snapshotter, root=args.root)
    if not rows and not args.json:
        print("SNAPSHOTTER  KEY  KIND  PARENT")
        return 0
    if args.json:
        print_json(
            [
                {
                    "snapshotter": sn,
                    "key": info.key,
                    "kind": info.kind.value,
                    "parent": info.parent,
                    "labels": dict(info.labels),
                    "created": info.created_at,
                }
                for sn, info in rows
            ]
        )
        return 0
    print_table(
        [(sn, info.key, info.kind.value, info.parent or "-") for sn, info in rows],
        ("SNAPSHOTTER", "KEY", "KIND", "PARENT"),
    )
    return 0


def snapshots_rm(args: argparse.Namespace) -> int:
    import imgpipe.unpacking as lib

    for sn, key in lib.snapshot_remove(args.keys, snapshotter=args.snapshotter, root=args.root):
        print(f"removed {sn} {key}")
    return 0
