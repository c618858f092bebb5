"""``--executor`` spelt as text: the engines a sync runs on, opened and closed.

=================  ==========================================================
``threads:N``      a ThreadPoolExecutor of N threads (this process)
``processes:N``    a ProcessPoolExecutor of N processes (spawned, not forked:
                   the driver's threads and connection pools stay its own)
``dask://H:P``     the Dask cluster whose scheduler listens at H:P
                   (``Client.get_executor``; needs ``pip install imgpipe[dask]``)
``dask-local:N``   a Dask LocalCluster of N worker processes on this machine
=================  ==========================================================

Dask is imported only for the two Dask spellings. imgpipe runs no service of its own:
the workers of a ``dask://`` cluster are Dask's (``dask worker tcp://H:P``), with
imgpipe installed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from imgpipe.formats.errors import InvalidArgument, Unavailable

__all__ = ["DASK_HINT", "Engine", "open_executor", "parse_executor"]

DASK_HINT: Final = "Dask is not installed: pip install 'imgpipe[dask]'"
_SPEC_RE: Final = re.compile(r"(threads|processes|dask-local):(\d+)|dask://(\S+)")
#: threads per Dask worker process: one converting, one waiting on the network
DASK_THREADS: Final = 2


@dataclass(frozen=True)
class Engine:
    """A parsed ``--executor``: the kind and its worker count or scheduler address."""

    kind: str
    workers: int = 1
    address: str = ""

    @property
    def slots(self) -> int:
        """Items that can run at once (for the default in-flight window)."""
        return self.workers * (DASK_THREADS if self.kind == "dask-local" else 1)


def parse_executor(text: str) -> Engine:
    """``threads:N`` | ``processes:N`` | ``dask://HOST:PORT`` | ``dask-local:N``."""
    m = _SPEC_RE.fullmatch(text.strip())
    if m is None:
        raise InvalidArgument(
            f"executor {text!r}: want threads:N, processes:N, dask://HOST:PORT or dask-local:N"
        )
    if m.group(3):
        return Engine("dask", 0, m.group(3))
    n = int(m.group(2))
    if n < 1:
        raise InvalidArgument(f"executor {text!r}: want at least 1 worker")
    return Engine(m.group(1), n)


@contextlib.contextmanager
def open_executor(engine: Engine) -> Iterator[Executor]:
    """The executor ``engine`` names, shut down (cluster closed) on leaving."""
    if engine.kind == "threads":
        with ThreadPoolExecutor(engine.workers, thread_name_prefix="imgpipe-sync") as ex:
            yield ex
        return
    if engine.kind == "processes":
        import multiprocessing  # noqa: PLC0415 (20 ms; only for processes:N)
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(engine.workers, mp_context=ctx) as pex:
            yield pex
        return
    distributed = _dask()
    if engine.kind == "dask":
        try:
            client = distributed.Client(f"tcp://{engine.address}", timeout="10s")
        except OSError as e:
            raise Unavailable(f"dask scheduler {engine.address}: {e}") from None
        with client:
            yield client.get_executor(pure=False)
        return
    cluster = distributed.LocalCluster(
        n_workers=engine.workers,
        threads_per_worker=DASK_THREADS,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    with cluster, distributed.Client(cluster) as client:
        yield client.get_executor(pure=False)


def _dask() -> Any:
    try:
        import distributed  # noqa: PLC0415 (the dask extra, only when asked for)
    except ImportError:
        raise InvalidArgument(DASK_HINT) from None
    return distributed
