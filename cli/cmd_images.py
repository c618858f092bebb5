"""``imgpipe images``, ``inspect``, ``tag`` and ``rmi``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from . import flags

if TYPE_CHECKING:
    from imgpipe import ImageDetails, SourceDetails, Store
    from imgpipe.formats.descriptor import Descriptor


_INSPECT_NAME_HELP = (
    "a stored image's name, digest or unique ID prefix; or docker://REF, oci:DIR[:TAG], "
    "oci-archive:FILE[:TAG], docker-archive:FILE to read it there without storing anything"
)
#: The transport prefixes that make inspect read an image where it lives (as skopeo
#: inspect does); a bare name is the store's, as for docker inspect.
_TRANSPORT_PREFIXES = ("docker://", "oci:", "oci-archive:", "docker-archive:")


def register(sub: Any) -> None:
    flags.json_output(flags.verb(sub, "images", images, aliases=["ls"]))

    p = flags.verb(sub, "inspect", inspect)
    p.add_argument("name", metavar="NAME", help=_INSPECT_NAME_HELP)
    p.add_argument(
        "--raw",
        action="store_true",
        help="print the root document (index or manifest) exactly as stored or served",
    )
    p.add_argument(
        "--config",
        action="store_true",
        help="print the image config (indented; with --raw its exact bytes)",
    )
    flags.platform(p, "with --config: whose config, of an index (default: this host)")
    flags.json_output(p)
    flags.connection(p)

    p = flags.verb(sub, "tag", tag)
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")

    p = flags.verb(sub, "rmi", rmi)
    p.add_argument("names", metavar="NAME", nargs="+", help="image name, digest or ID prefix")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="a digest or ID of an image with several names removes every name",
    )
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
    if args.quiet:
        # docker's `images -q`: the IDs only (the digest's first 12 hex digits, which
        # inspect and rmi take), one per name, for `imgpipe rmi $(imgpipe images -q)`
        for rec, _ in rows:
            print(rec.target.digest.short())
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


def _details_json(name: str, target: Descriptor, d: ImageDetails | SourceDetails) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "digest": str(target.digest),
        "mediaType": str(target.media_type),
        "size": target.size,
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
    """show an image's index, manifests, config and layers

    NAME is an image in the store (by name, digest or ID prefix), or an image where it
    lives (docker://, oci:, oci-archive:, docker-archive:), read as skopeo inspect does:
    documents and configs only, verified, nothing stored. --raw prints the root document
    as it is; --config the config of the platform chosen (--platform, default this host).
    """
    import sys

    import imgpipe

    from .main import usage_error
    from .output import print_json

    remote = args.name.startswith(_TRANSPORT_PREFIXES)
    if not remote and flags.connection_given(args):
        return usage_error("the connection flags go with docker://REF")
    if args.platform and not args.config:
        return usage_error("--platform goes with --config")
    if args.json and (args.raw or args.config):
        return usage_error("--json prints the whole structure; --raw and --config print documents")
    details: imgpipe.ImageDetails | imgpipe.SourceDetails
    if remote:
        details = imgpipe.inspect_source(args.name, options=flags.transport_options(args))
        name, target, raw = details.source, details.target, details.raw
    else:
        details = imgpipe.inspect(args.name, root=args.root)
        name, target = details.record.name, details.record.target
        raw = details.index.raw if details.index is not None else details.manifests[0].manifest.raw
    if args.config:
        chosen = details.manifest_for(args.platform)
        config = chosen.config
        if config is None:
            # an artifact's config is no image config; a stored one may also be missing
            mt = chosen.manifest.config.media_type
            where = "" if remote else " (or it is not in the store)"
            raise imgpipe.NotFound(f"{name}: no image config to show: its config is {mt}{where}")
        raw = (
            config.raw
            if args.raw
            else (json.dumps(json.loads(config.raw), indent=2) + "\n").encode()
        )
    if args.raw or args.config:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return 0
    if args.json:
        print_json(_details_json(name, target, details))
        return 0
    _print_details(name, target, details, remote=remote)
    return 0


def _print_details(
    name: str, target: Descriptor, d: ImageDetails | SourceDetails, *, remote: bool
) -> None:
    from .output import human_size

    print(f"Name:       {name}")
    print(f"Digest:     {target.digest}")
    print(f"MediaType:  {target.media_type}")
    if d.index is not None:
        # a source's index lists what is there; a stored one may hold some platforms only
        held = "" if remote else f", {len(d.manifests)} in the store"
        print(f"Index:      {len(d.index.manifests)} manifest(s){held}")
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


def tag(args: argparse.Namespace) -> int:
    """give an image another name"""
    import imgpipe

    rec = imgpipe.tag(args.source, args.target, root=args.root)
    print(f"{rec.name} {rec.target.digest}")
    return 0


def rmi(args: argparse.Namespace) -> int:
    """remove images, then garbage-collect (like ctr rmi --sync)

    Each NAME is a name, a digest or a unique ID prefix. Those found are removed even if
    others are not (each of those is reported; the exit code is the first one's).
    """
    import sys

    import imgpipe

    from .exitcodes import EXIT_OK, exit_code_for
    from .output import human_size

    result = imgpipe.remove_images(
        args.names, force=args.force, prune=not args.no_prune, root=args.root
    )
    for name in result.removed:
        print(f"removed {name}")
    for _text, error in result.failed:
        print(f"imgpipe: error: {' '.join(str(error).split())}", file=sys.stderr)
    if result.collected is not None and not args.quiet:
        freed = result.collected
        snaps = len(freed.removed_snapshots)
        print(
            f"freed {human_size(freed.bytes_freed)} ({len(freed.removed_blobs)} blobs"
            + (f", {snaps} snapshots)" if snaps else ")")
        )
    return exit_code_for(result.failed[0][1]) if result.failed else EXIT_OK
