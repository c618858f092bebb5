"""Sync reports: JSON lines written as items finish, and their merge.

A report is a ``header`` line (the digest of the whole plan, the shard, the item count),
one ``item`` line per finished item (:meth:`ItemResult.to_json`), and a ``summary`` line
when the run ends. Each line is flushed as written, so a driver killed mid-run leaves a
report of everything that finished: ``--resume REPORT`` runs only the rest.

:func:`merge_reports` takes the reports of several runs or shards of one plan and gives one
:class:`Summary`: per item the best outcome (done beats failed; among equals the later
line), what failed, what no report mentions, and an exit code: 0 when every item is
done, else the failures' exit code when they share one, else 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from imgpipe.formats.errors import InvalidArgument, NotFound

from .plan import PlanItem, plan_digest
from .result import DONE, ItemResult

__all__ = ["Report", "ReportWriter", "Summary", "finished_ids", "merge_reports", "read_report"]

_EXIT_MISSING: Final = 1


class ReportWriter:
    """Writes one run's report to ``out`` (a text stream it does not close)."""

    def __init__(self, out: IO[str], *, plan_digest: str, shard: str, items: int) -> None:
        self.out = out
        self.results: list[ItemResult] = []
        self._line(
            {
                "kind": "header",
                "planDigest": plan_digest,
                "shard": shard,
                "items": items,
                "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )

    def _line(self, obj: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    def add(self, result: ItemResult) -> None:
        self.results.append(result)
        self._line({"kind": "item", **result.to_json()})

    def close(self) -> Summary:
        summary = summarize(self.results)
        self._line({"kind": "summary", **summary.to_json(brief=True)})
        return summary


@dataclass(frozen=True)
class Report:
    """A report read back: its header and item lines."""

    path: str
    plan_digest: str
    shard: str
    results: tuple[ItemResult, ...]


def read_report(path: str | Path) -> Report:
    """Read a report file; a truncated last line (a killed driver) is ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"report {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"report {path}: {e}") from None
    header: dict[str, Any] = {}
    results = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError:
            if n == len(lines) and not text.endswith("\n"):
                break  # cut off mid-line by a kill
            raise InvalidArgument(f"report {path}:{n}: not JSON") from None
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "header":
            header = obj
        elif kind == "item":
            try:
                results.append(ItemResult.from_json(obj))
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidArgument(f"report {path}:{n}: bad item line ({e})") from None
    if not header:
        raise InvalidArgument(f"report {path}: no header line (not a sync report)")
    return Report(
        str(path), str(header.get("planDigest", "")), str(header.get("shard", "")), tuple(results)
    )


def finished_ids(reports: Iterable[Report]) -> set[str]:
    """The ids some report says are done (converted or skipped)."""
    return {r.id for rep in reports for r in rep.results if r.status in DONE}


@dataclass(frozen=True)
class Summary:
    """What a set of results adds up to; ``exit_code`` as the module docstring says."""

    results: tuple[ItemResult, ...]
    missing: tuple[str, ...] = ()
    duplicates: int = 0
    shards: tuple[str, ...] = field(default_factory=tuple)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        codes = {r.exit_code for r in self.failed}
        if len(codes) == 1:
            return codes.pop()
        if codes:
            return 1
        return _EXIT_MISSING if self.missing else 0

    def to_json(self, *, brief: bool = False) -> dict[str, Any]:
        totals: dict[str, float] = {}
        for r in self.results:
            for k in ("bytesBefore", "bytesAfter", "converted", "copied", "exists", "mounted"):
                totals[k] = totals.get(k, 0) + r.totals.get(k, 0)
        out: dict[str, Any] = {
            "items": len(self.results) + len(self.missing),
            "converted": self.count("converted"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "missing": len(self.missing),
            "duplicates": self.duplicates,
            "exitCode": self.exit_code,
            "layers": totals,
            "seconds": round(sum(r.seconds for r in self.results), 6),
        }
        if not brief:
            out["failures"] = [
                {"id": r.id, "source": r.source, "exitCode": r.exit_code, "error": r.error}
                for r in self.failed
            ]
            out["missingIds"] = list(self.missing)
            out["shards"] = list(self.shards)
        return out


def _better(new: ItemResult, old: ItemResult) -> bool:
    return (new.status in DONE) >= (old.status in DONE)


def summarize(results: Iterable[ItemResult]) -> Summary:
    """One run's results, as its report's summary line says them."""
    return merge_results(results)


def merge_results(results: Iterable[ItemResult], plan: Sequence[PlanItem] | None = None) -> Summary:
    best: dict[str, ItemResult] = {}
    seen = 0
    for r in results:
        seen += 1
        old = best.get(r.id)
        if old is None or _better(r, old):
            best[r.id] = r
    duplicates = seen - len(best)
    if plan is None:
        return Summary(tuple(best.values()), (), duplicates)
    order = {item.id: n for n, item in enumerate(plan)}
    extra = [i for i in best if i not in order]
    if extra:
        raise InvalidArgument(f"report item {extra[0]} is not in the plan: another plan's report?")
    missing = tuple(item.id for item in plan if item.id not in best)
    ordered = sorted(best.values(), key=lambda r: order[r.id])
    return Summary(tuple(ordered), missing, duplicates)


def merge_reports(reports: Sequence[Report], plan: Sequence[PlanItem] | None = None) -> Summary:
    """The reports of one plan merged (see the module docstring). InvalidArgument when
    they ran different plans, or an item is not in ``plan``."""
    digests = {r.plan_digest for r in reports}
    if plan is not None:
        digests.add(plan_digest(plan))
    if len(digests) > 1:
        raise InvalidArgument(
            "the reports ran different plans: " + ", ".join(sorted(d[:19] for d in digests))
        )
    summary = merge_results((r for rep in reports for r in rep.results), plan)
    return Summary(
        summary.results, summary.missing, summary.duplicates, tuple(r.shard for r in reports)
    )
