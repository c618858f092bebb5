"""A whole sync run: plan, shard, resume, run, report (what ``imgpipe sync`` does).

::

    plan = sync_plan("sync.yaml")                     # listing the registries
    summary = run_plan(plan, executor="dask-local:2", report=open("r.jsonl", "w"))
    summary.exit_code                                 # 0: every item done
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import IO

from imgpipe.remote.options import TransportOptions

from .driver import DEFAULT_IN_FLIGHT, DEFAULT_RETRIES, convert_many
from .executors import Engine, open_executor, parse_executor
from .plan import PlanItem, expand, plan_digest
from .report import ReportWriter, Summary, finished_ids, read_report, summarize
from .result import ItemResult
from .shard import Shard
from .spec import load_spec
from .worker import WorkerSettings, close_converters, registry_client

__all__ = ["run_plan", "sync_plan"]


def sync_plan(spec: str | Path, options: TransportOptions | None = None) -> list[PlanItem]:
    """The plan of the spec file ``spec``, listed from its registries."""
    parsed = load_spec(spec)
    return expand(parsed, registry_client(options or TransportOptions()))


def run_plan(
    plan: Sequence[PlanItem],
    *,
    executor: str | Engine | Executor | None = None,
    settings: WorkerSettings | None = None,
    shard: Shard | None = None,
    shard_by: str = "repo",
    resume: Sequence[str | Path] = (),
    report: IO[str] | None = None,
    max_in_flight: int | None = None,
    per_host: Mapping[str, int] | None = None,
    retries: int | None = None,
    fail_fast: bool = False,
    on_result: Callable[[ItemResult, int, int], None] | None = None,
) -> Summary:
    """Run ``plan`` (this shard of it, less what ``resume``'s reports finished); write
    the report as items finish; the run's summary. ``on_result(result, done, total)``
    is called for each (progress)."""
    mine = shard.select(plan, shard_by) if shard is not None else list(plan)
    done = finished_ids(read_report(p) for p in resume)
    todo = [i for i in mine if i.id not in done]
    writer = (
        ReportWriter(
            report,
            plan_digest=plan_digest(plan),
            shard=str(shard) if shard else "",
            items=len(todo),
        )
        if report is not None
        else None
    )
    results: list[ItemResult] = []
    engine = parse_executor(executor) if isinstance(executor, str) else executor
    if isinstance(engine, Engine) and engine.kind.startswith("dask") and per_host:
        # the bound on the whole cluster, not only for this driver's items
        base = settings or WorkerSettings()
        settings = replace(base, cluster_limits=tuple(sorted(per_host.items())))

    def consume(ex: Executor | None, window: int | None) -> None:
        for r in convert_many(
            todo,
            executor=ex,
            settings=settings,
            max_in_flight=window,
            per_host=per_host,
            retries=DEFAULT_RETRIES if retries is None else retries,
            fail_fast=fail_fast,
        ):
            results.append(r)
            if writer is not None:
                writer.add(r)
            if on_result is not None:
                on_result(r, len(results), len(todo))

    try:
        if isinstance(engine, Engine):
            with open_executor(engine) as ex:
                # two per slot: one running, one queued behind it on the worker
                consume(ex, max_in_flight or 2 * (engine.slots or DEFAULT_IN_FLIGHT))
        else:
            consume(engine, max_in_flight)
    finally:
        if writer is not None:
            writer.close()
        close_converters()
    return summarize(results)
