"""``imgpipe report merge R1 R2 ... [--plan plan.jsonl]``: sync reports of one plan (its
shards, its resumed runs) as one summary and one exit code."""

from __future__ import annotations

import argparse
from typing import Any

from . import flags


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="sync reports: merge", description=__doc__)
    rsub = p.add_subparsers(dest="report_command", metavar="COMMAND", required=True)
    m = flags.verb(rsub, "merge", merge)
    m.add_argument("reports", nargs="+", metavar="REPORT", help="sync reports (JSON lines)")
    m.add_argument(
        "--plan", metavar="FILE", help="the plan they ran: items in no report count as missing"
    )
    m.add_argument("-o", "--output", metavar="FILE", help="write the merged summary (JSON) to FILE")
    flags.json_output(m, help="print the summary as one JSON result line")


def merge(args: argparse.Namespace) -> int:
    """merge sync reports into one summary

    Per image the best outcome wins (converted or skipped over failed). Exit 0 when
    every image is done; else the failures' exit code when they share one, else 1 (also
    when --plan names images no report has).
    """
    import json

    import imgpipe

    from .cmd_sync import _open_out, print_summary

    reports = [imgpipe.read_report(p) for p in args.reports]
    plan = imgpipe.read_plan(args.plan) if args.plan else None
    summary = imgpipe.merge_reports(reports, plan)
    if args.output:
        with _open_out(args.output) as out:
            json.dump(summary.to_json(), out, indent=2)
            out.write("\n")
    return print_summary(args, summary)
