"""``imgpipe pull`` and ``imgpipe push``: move images between transports and the store."""

from __future__ import annotations

import argparse
from typing import Any

from . import flags

_TRANSPORTS_HELP = (
    "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF], or a registry "
    "reference (docker:// optional), e.g. 127.0.0.1:5000/app:1 or alpine@sha256:..."
)


def register(sub: Any) -> None:
    from .cmd_unpack import add_unpack_flags
    from .lazyreport import add_lazy_flags
    from .output import add_output_flags

    p = flags.verb(
        sub, "pull", pull, f"Import an image, verifying every blob. SOURCE is {_TRANSPORTS_HELP}."
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--name", help="local name (default: the source's tag or image name)")
    flags.platform(p, "os/arch[/variant] to take from an index (default: this host)")
    p.add_argument("--all-platforms", action="store_true", help="take every platform of an index")
    flags.max_concurrent(p, "download")
    g = p.add_argument_group("unpack")
    g.add_argument(
        "--unpack",
        action="store_true",
        help="also unpack the image into snapshots (as `imgpipe unpack`)",
    )
    add_unpack_flags(g, platform=False)
    add_lazy_flags(
        p,
        "fetch only the documents, configs, TOCs and prefetched files of eStargz/zstd:chunked "
        "layers; the rest when read (run --lazy) or in the background. An image that cannot "
        "be pulled lazily is pulled in full, and a line says why",
    )
    flags.connection(p)
    add_output_flags(p)

    p = flags.verb(
        sub, "push", push, f"Write the image NAME to DEST: {_TRANSPORTS_HELP} (not docker-archive)."
    )
    p.add_argument("name", metavar="NAME", help="the stored image to push")
    p.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="where to (default: the registry NAME points at, as docker push NAME)",
    )
    flags.max_concurrent(p, "upload")
    flags.connection(p)
    add_output_flags(p)


def pull(args: argparse.Namespace) -> int:
    """import an image into the store"""
    import imgpipe

    from .main import usage_error
    from .output import close_observer, make_observer, print_result

    if args.platform and args.all_platforms:
        return usage_error("--platform and --all-platforms exclude each other")
    if args.max_concurrent_downloads is not None and args.max_concurrent_downloads < 1:
        return usage_error("--max-concurrent-downloads must be at least 1")
    if not args.unpack and (args.snapshotter or args.decrypt_key):
        return usage_error("--snapshotter and --decrypt-key go with --unpack")
    if args.lazy and (args.unpack or args.all_platforms):
        return usage_error("--lazy excludes --unpack and --all-platforms (it pulls one image)")
    options = flags.transport_options(args, args.max_concurrent_downloads)
    if args.lazy:
        return _pull_lazy(args, options)
    observer = make_observer(args)
    unpacked: dict[str, Any] = {}
    kw: dict[str, Any] = {
        "name": args.name,
        "platform": args.platform,
        "all_platforms": args.all_platforms,
        "root": args.root,
        "observer": observer,
        "options": options,
    }
    try:
        if args.unpack:
            from .cmd_unpack import print_layers, result_fields

            rec, result = imgpipe.pull_unpack(
                args.source, snapshotter=args.snapshotter, decrypt_keys=args.decrypt_key, **kw
            )
            print_layers(args, result)
            fields = result_fields(result)
            unpacked = {"unpacked": {k: v for k, v in fields.items() if k != "image"}}
        else:
            rec = imgpipe.pull(args.source, **kw)
    finally:
        close_observer(observer)
    text = f"{rec.name} {rec.target.digest}"
    if unpacked:
        text += f" unpacked {unpacked['unpacked']['snapshotter']} {unpacked['unpacked']['chainID']}"
    print_result(
        args,
        text,
        name=rec.name,
        digest=str(rec.target.digest),
        mediaType=str(rec.target.media_type),
        size=rec.target.size,
        **unpacked,
    )
    return 0


def _pull_lazy(args: argparse.Namespace, options: Any) -> int:
    import imgpipe

    from .lazyreport import lazy_fields, print_fallback, print_layers
    from .output import close_observer, human_size, make_observer, print_result

    observer = make_observer(args)
    try:
        result = imgpipe.pull_lazy(
            args.source,
            name=args.name,
            platform=args.platform,
            background=args.lazy_background,
            root=args.root,
            observer=observer,
            options=options,
        )
    finally:
        close_observer(observer)
    rec = result.record
    assert rec is not None
    if result.fallback is not None:
        print_fallback(args, rec.name, result.fallback)
    print_layers(args, result.layers)
    text = f"{rec.name} {rec.target.digest}"
    if result.fallback is None:
        share = 100 * result.fetched() / max(result.size(), 1)
        text += (
            f" lazy: fetched {human_size(result.fetched())} of {human_size(result.size())} "
            f"({share:.1f}%)"
        )
        text += ", the rest in the background" if args.lazy_background else ""
    print_result(
        args,
        text,
        name=rec.name,
        digest=str(rec.target.digest),
        mediaType=str(rec.target.media_type),
        size=rec.target.size,
        lazy=lazy_fields(result, background=args.lazy_background),
    )
    return 0


def push(args: argparse.Namespace) -> int:
    """export an image from the store"""
    import imgpipe

    from .main import usage_error
    from .output import close_observer, make_observer, print_result

    if args.max_concurrent_uploads is not None and args.max_concurrent_uploads < 1:
        return usage_error("--max-concurrent-uploads must be at least 1")
    options = flags.transport_options(args, args.max_concurrent_uploads)
    # docker push REF: the image goes where its own name points
    dest = args.dest if args.dest is not None else imgpipe.normalize_name(args.name)
    observer = make_observer(args)
    try:
        desc = imgpipe.push(args.name, dest, root=args.root, observer=observer, options=options)
    finally:
        close_observer(observer)
    print_result(
        args,
        f"{dest} {desc.digest}",
        destination=dest,
        digest=str(desc.digest),
        mediaType=str(desc.media_type),
        size=desc.size,
    )
    return 0
