"""``imgpipe estargz ls|cat``: files of eStargz / zstd:chunked images, read by Range."""

from __future__ import annotations

import argparse
import stat
import sys
from typing import TYPE_CHECKING, Any

from . import flags

if TYPE_CHECKING:
    from imgpipe.formats.estargz import Entry

_TYPE_CHARS = {
    "dir": "d",
    "reg": "-",
    "symlink": "l",
    "hardlink": "h",
    "char": "c",
    "block": "b",
    "fifo": "p",
}


def register(sub: Any) -> None:
    p = flags.verb(
        sub,
        "estargz",
        _usage,
        help="list and read files of eStargz / zstd:chunked images by HTTP Range",
        description="Read the table of contents and single files of an image's eStargz or "
        "zstd:chunked layers straight from the registry (or an OCI layout), fetching only "
        "the footers, the TOCs and the chunks of the file read. Every TOC is checked against "
        "its layer annotation and every chunk against its chunkDigest: corruption is exit 8, "
        "never wrong bytes. A registry that ignores Range is reported (exit 11), never "
        "downloaded whole.",
    )
    verbs = p.add_subparsers(dest="estargz_command", metavar="COMMAND", required=True)

    ls = flags.verb(verbs, "ls", ls_cmd)
    ls.add_argument("source", metavar="REF", help="image: REF, docker://REF, oci:DIR[:TAG]")
    ls.add_argument("--layer", type=int, metavar="N", help="only layer N (0 = bottom, -1 = top)")
    flags.platform(ls)
    flags.json_output(ls)
    flags.connection(ls)

    cat = flags.verb(verbs, "cat", cat_cmd)
    cat.add_argument("source", metavar="REF", help="image: REF, docker://REF, oci:DIR[:TAG]")
    cat.add_argument("path", metavar="PATH", help="the file, e.g. /etc/os-release")
    cat.add_argument("--layer", type=int, metavar="N", help="read it from layer N only")
    flags.platform(cat)
    flags.connection(cat)


def _usage(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires a verb
    return 2


def _mode(entry: Entry) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR}.get(entry.type)
    kind = kind or {"block": stat.S_IFBLK, "fifo": stat.S_IFIFO}.get(entry.type, stat.S_IFREG)
    return _TYPE_CHARS[entry.type] + stat.filemode(kind | entry.mode)[1:]


def _line(n: int, entry: Entry) -> str:
    when = entry.mtime.strftime("%Y-%m-%d %H:%M") if entry.mtime else "-"
    name = entry.name or "."
    if entry.type == "dir":
        name += "/"
    elif entry.type == "symlink":
        name += f" -> {entry.link_name}"
    elif entry.type == "hardlink":
        name += f" link to {entry.link_name}"
    owner = f"{entry.uid}/{entry.gid}"
    return f"{n:>3} {_mode(entry)} {owner:>11} {entry.size:>11} {when} {name}"


def _json_entry(n: int, entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": n, "name": entry.name, "type": entry.type}
    if entry.type == "reg":
        out["size"] = entry.size
        out["chunks"] = len(entry.chunks)
    out.update(mode=entry.mode, uid=entry.uid, gid=entry.gid)
    if entry.mtime is not None:
        out["modtime"] = entry.mtime.isoformat().replace("+00:00", "Z")
    if entry.link_name:
        out["linkName"] = entry.link_name
    if entry.digest is not None:
        out["digest"] = str(entry.digest)
    if entry.xattrs:
        out["xattrs"] = sorted(entry.xattrs)
    if entry.implicit:
        out["implicit"] = True
    return out


def _stats(args: argparse.Namespace, fetched: int, requests: int, size: int, what: str) -> None:
    if args.quiet:
        return
    share = f" ({100 * fetched / size:.2f}%)" if size else ""
    print(
        f"imgpipe: fetched {fetched} bytes in {requests} requests of {size}{share} ({what})",
        file=sys.stderr,
    )


def ls_cmd(args: argparse.Namespace) -> int:
    """list the files of an image's eStargz / zstd:chunked layers

    One line per TOC entry: the layer, type and mode, uid/gid, size, modification time,
    name. Only the footers and TOCs are fetched; the bytes fetched go to stderr.
    """
    import imgpipe

    from .output import print_json

    listing = imgpipe.estargz_list(
        args.source, layer=args.layer, platform=args.platform, options=flags.transport_options(args)
    )
    if args.json:
        print_json([_json_entry(layer.index, e) for layer in listing.layers for e in layer.entries])
    else:
        for layer in listing.layers:
            for entry in layer.entries:
                print(_line(layer.index, entry))
    for why in listing.skipped:
        print(f"imgpipe: skipped {why}", file=sys.stderr)
    _stats(args, listing.bytes_fetched, listing.requests, listing.blob_size, "footers and TOCs")
    return 0


def cat_cmd(args: argparse.Namespace) -> int:
    """write one file of an eStargz / zstd:chunked image to stdout

    Looks from the top layer down (whiteouts honoured, a final symlink followed) and
    fetches only that file's chunks, each verified before it is written.
    """
    import imgpipe

    out = sys.stdout.buffer
    result = imgpipe.estargz_cat(
        args.source,
        args.path,
        out,
        layer=args.layer,
        platform=args.platform,
        options=flags.transport_options(args),
    )
    out.flush()
    _stats(
        args,
        result.bytes_fetched,
        result.requests,
        result.blob_size,
        f"{result.size}-byte file from layer {result.layer}",
    )
    return 0
