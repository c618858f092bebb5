"""imgpipe sync when things go wrong: a Dask worker killed, the driver killed and resumed,
a registry answering 429 with Retry-After, one image with a corrupt layer."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE
from faultproxy import FaultProxy, _request_body
from sync_catalogue import CatalogueRegistry, manifest

import imgpipe
from imgpipe.sync import SOURCE_ANNOTATION
from imgpipe.sync.worker import close_converters

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
CONVERT = {"compression": "zstd", "oci": True}


def items(host: str, target: str, repos: tuple[str, ...], tags: int = 10) -> list[imgpipe.PlanItem]:
    return [
        imgpipe.PlanItem.make(f"{host}/{r}:v1.{t}.0", f"{host}/{target}/{r}:v1.{t}.0", CONVERT)
        for r in repos
        for t in range(tags)
    ]


def check_converted(host: str, plan: list[imgpipe.PlanItem]) -> None:
    for item in plan:
        repo_tag = item.source.split("/", 1)[1]
        repo, _, tag = repo_tag.rpartition(":")
        src, _ = manifest(host, repo, tag)
        _, doc = manifest(host, item.target.split("/", 1)[1].rpartition(":")[0], tag)
        assert {x["mediaType"] for x in doc["layers"]} == {ZSTD}  # type: ignore[union-attr]
        assert doc["annotations"][SOURCE_ANNOTATION] == src  # type: ignore[index]


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A LocalCluster of two worker processes (two threads each) and its client."""
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


def test_a_killed_dask_worker_does_not_lose_images(
    sync_catalogue: CatalogueRegistry, dask_client: Any
):
    host = sync_catalogue.registry.host
    plan = items(host, "dask-kill", ("cat/app02", "cat/app03"))
    dask_client.wait_for_workers(2)
    victim = next(iter(dask_client.run(os.getpid).values()))
    results = []
    for r in imgpipe.convert_many(plan, executor=dask_client.get_executor(pure=False)):
        if not results:
            os.kill(victim, signal.SIGKILL)  # mid-run: the other items are in flight
        results.append(r)
    assert sorted(r.id for r in results) == sorted(i.id for i in plan)  # each once
    # an item whose worker died after it wrote the tag is run again and finds it done
    assert {r.status for r in results} <= {"converted", "skipped"}, [r.error for r in results]
    check_converted(host, plan)


def test_a_killed_driver_resumes_exactly_the_rest(
    sync_catalogue: CatalogueRegistry, fault_proxy, tmp_path: Path
):
    proxy = fault_proxy(sync_catalogue.registry)
    plan = items(proxy.host, "resume", ("cat/app04", "cat/app05"))
    plan_file = tmp_path / "plan.jsonl"
    with plan_file.open("w") as f:
        imgpipe.write_plan(plan, f)
    # one image's own layer stalls mid-body: the run cannot finish while it hangs
    _, doc = manifest(sync_catalogue.registry.host, "cat/app05", "v1.7.0")
    stuck = doc["layers"][-1]["digest"]  # type: ignore[index]
    proxy.stall(f"/blobs/{stuck}", after=10)
    report = tmp_path / "first.jsonl"
    cmd = [str(IMGPIPE), "convert", "--from-list", str(plan_file), "--executor", "threads:2"]
    proc = subprocess.Popen([*cmd, "--report", str(report)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_lines(report)) < 1 + len(plan) - 1 and time.monotonic() < deadline:
            try:
                proc.wait(timeout=0.05)  # returns early if the driver died on its own
                break
            except subprocess.TimeoutExpired:
                pass
        assert proc.poll() is None, "the driver should be stuck on the stalled layer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proxy.release()
        if proc.poll() is None:
            proc.kill()
    done = {x["id"] for x in _lines(report) if x.get("kind") == "item"}
    assert len(done) == len(plan) - 1
    rest = tmp_path / "rest.jsonl"
    r = subprocess.run(
        [*cmd, "--resume", str(report), "--report", str(rest)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    again = [x for x in _lines(rest) if x.get("kind") == "item"]
    assert [x["id"] for x in again] == [i.id for i in plan if i.id not in done]
    assert again[0]["status"] == "converted"
    merged = subprocess.run(
        [str(IMGPIPE), "report", "merge", str(report), str(rest), "--plan", str(plan_file)],
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "20 images: 20 converted" in merged.stdout


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return out


class RateLimited(FaultProxy):
    """Answers the first ``limit`` manifest requests 429 with ``Retry-After: 1``, and
    notes when each request arrived."""

    def __init__(self, upstream_host: str, limit: int) -> None:
        super().__init__(upstream_host)
        self.limit = limit
        self.times: list[tuple[float, str, int]] = []
        self._mu = threading.Lock()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        with self._mu:
            limited = "/manifests/" in h.path and self.limit > 0
            self.limit -= limited
            self.times.append((time.monotonic(), h.path, 429 if limited else 0))
        if not limited:
            super()._forward(h)
            return
        for _ in _request_body(h):  # read what was sent: the connection stays usable
            pass
        body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
        h.send_response(429)
        h.send_header("Retry-After", "1")
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


def test_retry_after_is_honoured_across_threads(sync_catalogue: CatalogueRegistry):
    proxy = RateLimited(sync_catalogue.registry.host, limit=1).start()
    try:
        plan = items(proxy.host, "limited", ("cat/app06",))
        results = list(imgpipe.convert_many(plan, executor=imgpipe_threads(4), max_in_flight=8))
    finally:
        proxy.close()
        close_converters()
    assert {r.status for r in results} == {"converted"}, [r.error for r in results]
    (t429,) = [t for t, _, status in proxy.times if status == 429]
    # after the 429 no thread of the client sent anything for the second it asked for
    # (requests already on their way when it came may land just after it)
    held = [p for t, p, _ in proxy.times if t429 + 0.2 < t < t429 + 0.95]
    assert not held, held
    assert max(t for t, _, _ in proxy.times) > t429 + 1


def imgpipe_threads(n: int):  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(n)


def test_a_corrupt_layer_fails_that_image_only(sync_catalogue: CatalogueRegistry, tmp_path: Path):
    host = sync_catalogue.registry.host
    plan = [
        *items(host, "corrupt", ("cat/app07",), tags=3),
        imgpipe.PlanItem.make(f"{host}/bad/app:v1", f"{host}/corrupt/bad/app:v1", CONVERT),
    ]
    plan_file = tmp_path / "plan.jsonl"
    with plan_file.open("w") as f:
        imgpipe.write_plan(plan, f)
    report = tmp_path / "r.jsonl"
    cmd = [str(IMGPIPE), "convert", "--from-list", str(plan_file), "--report", str(report)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 8, r.stdout + r.stderr
    lines = {x["source"]: x for x in _lines(report) if x.get("kind") == "item"}
    bad = lines[f"{host}/bad/app:v1"]
    assert (bad["status"], bad["exitCode"], bad["retryable"]) == ("failed", 8, False)
    assert sync_catalogue.bad_layer in str(bad["error"])
    assert bad["attempts"] == 1  # a permanent failure is not retried
    assert sum(1 for x in lines.values() if x["status"] == "converted") == 3
    merged = subprocess.run(
        [str(IMGPIPE), "report", "merge", str(report), "--plan", str(plan_file)],
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 8
    assert "bad/app:v1" in merged.stderr
    # nothing was tagged for the failed image
    status = sync_catalogue.registry.request("HEAD", "/v2/corrupt/bad/app/manifests/v1")[0]
    assert status == 404


class Timing(FaultProxy):
    """Notes when each request began and ended, by repository."""

    def __init__(self, upstream_host: str) -> None:
        super().__init__(upstream_host)
        self.spans: list[tuple[float, float, str]] = []
        self._mu = threading.Lock()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        start = time.monotonic()
        super()._forward(h)
        m = re.match(r"/v2/(.+?)/(blobs|manifests|tags)/", h.path)
        repo = m.group(1).removeprefix("ph/") if m else ""
        with self._mu:
            self.spans.append((start, time.monotonic(), repo))


def test_per_host_concurrency_bounds_the_images_in_flight(sync_catalogue: CatalogueRegistry):
    proxy = Timing(sync_catalogue.registry.host).start()
    try:
        repos = [f"cat/app0{i}" for i in range(5)]
        plan = [
            imgpipe.PlanItem.make(
                f"{proxy.host}/{r}:v1.9.0", f"{proxy.host}/ph/{r}:v1.9.0", CONVERT
            )
            for r in repos
        ]
        results = list(
            imgpipe.convert_many(
                plan, executor=imgpipe_threads(4), max_in_flight=4, per_host={proxy.host: 1}
            )
        )
    finally:
        proxy.close()
        close_converters()
    assert {r.status for r in results} == {"converted"}
    # one image at a time on that host: no two images' requests overlap
    by_repo = {r: [(a, b) for a, b, x in proxy.spans if x == r] for r in repos}
    windows = sorted((min(a for a, _ in s), max(b for _, b in s)) for s in by_repo.values())
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start


def test_a_broken_process_pool_fails_what_was_in_flight_as_retryable(
    sync_catalogue: CatalogueRegistry,
):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    host = sync_catalogue.registry.host
    plan = items(host, "pool-kill", ("cat/app08",))
    results: list[imgpipe.ItemResult] = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        for r in imgpipe.convert_many(plan, executor=ex, max_in_flight=4):
            if not results:
                os.kill(next(iter(ex._processes)), signal.SIGKILL)  # type: ignore[attr-defined]
            results.append(r)
    failed = [r for r in results if r.status == "failed"]
    assert failed, "the pool broke with items in flight"
    assert all(r.retryable and "executor broken" in r.error for r in failed)
    # what did not finish (failed, or never submitted) runs again elsewhere
    done = {r.id for r in results if r.status != "failed"}
    rest = [i for i in plan if i.id not in done]
    again = list(imgpipe.convert_many(rest, executor=imgpipe_threads(2)))
    close_converters()
    assert {r.status for r in again} <= {"converted", "skipped"}
    check_converted(host, plan)


def test_a_dask_semaphore_bounds_a_host_for_the_whole_cluster(
    sync_catalogue: CatalogueRegistry, dask_client: Any
):
    from imgpipe.sync import WorkerSettings

    proxy = Timing(sync_catalogue.registry.host).start()
    repos = [f"cat/app0{i}" for i in range(4)]
    plan = [
        imgpipe.PlanItem.make(f"{proxy.host}/{r}:v1.8.0", f"{proxy.host}/ph/{r}:v1.8.0", CONVERT)
        for r in repos
    ]
    # no bound in the driver: only the cluster's semaphore keeps the items apart
    settings = WorkerSettings(cluster_limits=((proxy.host, 1),))
    dask_client.wait_for_workers(2)
    try:
        ex = dask_client.get_executor(pure=False)
        results = list(imgpipe.convert_many(plan, executor=ex, settings=settings))
    finally:
        proxy.close()
    assert {r.status for r in results} == {"converted"}, [r.error for r in results]
    by_repo = {r: [(a, b) for a, b, x in proxy.spans if x == r] for r in repos}
    windows = sorted((min(a for a, _ in s), max(b for _, b in s)) for s in by_repo.values())
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start


def test_the_command_runs_on_a_dask_scheduler_by_address(
    sync_catalogue: CatalogueRegistry, dask_client: Any, tmp_path: Path
):
    host = sync_catalogue.registry.host
    plan_file = tmp_path / "plan.txt"  # plain SRC DST lines, options from the command line
    plan_file.write_text(
        "".join(f"{host}/cat/app09:v1.{t}.0 {host}/bydask/cat/app09:v1.{t}.0\n" for t in range(4))
    )
    address = dask_client.scheduler.address.removeprefix("tcp://")
    r = subprocess.run(
        [
            str(IMGPIPE),
            "convert",
            "--from-list",
            str(plan_file),
            "--zstd",
            "--oci",
            "--executor",
            f"dask://{address}",
            "--per-host-concurrency",
            f"{host}=2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["image"] * 4 + ["result"]
    assert {e["status"] for e in events[:4]} == {"converted"}
    assert (events[-1]["exitCode"], events[-1]["converted"]) == (0, 4)
    _, doc = manifest(host, "bydask/cat/app09", "v1.3.0")
    assert {x["mediaType"] for x in doc["layers"]} == {ZSTD}  # type: ignore[union-attr]
