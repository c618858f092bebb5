"""The driver: :func:`convert_many`, a plan run on any ``concurrent.futures.Executor``.

::

    for r in convert_many(plan, executor=ThreadPoolExecutor(8)): print(r.status)
    with distributed.Client("tcp://sched:8786") as c:         # many machines
        for r in convert_many(plan, executor=c.get_executor(pure=False)): ...

It owns no scheduler, queue or worker protocol: it submits :func:`~.worker.run_item`
with plain-data arguments, keeps at most ``max_in_flight`` items submitted and not
finished (memory stays flat whatever the plan's size), and yields each result as it
lands. Placement, worker death and rescheduling are the engine's (Dask reruns a task
whose worker died). The driver adds only:

* **per-host bounds**: at most ``per_host[host]`` items in flight that read or write
  ``host``. The driver is the only one submitting, so on Dask the bound holds for the
  whole cluster; static shards (several drivers) split it by hand (``K`` per shard);
* **retries of what may pass**: a result marked retryable, or a future that raised
  (a worker lost), is submitted again up to ``retries`` times, then reported failed;
* **a broken pool** (``BrokenExecutor``: a process pool whose worker was killed) fails
  the items in flight as retryable and submits no more: the report says what is left,
  and ``--resume`` runs it;
* ``fail_fast``: the first permanent failure stops submitting (what is in flight
  finishes and is yielded).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, wait
from typing import Any, Final

from imgpipe.formats.reference import parse_reference

from .plan import PlanItem
from .result import ItemResult
from .worker import WorkerSettings, run_item

__all__ = ["DEFAULT_IN_FLIGHT", "DEFAULT_RETRIES", "convert_many"]

#: Items in flight when the caller does not say: enough to keep a few workers busy.
DEFAULT_IN_FLIGHT: Final = 8
#: Extra attempts for an item whose failure may pass.
DEFAULT_RETRIES: Final = 2
#: exit code of an item whose worker was lost (Unavailable's: it may pass)
_LOST_EXIT: Final = 13


def _items(
    items: Iterable[PlanItem | tuple[str, str]], spec: Mapping[str, Any] | None
) -> list[PlanItem]:
    return [
        i if isinstance(i, PlanItem) else PlanItem.make(i[0], i[1], dict(spec or {})) for i in items
    ]


def _hosts(item: PlanItem) -> tuple[str, ...]:
    return tuple(sorted({parse_reference(item.source).domain, parse_reference(item.target).domain}))


def convert_many(
    items: Iterable[PlanItem | tuple[str, str]],
    spec: Mapping[str, Any] | None = None,
    *,
    executor: Executor | None = None,
    settings: WorkerSettings | None = None,
    max_in_flight: int | None = None,
    per_host: Mapping[str, int] | None = None,
    retries: int = DEFAULT_RETRIES,
    fail_fast: bool = False,
) -> Iterator[ItemResult]:
    """Run every item; yield each :class:`ItemResult` as it finishes (in finishing order).

    ``items`` are plan items or ``(source, target)`` pairs converted as ``spec`` says
    (the keys of a spec's ``convert:``). ``executor`` None runs them one at a time in
    this thread. See the module docstring for the window, the per-host bounds, the
    retries and a broken pool.
    """
    plan = _items(items, spec)
    settings = settings or WorkerSettings()
    if executor is None:
        yield from _inline(plan, settings, retries, fail_fast)
        return
    yield from _Window(
        executor, settings, max_in_flight or DEFAULT_IN_FLIGHT, per_host or {}, retries
    ).run(plan, fail_fast)


def _inline(
    plan: list[PlanItem], settings: WorkerSettings, retries: int, fail_fast: bool
) -> Iterator[ItemResult]:
    for item in plan:
        for attempt in range(1, retries + 2):
            result = run_item(item, settings).again(attempt)
            if not (result.status == "failed" and result.retryable):
                break
        yield result
        if fail_fast and result.status == "failed":
            return


class _Window:
    """The bounded in-flight window over one executor."""

    def __init__(
        self,
        executor: Executor,
        settings: WorkerSettings,
        limit: int,
        per_host: Mapping[str, int],
        retries: int,
    ) -> None:
        self.executor = executor
        self.settings = settings
        self.limit = max(1, limit)
        self.per_host = dict(per_host)
        self.retries = retries
        self.busy: dict[str, int] = {}
        self.flying: dict[Future[ItemResult], tuple[PlanItem, int, float]] = {}

    def _fits(self, item: PlanItem) -> bool:
        return all(
            self.busy.get(h, 0) < self.per_host[h] for h in _hosts(item) if h in self.per_host
        )

    def _submit(self, item: PlanItem, attempt: int) -> None:
        future = self.executor.submit(run_item, item, self.settings)
        self.flying[future] = (item, attempt, time.monotonic())
        for h in _hosts(item):
            self.busy[h] = self.busy.get(h, 0) + 1

    def _land(self, future: Future[ItemResult]) -> tuple[PlanItem, int, ItemResult]:
        item, attempt, started = self.flying.pop(future)
        for h in _hosts(item):
            self.busy[h] -= 1
        try:
            result = future.result().again(attempt)
        except BrokenExecutor:
            self.flying[future] = (item, attempt, started)  # _broken reports it
            raise
        except Exception as e:  # the engine lost the task (a worker died, a pickling error)
            message = f"worker lost: {type(e).__name__}: {' '.join(str(e).split())}"
            result = ItemResult.failure(
                item,
                message,
                _LOST_EXIT,
                retryable=True,
                seconds=time.monotonic() - started,
            ).again(attempt)
        return item, attempt, result

    def run(self, plan: list[PlanItem], fail_fast: bool) -> Iterator[ItemResult]:
        pending: deque[tuple[PlanItem, int]] = deque((i, 1) for i in plan)
        stopped = False
        try:
            while pending or self.flying:
                if not stopped:
                    self._fill(pending)
                if not self.flying:
                    break  # stopped with nothing in flight
                done, _ = wait(list(self.flying), return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        item, attempt, result = self._land(future)
                    except BrokenExecutor as e:
                        yield from self._broken(e, future)
                        return
                    again = result.status == "failed" and result.retryable
                    if again and attempt <= self.retries and not stopped:
                        pending.appendleft((item, attempt + 1))
                        continue
                    yield result
                    if fail_fast and result.status == "failed":
                        stopped = True
        finally:
            for future in self.flying:
                future.cancel()

    def _fill(self, pending: deque[tuple[PlanItem, int]]) -> None:
        """Submit from the front of ``pending`` while the window has room, passing over
        items whose hosts are at their bound (they keep their place)."""
        skipped: list[tuple[PlanItem, int]] = []
        while pending and len(self.flying) < self.limit:
            item, attempt = pending.popleft()
            if self._fits(item):
                self._submit(item, attempt)
            else:
                skipped.append((item, attempt))
                if len(skipped) >= 4 * self.limit:
                    break  # the front is all one busy host: wait for a slot
        pending.extendleft(reversed(skipped))

    def _broken(self, error: BaseException, first: Future[ItemResult]) -> Iterator[ItemResult]:
        """The pool is gone: every item in flight fails, retryable; nothing more runs."""
        lost = [first, *(f for f in self.flying if f is not first)]
        message = f"executor broken: {' '.join(str(error).split()) or type(error).__name__}"
        for future in lost:
            entry = self.flying.pop(future, None)
            if entry is None:
                continue
            item, attempt, started = entry
            yield ItemResult.failure(
                item, message, _LOST_EXIT, retryable=True, seconds=time.monotonic() - started
            ).again(attempt)
