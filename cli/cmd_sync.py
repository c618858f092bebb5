"""``imgpipe sync plan SPEC``, ``imgpipe sync SPEC`` and ``imgpipe convert --from-list``:
a catalogue converted from a spec or a plan, on threads, processes or Dask."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import flags

_EPILOG = """\
examples:
  imgpipe sync plan sync.yaml -o plan.jsonl
  imgpipe sync sync.yaml --executor threads:8 --report report.jsonl
  imgpipe convert --from-list plan.jsonl --shard auto --report shard.jsonl
  imgpipe sync sync.yaml --executor dask://scheduler:8786
  imgpipe sync sync.yaml --resume report.jsonl --report rest.jsonl
"""


def run_flags(p: argparse.ArgumentParser, *, report: bool = True) -> None:
    """The flags of a run: executor, shard, manners, report, resume (``report``: add
    ``--report``; convert has its own, which means the run's report with --from-list)."""
    g = p.add_argument_group("running a plan")
    g.add_argument(
        "--executor",
        default="threads:4",
        metavar="ENGINE",
        help="threads:N, processes:N, dask://HOST:PORT or dask-local:N (default threads:4; "
        "Dask needs pip install 'imgpipe[dask]')",
    )
    g.add_argument(
        "--shard",
        metavar="K/N",
        help="run only shard K (from 0) of N, or auto: JOB_COMPLETION_INDEX (with "
        "--shard-count) or CI_NODE_INDEX/CI_NODE_TOTAL",
    )
    g.add_argument("--shard-count", type=int, metavar="N", help="N for --shard auto on Kubernetes")
    g.add_argument(
        "--shard-by",
        choices=("repo", "item"),
        default="repo",
        help="keep a repository's tags on one shard (default) or spread items",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        metavar="M",
        help="images submitted and not finished (default: 2 per worker slot)",
    )
    g.add_argument(
        "--per-host-concurrency",
        action="append",
        default=[],
        metavar="HOST=K",
        help="at most K images at once that read or write HOST (repeatable)",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="runs again of an image whose failure may pass (unreachable, 5xx, 429)",
    )
    g.add_argument("--fail-fast", action="store_true", help="stop at the first failed image")
    g.add_argument("--no-skip", action="store_true", help="convert images already converted, too")
    if report:
        g.add_argument("--report", metavar="FILE", help="write the JSON-lines report to FILE")
    g.add_argument(
        "--resume",
        action="append",
        default=[],
        metavar="REPORT",
        help="run only what REPORT (repeatable) did not finish",
    )


def register(sub: Any) -> None:
    p = flags.verb(
        sub,
        "sync",
        sync,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="SPEC",
        help="the YAML spec to run; or the two words: plan SPEC (print the plan)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="sync plan: write the plan to FILE")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="layers at once per image")
    run_flags(p)
    flags.connection(p)
    flags.json_output(p, help="one JSON line per image, then the summary")


def sync(args: argparse.Namespace) -> int:
    """convert a catalogue as a YAML spec says

    Expand SPEC (registries, repositories or images, with repo/tag filters and
    conversion options) into a plan and run it: images already converted for their
    current source digest and options are skipped after one manifest GET; the rest are
    converted, each carrying its source digest and options fingerprint as annotations.
    'imgpipe sync plan SPEC' writes the plan (JSON lines) for 'convert --from-list'.
    """
    import imgpipe

    from .main import usage_error

    if args.words[0] == "plan":
        if len(args.words) != 2:
            return usage_error("usage: imgpipe sync plan SPEC [-o FILE]")
        plan = imgpipe.sync_plan(args.words[1], flags.transport_options(args))
        if args.output:
            with _open_out(args.output) as out:
                imgpipe.write_plan(plan, out)
        else:
            imgpipe.write_plan(plan, sys.stdout)
        print(f"{len(plan)} images planned", file=sys.stderr)
        return 0
    if len(args.words) != 1:
        return usage_error("usage: imgpipe sync SPEC [options] | imgpipe sync plan SPEC")
    from .memory import return_big_buffers

    return_big_buffers()  # for the conversions this process runs itself
    if args.output:
        return usage_error("-o is for 'sync plan'; a run writes --report")
    plan = imgpipe.sync_plan(args.words[0], flags.transport_options(args))
    return run_list(args, plan)


def from_list(args: argparse.Namespace) -> int:
    """``convert --from-list FILE``: a plan file, or SRC DST lines converted as the
    command line's conversion flags say."""
    import imgpipe

    from .main import usage_error

    if args.source is not None or args.dest is not None:
        return usage_error("--from-list takes no SRC DST: the list names them")
    convert: dict[str, Any] = {}
    for key, value in (
        ("compression", args.compression),
        ("level", args.level),
        ("oci", args.oci or None),
        ("recipients", args.encrypt_recipient or None),
        ("decryptKeys", args.decrypt_key or None),
        ("platforms", args.platform or None),
    ):
        if value is not None:
            convert[key] = value
    if args.encrypt_layers is not None:
        convert["encryptLayers"] = [i for group in args.encrypt_layers for i in group]
    return run_list(args, imgpipe.read_plan(args.from_list, convert))


def run_list(args: argparse.Namespace, plan: Any) -> int:
    """Run ``plan`` as the run flags say; print a line per image and the summary."""
    import json

    import imgpipe

    from .exitcodes import exit_code_for
    from .main import usage_error

    per_host: dict[str, int] = {}
    for spec in args.per_host_concurrency:
        host, sep, k = spec.partition("=")
        if not sep or not k.isdigit() or int(k) < 1:
            return usage_error(f"--per-host-concurrency {spec!r}: want HOST=K, K at least 1")
        per_host[host] = int(k)
    if args.max_in_flight is not None and args.max_in_flight < 1:
        return usage_error("--max-in-flight must be at least 1")
    if args.retries < 0:
        return usage_error("--retries must be 0 or more")
    engine = imgpipe.parse_executor(args.executor)
    shard = imgpipe.parse_shard(args.shard, count=args.shard_count) if args.shard else None
    jobs = {"jobs": args.jobs} if getattr(args, "jobs", None) else {}
    settings = imgpipe.WorkerSettings(
        options=flags.transport_options(args),
        skip=not args.no_skip,
        classify=exit_code_for,
        **jobs,
    )

    def show(r: Any, done: int, total: int) -> None:
        if args.json:
            print(json.dumps({"event": "image", **r.to_json()}), flush=True)
            return
        if args.quiet:
            return
        what = r.destination_digest if r.status != "failed" else f"exit {r.exit_code}: {r.error}"
        print(f"[{done}/{total}] {r.status} {r.target} {what} ({r.seconds:.2f}s)", file=sys.stderr)

    out = _open_out(args.report) if args.report else None
    try:
        summary = imgpipe.run_plan(
            plan,
            executor=engine,
            settings=settings,
            shard=shard,
            shard_by=args.shard_by,
            resume=args.resume,
            report=out,
            max_in_flight=args.max_in_flight,
            per_host=per_host,
            retries=args.retries,
            fail_fast=args.fail_fast,
            on_result=show,
        )
    finally:
        if out is not None:
            out.close()
    return print_summary(args, summary)


def print_summary(args: argparse.Namespace, summary: Any) -> int:
    """The summary line (or JSON result); the exit code it means."""
    import json

    doc = summary.to_json()
    text = (
        f"{doc['items']} images: {doc['converted']} converted, {doc['skipped']} skipped, "
        f"{doc['failed']} failed" + (f", {doc['missing']} missing" if doc["missing"] else "")
    )
    if args.json:  # the final line of every --json verb: exitCode and message
        print(json.dumps({"event": "result", **doc, "message": text}), flush=True)
    else:
        print(text)
        for f in doc["failures"]:
            print(f"failed: {f['source']}: exit {f['exitCode']}: {f['error']}", file=sys.stderr)
        if doc["missing"]:
            print(f"missing: {doc['missing']} plan items in no report", file=sys.stderr)
    code: int = summary.exit_code
    return code


def _open_out(path: str) -> Any:
    from imgpipe.errors import InvalidArgument

    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"{path}: {e.strerror}") from None
