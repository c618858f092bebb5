"""``imgpipe unpack``, ``mount``, ``umount`` and ``snapshots ls|rm``: images as root
filesystems."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from . import flags
from .lazyreport import add_lazy_flags

if TYPE_CHECKING:
    from imgpipe import UnpackResult


def add_unpack_flags(p: Any, *, platform: bool = True) -> None:
    """``--snapshotter`` and ``--decrypt-key`` (and ``--platform``), shared with ``pull``."""
    flags.snapshotter(p)
    if platform:
        flags.platform(p)
    flags.decrypt_keys(p)


def register(sub: Any) -> None:
    p = flags.verb(sub, "unpack", unpack)
    p.add_argument("name", metavar="REF")
    add_unpack_flags(p)
    p.add_argument("--export", metavar="DIR", help="write a flattened copy into DIR instead")
    flags.json_output(p, "machine-readable result")

    p = flags.verb(sub, "mount", mount)
    p.add_argument("name", metavar="REF")
    p.add_argument("target", metavar="DIR")
    p.add_argument("--read-only", action="store_true", help="mount a read-only view")
    add_lazy_flags(
        p,
        "REF is an image source (a registry reference, docker://, oci:DIR): mount its "
        "eStargz/zstd:chunked layers through FUSE at once and fetch file contents as they "
        "are read; an image that cannot be lazy is pulled in full, and a line says why",
    )
    add_unpack_flags(p)
    flags.connection(p)
    flags.json_output(p, "machine-readable result (with the snapshot key)")

    p = flags.verb(sub, "umount", umount)
    p.add_argument("target", metavar="DIR")

    p = sub.add_parser("snapshots", help="list or remove snapshots")
    ssub = p.add_subparsers(dest="snapshots_command", metavar="COMMAND", required=True)
    s = flags.verb(ssub, "ls", snapshots_ls)
    flags.snapshotter(s, "only this snapshotter's")
    flags.json_output(s)
    s = flags.verb(ssub, "rm", snapshots_rm)
    s.add_argument("keys", metavar="KEY", nargs="+")
    flags.snapshotter(s, "where KEY is, if ambiguous")


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


def _image_args(args: argparse.Namespace) -> dict[str, Any]:
    """What unpack and mount pass on about the image: platform, keys, state root."""
    return {"platform": args.platform, "decrypt_keys": args.decrypt_key, "root": args.root}


def unpack(args: argparse.Namespace) -> int:
    """unpack an image's layers into snapshots

    Apply each layer of the stored image REF into a snapshot keyed by its chain ID (reusing
    those already there), or with --export write the flattened root filesystem into a plain
    directory (no root needed).
    """
    import imgpipe

    from .main import usage_error
    from .output import print_result

    if args.export:
        if args.snapshotter:
            return usage_error("--export and --snapshotter exclude each other")
        result = imgpipe.export_rootfs(args.name, args.export, **_image_args(args))
        text = f"{result.image} exported to {args.export}"
    else:
        result = imgpipe.unpack(args.name, snapshotter=args.snapshotter, **_image_args(args))
        reused = sum(1 for layer in result.layers if layer.reused)
        text = (
            f"{result.image} {result.snapshotter} {result.chain_id} "
            f"({len(result.layers)} layers, {reused} reused)"
        )
    print_layers(args, result)
    print_result(args, text, **result_fields(result))
    return 0


def _mount_lazily(args: argparse.Namespace) -> str | None:
    """``mount --lazy``: the stored name to mount in full if the image cannot be lazy
    (after pulling it, and saying why), else None (mounted)."""
    import sys

    import imgpipe

    from .output import print_result

    options = flags.transport_options(args)
    result = imgpipe.mount_lazy(
        args.name,
        args.target,
        read_only=args.read_only,
        background=args.lazy_background,
        platform=args.platform,
        options=options,
        root=args.root,
    )
    if result.fallback is None:
        layers = [
            {"digest": ls.digest, "state": ls.state, "fetched": ls.fetched, "size": ls.size}
            for ls in result.layers
        ]
        if not args.quiet and not args.json:
            for n, ls in enumerate(result.layers):
                print(f"layer {n} {ls.digest}: {ls.state} ({ls.size} bytes)", file=sys.stderr)
        text = f"mounted {args.name} lazily at {args.target}"
        print_result(args, text, image=args.name, target=args.target, lazy=True, layers=layers)
        return None
    print(
        f"imgpipe: {args.name} is not mounted lazily: {result.fallback} ({result.detail}); "
        "pulling it in full",
        file=sys.stderr,
    )
    record = imgpipe.pull(args.name, platform=args.platform, options=options, root=args.root)
    return str(record.name)


def mount(args: argparse.Namespace) -> int:
    """mount an image's root filesystem on a directory

    Unpack REF if needed and mount its root filesystem on DIR: a read-write snapshot
    (changes are dropped by umount) or --read-only a view. With --lazy, REF is an image
    source whose eStargz/zstd:chunked layers are served through FUSE as they are read.
    """
    import imgpipe

    from .output import print_result

    if args.lazy:
        name = _mount_lazily(args)
        if name is None:
            return 0
        args.name = name
    key = imgpipe.mount(
        args.name,
        args.target,
        read_only=args.read_only,
        snapshotter=args.snapshotter,
        **_image_args(args),
    )
    # the key is for scripts (--json); people want to know what went where
    print_result(
        args, f"mounted {args.name} at {args.target}", image=args.name, target=args.target, key=key
    )
    return 0


def umount(args: argparse.Namespace) -> int:
    """unmount what `imgpipe mount` mounted; drop its snapshot (or stop the lazy mount's
    FUSE server)"""
    import imgpipe

    imgpipe.umount(args.target, root=args.root)
    return 0


def snapshots_ls(args: argparse.Namespace) -> int:
    """list snapshots"""
    import imgpipe

    from .output import print_json, print_table

    rows = imgpipe.snapshots_list(snapshotter=args.snapshotter, root=args.root)
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
    """remove snapshots by key (gc removes unused ones safely)"""
    import imgpipe

    for sn, key in imgpipe.snapshot_remove(args.keys, snapshotter=args.snapshotter, root=args.root):
        print(f"removed {sn} {key}")
    return 0
