"""``imgpipe convert``, ``imgpipe encrypt`` and ``imgpipe decrypt``: one conversion, three
spellings (the short forms are nerdctl's ``image encrypt|decrypt``)."""

from __future__ import annotations

import argparse
from typing import Any

from . import flags

_LOCATIONS = (
    "SRC and DST are docker://REF, oci:DIR[:TAG], oci-archive:FILE[:TAG] "
    "(docker-archive:FILE as SRC), local:NAME for the store, or a bare name: a bare SRC is "
    "the local image if the store has one, else the registry; a bare DST is a registry "
    "reference when it starts with a host (127.0.0.1:5000/app:zstd), else a local name."
)


_NO_SEEKABLE: dict[str, Any] = {
    "seekable": None,
    "estargz_chunk_size": None,
    "estargz_level": None,
    "estargz_record_in": None,
}


def _record_file(path: str) -> list[str]:
    """The paths of a record file: one a line, or JSON lines with a "path" (ctr-remote
    optimize --record-out); first occurrence kept, in order."""
    import json

    from imgpipe.errors import InvalidArgument, NotFound

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise NotFound(f"--estargz-record-in {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"--estargz-record-in {path}: {e}") from None
    paths: dict[str, None] = {}
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                text = json.loads(text)["path"]
            except (ValueError, KeyError, TypeError):
                raise InvalidArgument(
                    f'--estargz-record-in {path}:{n}: a JSON line without a "path"'
                ) from None
        paths.setdefault(str(text), None)
    return list(paths)


def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want layer indexes such as 0,1,-1 (negative counts from the top)"
        ) from None


def _common(p: argparse.ArgumentParser) -> None:
    """Flags every spelling has: platforms, jobs, report, connection, output."""
    from .output import add_output_flags

    p.add_argument("source", metavar="SRC", nargs="?")
    p.add_argument("dest", metavar="DST", nargs="?")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="keep only this platform of an index (repeatable; default: all present)",
    )
    p.add_argument(
        "--all-platforms",
        action="store_true",
        help="keep every platform of an index (the default; excludes --platform)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        default=None,
        help="layers converted at once (default: 3)",
    )
    p.add_argument(
        "--report", metavar="FILE", help="write a JSON report of every layer to FILE (CI)"
    )
    flags.connection(p)
    add_output_flags(p)


def _compression(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--zstd", dest="compression", action="store_const", const="zstd", help="zstd layers"
    )
    g.add_argument(
        "--gzip", dest="compression", action="store_const", const="gzip", help="gzip layers"
    )
    g.add_argument(
        "--uncompress",
        dest="compression",
        action="store_const",
        const="none",
        help="uncompressed layers",
    )
    g.add_argument(
        "--estargz",
        dest="seekable",
        action="store_const",
        const="estargz",
        help="eStargz layers (gzip, seekable by file: lazy pulling; implies --oci)",
    )
    g.add_argument(
        "--zstdchunked",
        dest="seekable",
        action="store_const",
        const="zstdchunked",
        help="zstd:chunked layers (partial pulls by podman/CRI-O; implies --oci)",
    )
    p.add_argument(
        "--level",
        type=int,
        metavar="N",
        help="compression level (gzip 0-9, default 6; zstd up to 22, default 3)",
    )
    p.add_argument(
        "--zstd-threads",
        type=int,
        metavar="N",
        default=None,
        help="zstd worker threads per layer (default: one per CPU, up to 4; the bytes are "
        "the same for any N >= 1; 0: single-threaded, other bytes)",
    )
    p.add_argument(
        "--oci",
        action="store_true",
        help="Docker media types become OCI (manifest, config and layers)",
    )
    p.add_argument(
        "--estargz-chunk-size",
        type=int,
        metavar="BYTES",
        help="chunk size of --estargz / --zstdchunked layers (default 4 MiB; 0 = default)",
    )
    p.add_argument(
        "--estargz-level",
        type=int,
        metavar="N",
        help="gzip level of --estargz layers, 0-9 (default 9, as ctr-remote)",
    )
    p.add_argument(
        "--estargz-record-in",
        metavar="FILE",
        help="put these files first in --estargz layers, prefetched by lazy pullers: one "
        "path a line, or ctr-remote optimize's --record-out JSON lines",
    )


def register(sub: Any) -> None:
    p = flags.verb(sub, "convert", convert, _LOCATIONS)
    _compression(p)
    p.add_argument(
        "--encrypt-recipient",
        action="append",
        default=[],
        metavar="jwe:PUB.pem",
        help="encrypt layers for this public key (repeatable)",
    )
    p.add_argument(
        "--encrypt-layers",
        type=_layer_list,
        action="append",
        metavar="I[,J...]",
        help="encrypt only these layers (0 = base; negative counts from the top; default all)",
    )
    flags.decrypt_keys(p, help="private key to decrypt encrypted layers with (repeatable)")
    _common(p)
    from .cmd_sync import run_flags

    p.add_argument("--from-list", metavar="FILE", help="convert every image a plan names")
    run_flags(p, report=False)

    p = flags.verb(
        sub,
        "encrypt",
        convert,
        help="encrypt an image's layers (short for convert --encrypt-recipient)",
        description="Encrypt the layers of SRC for the recipients into DST (ocicrypt, as "
        "nerdctl image encrypt; only layers are encrypted, not the config). " + _LOCATIONS,
    )
    p.add_argument(
        "--recipient",
        dest="encrypt_recipient",
        action="append",
        required=True,
        metavar="jwe:PUB.pem",
        help="public key to encrypt for (repeatable)",
    )
    p.add_argument(
        "--layers",
        dest="encrypt_layers",
        type=_layer_list,
        action="append",
        metavar="I[,J...]",
        help="encrypt only these layers (default all)",
    )
    flags.decrypt_keys(
        p, "--key", help="key for layers that are already encrypted (they are re-encrypted)"
    )
    _common(p)
    p.set_defaults(compression=None, level=None, zstd_threads=None, oci=False, **_NO_SEEKABLE)

    p = flags.verb(
        sub,
        "decrypt",
        convert,
        help="decrypt an image's layers (short for convert --decrypt-key)",
        description="Decrypt the encrypted layers of SRC into DST. " + _LOCATIONS,
    )
    flags.decrypt_keys(p, "--key", help="private key (repeatable)", required=True)
    _common(p)
    p.set_defaults(
        compression=None,
        level=None,
        zstd_threads=None,
        oci=False,
        encrypt_recipient=[],
        encrypt_layers=None,
        **_NO_SEEKABLE,
    )


def convert(args: argparse.Namespace) -> int:
    """recompress, re-type, encrypt or decrypt an image

    Convert the image SRC into DST: layers are recompressed, encrypted or decrypted as asked
    (layers already in the target form are copied byte for byte), manifests and the index
    rewritten, the config kept. Registry to registry streams layer by layer and needs no
    local store. --estargz and --zstdchunked rewrite every layer in a seekable format
    (OCI media types, TOC annotations; eStargz changes the tar, so the config gets the new
    DiffIDs).
    """
    from .memory import return_big_buffers

    return_big_buffers()
    import json

    import imgpipe

    from .main import usage_error
    from .output import close_observer, make_observer, print_result

    if getattr(args, "from_list", None):
        from .cmd_sync import from_list

        return from_list(args)
    if args.source is None or args.dest is None:
        return usage_error("convert needs SRC and DST (or --from-list FILE)")
    if args.platform and args.all_platforms:
        return usage_error("--platform and --all-platforms exclude each other")
    if args.jobs is not None and args.jobs < 1:
        return usage_error("--jobs must be at least 1")
    level_ok = args.compression in ("gzip", "zstd") or args.seekable == "zstdchunked"
    if args.level is not None and not level_ok:
        return usage_error("--level needs --gzip, --zstd or --zstdchunked")
    if args.seekable is None and (
        args.estargz_chunk_size is not None
        or args.estargz_level is not None
        or args.estargz_record_in
    ):
        return usage_error("--estargz-* options need --estargz (the chunk size: or --zstdchunked)")
    estargz_only = args.estargz_level is not None or args.estargz_record_in
    if args.seekable == "zstdchunked" and estargz_only:
        return usage_error("--estargz-level and --estargz-record-in need --estargz")
    if args.estargz_chunk_size is not None and args.estargz_chunk_size < 0:
        return usage_error("--estargz-chunk-size must be 0 (the default) or more")
    if args.zstd_threads is not None and args.compression != "zstd":
        return usage_error("--zstd-threads needs --zstd")
    if args.encrypt_layers is not None and not args.encrypt_recipient:
        return usage_error("--encrypt-layers needs --encrypt-recipient")
    layers = None
    if args.encrypt_layers is not None:
        layers = [i for group in args.encrypt_layers for i in group]
    # the flags spelt as the options, and --jobs only when given (else the default)
    kw: dict[str, Any] = {k: getattr(args, k) for k in ("compression", "level", "oci")}
    if args.zstd_threads is not None:
        kw["zstd_threads"] = args.zstd_threads
    if args.jobs is not None:
        kw["jobs"] = args.jobs
    if args.seekable is not None:
        kw["seekable"] = args.seekable
        kw["estargz_level"] = args.estargz_level
        if args.estargz_chunk_size:  # 0 means the default, as with ctr-remote
            kw["chunk_size"] = args.estargz_chunk_size
        if args.estargz_record_in:
            kw["prioritized"] = _record_file(args.estargz_record_in)
    spec = imgpipe.ConvertOptions(
        recipients=args.encrypt_recipient,
        encrypt_layers=layers,
        decrypt_keys=args.decrypt_key,
        platforms=args.platform,
        **kw,
    )
    report_file = None
    if args.report:
        # Opened before anything is converted: a report path that cannot be written is a
        # bad argument, found before a tag is written, not after.
        from imgpipe.errors import InvalidArgument

        try:
            report_file = open(args.report, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise InvalidArgument(f"--report {args.report}: {e.strerror}") from None
    observer = make_observer(args)
    try:
        try:
            with imgpipe.Converter(options=flags.transport_options(args), root=args.root) as c:
                report = c.convert(args.source, args.dest, spec, observer=observer)
        except Exception as e:
            if report_file is not None:  # a CI job needs the report most when the job fails
                _write_failure_report(report_file, args, e)
            raise
        finally:
            close_observer(observer)
        if report_file is not None:
            json.dump(report.to_json(), report_file, indent=2)
            report_file.write("\n")
    finally:
        if report_file is not None:
            report_file.close()
    totals = report.totals()
    print_result(
        args,
        f"{args.dest} {report.destination_digest}",
        source=args.source,
        destination=args.dest,
        sourceDigest=report.source_digest,
        digest=report.destination_digest,
        mediaType=report.after.media_type,
        size=report.after.size,
        converted=totals["converted"],
        copied=totals["copied"],
    )
    return 0


def _write_failure_report(f: Any, args: argparse.Namespace, error: Exception) -> None:
    import json

    from .exitcodes import exit_code_for

    json.dump(
        {
            "source": args.source,
            "destination": args.dest,
            "error": " ".join(str(error).split()) or type(error).__name__,
            "exitCode": exit_code_for(error),
        },
        f,
        indent=2,
    )
    f.write("\n")
