"""Converting a whole catalogue: a sync plan, idempotent per-image work, any executor.

::

    plan = imgpipe.sync_plan("sync.yaml")             # JSON-able PlanItems, sorted
    for r in imgpipe.convert_many(plan, executor=ThreadPoolExecutor(8)): ...
    summary = imgpipe.run_plan(plan, executor="dask-local:2", report=f)

Modules, one job each: :mod:`.spec` (the YAML spec) and :mod:`.semver` (tag ranges),
:mod:`.listing` (``_catalog`` and tags/list pagination), :mod:`.plan` (items, their
fingerprint and id, plan files), :mod:`.shard` (static shards), :mod:`.worker`
(:func:`run_item`: skip or convert one image, with the provenance annotations),
:mod:`.driver` (:func:`convert_many`: the bounded window over an Executor),
:mod:`.executors` (``--executor`` spellings, Dask included), :mod:`.report` (JSON-lines
reports, merge, resume) and :mod:`.run` (all of it, as ``imgpipe sync`` runs it).
"""

from .driver import convert_many
from .executors import Engine, open_executor, parse_executor
from .plan import PlanItem, expand, fingerprint, plan_digest, read_plan, write_plan
from .report import Report, ReportWriter, Summary, finished_ids, merge_reports, read_report
from .result import ItemResult
from .run import run_plan, sync_plan
from .shard import Shard, parse_shard
from .spec import SyncSpec, load_spec
from .worker import FINGERPRINT_ANNOTATION, SOURCE_ANNOTATION, WorkerSettings, run_item

__all__ = [
    "FINGERPRINT_ANNOTATION",
    "SOURCE_ANNOTATION",
    "Engine",
    "ItemResult",
    "PlanItem",
    "Report",
    "ReportWriter",
    "Shard",
    "Summary",
    "SyncSpec",
    "WorkerSettings",
    "convert_many",
    "expand",
    "fingerprint",
    "finished_ids",
    "load_spec",
    "merge_reports",
    "open_executor",
    "parse_executor",
    "parse_shard",
    "plan_digest",
    "read_plan",
    "read_report",
    "run_item",
    "run_plan",
    "sync_plan",
    "write_plan",
]
