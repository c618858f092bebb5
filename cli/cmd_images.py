"""``imgpipe images``, ``inspect``, ``tag`` and ``rmi``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from . import flags

if TYPE_CHECKING:
    from imgpipe import ImageDetails, Store


def register(sub: Any) -> None:
    flags.json_output(flags.verb(sub, "images", images, aliases=["ls"]))

    p = flags.verb(sub, "inspect", inspect)
    p.add_argument("name", metavar="NAME")
    flags.json_output(p)

    p = flags.verb(sub, "tag", tag)
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")

    p = flags.verb(sub, "rmi", rmi)
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("--no-prune", action="store_true", help="skip the gc; content stays until one")


def _image_size(store: Store, name: str) -> int | None:
    """Bytes of the image's documents and blobs (all platforms present); None if the
    image cannot be read (a blob removed by hand), so one broken image does not hide
    the others."""
    import imgpipe

    try:
        details = imgpipe.inspect(name, store=store)
    except imgpipe.ImgpipeError:
        return None
    seen: dict[str, int] = {str(details.record.target.digest): details.record.target.size}
    for m in details.manifests:
        seen[str(m.descriptor.digest)] = m.descriptor.size
        for d in (m.manifest.config, *m.manifest.layers):
            seen[str(d.digest)] = d.size
    return sum(seen.values())


def images(args: argparse.Namespace) -> int:
    """list images in the store"""
    import imgpipe

    from .output import human_size, print_json, print_table

    with imgpipe.Store(args.root) as store:
        rows = [(rec, _image_size(store, rec.name)) for rec in imgpipe.images(store=store)]
    if args.json:
        print_json(
            [
                {
                    "name": rec.name,
                    "digest": str(rec.target.digest),
                    "mediaType": str(rec.target.media_type),
                    "size": size,
                }
                for rec, size in rows
            ]
        )
        return 0
    print_table(
        [
            (
                rec.name,
                str(rec.target.digest),
                _type_name(rec.target.media_type),
                human_size(size) if size is not None else "-",
            )
            for rec, size in rows
        ],
        ("NAME", "DIGEST", "TYPE", "SIZE"),
    )
    return 0


def _type_name(media_type: str) -> str:
    from imgpipe.formats.mediatype import MediaType

    mt = MediaType(media_type)
    kind = "index" if mt.is_index() else "manifest" if mt.is_manifest() else "other"
    return f"{'docker' if mt.is_docker() else 'oci'} {kind}"


def _details_json(d: ImageDetails) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": d.record.name,
        "digest": str(d.record.target.digest),
        "mediaType": str(d.record.target.media_type),
        "size": d.record.target.size,
        "index": str(d.index.digest) if d.index else None,
        "manifests": [],
    }
    for m in d.manifests:
        entry: dict[str, Any] = {
            "digest": str(m.descriptor.digest),
            "mediaType": str(m.descriptor.media_type),
            "size": m.descriptor.size,
            "platform": str(m.platform) if m.platform else None,
            "config": m.manifest.config.to_json(),
            "layers": [layer.to_json() for layer in m.manifest.layers],
        }
        if m.config is not None:
            c = m.config.config
            entry["diffIDs"] = [str(x) for x in m.config.diff_ids]
            entry["created"] = m.config.created
            entry["user"] = c.user
            entry["env"] = list(c.env)
            entry["entrypoint"] = list(c.entrypoint) if c.entrypoint is not None else None
            entry["cmd"] = list(c.cmd) if c.cmd is not None else None
            entry["workingDir"] = c.working_dir
            entry["labels"] = dict(c.labels)
        out["manifests"].append(entry)
    return out


def inspect(args: argparse.Namespace) -> int:
    """show an image's index, manifests, config and layers"""
    import json

    import imgpipe

    from .output import human_size, print_json

    d = imgpipe.inspect(args.name, root=args.root)
    if args.json:
        print_json(_details_json(d))
        return 0
    print(f"Name:       {d.record.name}")
    print(f"Digest:     {d.record.target.digest}")
    print(f"MediaType:  {d.record.target.media_type}")
    if d.index is not None:
        print(f"Index:      {len(d.index.manifests)} manifest(s), {len(d.manifests)} in the store")
    for m in d.manifests:
        print(f"Manifest:   {m.descriptor.digest} ({m.platform or 'no platform'})")
        cfg = m.manifest.config
        print(f"  Config:   {cfg.digest} {human_size(cfg.size)}")
        if m.config is not None:
            c = m.config.config
            if c.entrypoint is not None:
                print(f"  Entrypoint: {json.dumps(list(c.entrypoint))}")
            if c.cmd is not None:
                print(f"  Cmd:      {json.dumps(list(c.cmd))}")
            if c.env:
                print(f"  Env:      {json.dumps(list(c.env))}")
            if c.user:
                print(f"  User:     {c.user}")
            if c.working_dir:
                print(f"  WorkDir:  {c.working_dir}")
        print(f"  Layers:   {len(m.manifest.layers)}")
        diff_ids = m.config.diff_ids if m.config is not None else ()
        for i, layer in enumerate(m.manifest.layers):
            print(f"    {layer.digest} {human_size(layer.size):>9} {layer.media_type}")
            if i < len(diff_ids):
                print(f"      diffID {diff_ids[i]}")
    return 0


def tag(args: argparse.Namespace) -> int:
    """give an image another name"""
    import imgpipe

    rec = imgpipe.tag(args.source, args.target, root=args.root)
    print(f"{rec.name} {rec.target.digest}")
    return 0


def rmi(args: argparse.Namespace) -> int:
    """remove images, then garbage-collect (like ctr rmi --sync)"""
    import imgpipe

    from .output import human_size

    with imgpipe.Store(args.root) as store:
        # every name must exist before any is removed: a typo removes nothing
        for name in args.names:
            store.db.get_image(imgpipe.normalize_name(name))
        for name in args.names:
            imgpipe.remove_image(name, prune=False, store=store)
            print(f"removed {imgpipe.normalize_name(name)}")
        if not args.no_prune:
            result = imgpipe.gc(store=store)
            if not args.quiet:
                snaps = len(result.removed_snapshots)
                print(
                    f"freed {human_size(result.bytes_freed)} ({len(result.removed_blobs)} blobs"
                    + (f", {snaps} snapshots)" if snaps else ")")
                )
    return 0
