"""imgpipe sync against a real registry holding a generated catalogue (sync_catalogue.py):
the plan, the same digests on every executor, shards that merge, a no-op re-run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import IMGPIPE
from sync_catalogue import CatalogueRegistry, manifest

import imgpipe
from imgpipe.formats.reference import Reference
from imgpipe.sync import FINGERPRINT_ANNOTATION, SOURCE_ANNOTATION
from imgpipe.sync.listing import list_repositories, list_tags
from imgpipe.sync.worker import close_converters, registry_client

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def write_spec(path: Path, host: str, target: str, *, repos: str = "^cat/", tags: str = "") -> Path:
    tag_filter = f", semver: '{tags}'" if tags else ""
    path.write_text(
        f"""
version: 1
defaults:
  convert: {{compression: zstd, oci: true}}
sync:
  - type: registry
    source: {host}
    repos: {{allow: ["{repos}"]{"" if repos != "^cat/" else ', deny: ["app09$"]'}}}
    tags: {{allow: ["^v"]{tag_filter}}}
    target: {host}/{target}
"""
    )
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGPIPE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def report_items(path: Path) -> dict[str, dict[str, object]]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return {x["id"]: x for x in lines if x["kind"] == "item"}


def test_plan_lists_pages_filters_and_is_stable(sync_catalogue: CatalogueRegistry, tmp_path):
    host = sync_catalogue.registry.host
    client = registry_client(imgpipe.TransportOptions())
    # several _catalog pages through Link headers; tags/list ignores n on distribution 2.8
    assert list_repositories(client, host, page=3) == list_repositories(client, host)
    assert "bad/app" in list_repositories(client, host, page=3)
    tags = list_tags(client, Reference(host, "cat/app00"), page=2)
    assert tags == [f"v1.{j}.0" for j in range(10)]

    spec = write_spec(tmp_path / "s.yaml", host, "p", tags=">=1.2.0 <1.5.0")
    plan = imgpipe.sync_plan(spec)
    assert len(plan) == 9 * 3  # app09 denied; v1.2.0 .. v1.4.0
    assert plan == imgpipe.sync_plan(spec)
    assert plan == sorted(plan, key=lambda i: (i.repo_key, i.source))
    assert plan[0].source == f"{host}/cat/app00:v1.2.0"
    assert plan[0].target == f"{host}/p/cat/app00:v1.2.0"
    assert len({i.fingerprint for i in plan}) == 1

    r = cli("sync", "plan", str(spec), "-o", str(tmp_path / "plan.jsonl"))
    assert r.returncode == 0, r.stderr
    assert imgpipe.read_plan(tmp_path / "plan.jsonl") == plan


def _subset(host: str, target: str) -> list[imgpipe.PlanItem]:
    convert = {"compression": "zstd", "oci": True}
    return [
        imgpipe.PlanItem.make(f"{host}/{r}:{t}", f"{host}/{target}/{r}:{t}", convert)
        for r in ("cat/app00", "cat/app01")  # one Docker repository, one OCI
        for t in ("v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0")
    ]


def test_every_executor_gives_the_same_digests(sync_catalogue: CatalogueRegistry):
    host = sync_catalogue.registry.host
    digests: dict[str, dict[str, str]] = {}
    for engine in (None, "threads:3", "processes:2", "dask-local:2"):
        name = (engine or "inline").replace(":", "-")
        plan = _subset(host, f"ex-{name}")
        summary = imgpipe.run_plan(plan, executor=engine)
        assert summary.exit_code == 0, summary.to_json()
        assert summary.count("converted") == len(plan)
        digests[name] = {r.source: r.destination_digest for r in summary.results}
        close_converters()
    first = next(iter(digests.values()))
    assert all(d == first for d in digests.values()), digests

    src_digest, _ = manifest(host, "cat/app00", "v1.0.0")
    _, doc = manifest(host, "ex-dask-local-2/cat/app00", "v1.0.0")
    assert {layer["mediaType"] for layer in doc["layers"]} == {ZSTD}
    assert doc["annotations"][SOURCE_ANNOTATION] == src_digest
    assert doc["annotations"][FINGERPRINT_ANNOTATION] == _subset(host, "x")[0].fingerprint


def test_shards_merge_and_a_rerun_is_a_noop(
    sync_catalogue: CatalogueRegistry, fault_proxy, tmp_path
):
    proxy = fault_proxy(sync_catalogue.registry)
    spec = write_spec(tmp_path / "s.yaml", proxy.host, "sh")
    plan_file = tmp_path / "plan.jsonl"
    assert cli("sync", "plan", str(spec), "-o", str(plan_file)).returncode == 0
    plan = imgpipe.read_plan(plan_file)
    assert len(plan) == 90

    # three shards, each spelt as a CI system would
    shards = [
        (["--shard", "auto", "--shard-count", "3"], {"JOB_COMPLETION_INDEX": "0"}),
        (["--shard", "auto"], {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}),
        (["--shard", "2/3"], {}),
    ]
    reports = []
    for n, (flags, env) in enumerate(shards):
        out = tmp_path / f"shard{n}.jsonl"
        r = cli("convert", "--from-list", str(plan_file), *flags, "--report", str(out), env=env)
        assert r.returncode == 0, r.stderr
        reports.append(out)
    owned = [set(report_items(p)) for p in reports]
    assert sum(len(x) for x in owned) == len(plan)
    assert set().union(*owned) == {i.id for i in plan}

    r = cli("report", "merge", *map(str, reports), "--plan", str(plan_file), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    merged = json.loads(r.stdout.splitlines()[-1])
    assert (merged["converted"], merged["missing"], merged["failed"]) == (90, 0, 0)
    sharded = {k: v["destinationDigest"] for p in reports for k, v in report_items(p).items()}

    # the same plan unsharded: every image skipped, nothing converted or uploaded
    proxy.reset_counters()
    started = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        summary = imgpipe.run_plan(plan, executor=ex, max_in_flight=16)
    elapsed = time.monotonic() - started
    close_converters()
    assert summary.count("skipped") == 90, summary.to_json()
    assert {r.id: r.destination_digest for r in summary.results} == sharded
    log = proxy.log()
    assert not [x for x in log if x.method in ("POST", "PUT", "PATCH")]
    assert not [x for x in log if "/blobs/" in x.path]
    assert len([x for x in log if "/manifests/" in x.path]) == 2 * 90
    assert len(log) <= 2 * 90 + 2  # a /v2/ probe at most
    # the speed ("under a second per 100 images") is benchmarks/sync.py's to measure
    print(f"no-op re-run of 90 images: {elapsed:.2f} s, {len(log)} requests")


def one_result(item: imgpipe.PlanItem) -> imgpipe.ItemResult:
    (result,) = imgpipe.convert_many([item])
    return result


def test_a_moved_source_tag_is_converted_again(sync_catalogue: CatalogueRegistry):
    from sync_catalogue import push_image

    host = sync_catalogue.registry.host
    push_image(host, "cat/moving", "v1", oci=True)
    item = imgpipe.PlanItem.make(
        f"{host}/cat/moving:v1", f"{host}/mv/cat/moving:v1", {"compression": "zstd"}
    )
    first = one_result(item)
    assert first.status == "converted"
    assert one_result(item).status == "skipped"
    push_image(host, "cat/moving", "v1", oci=True, salt="moved")
    again = one_result(item)
    assert again.status == "converted"
    assert again.source_digest != first.source_digest
    # other options: another fingerprint, converted again
    gz = imgpipe.PlanItem.make(item.source, item.target, {"compression": "gzip", "oci": True})
    assert one_result(gz).status == "converted"
    close_converters()


@pytest.mark.parametrize("bad", ["nonsense", "threads:0", "dask:/x"])
def test_bad_executor_is_a_usage_error(bad: str, tmp_path):
    (tmp_path / "p.jsonl").write_text("")
    r = cli("convert", "--from-list", str(tmp_path / "p.jsonl"), "--executor", bad)
    assert r.returncode == 3, r.stderr
    assert "executor" in r.stderr


def _public_key(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return f"jwe:{path}"


def test_encryption_reruns_skip_until_a_recipient_is_added(
    sync_catalogue: CatalogueRegistry, tmp_path
):
    host = sync_catalogue.registry.host
    one = _public_key(tmp_path / "one.pem")
    src, dst = f"{host}/cat/app08:v1.0.0", f"{host}/enc/cat/app08:v1.0.0"
    item = imgpipe.PlanItem.make(src, dst, {"recipients": [one]})
    first = one_result(item)
    assert first.status == "converted", first.error
    # encryption is not reproducible (fresh keys): only the annotations can tell it is done
    assert one_result(item).status == "skipped"
    two = imgpipe.PlanItem.make(src, dst, {"recipients": [one, _public_key(tmp_path / "two.pem")]})
    again = one_result(two)
    assert again.status == "converted"
    assert again.destination_digest != first.destination_digest
    _, doc = manifest(host, "enc/cat/app08", "v1.0.0")
    assert all(x["mediaType"].endswith("+encrypted") for x in doc["layers"])  # type: ignore[union-attr]
    close_converters()


def test_listing_steps_the_page_size_down_when_refused(
    sync_catalogue: CatalogueRegistry, fault_proxy
):
    proxy = fault_proxy(sync_catalogue.registry)
    proxy.fail(r"_catalog\?n=1000$", status=400, times=1)  # PAGINATION_NUMBER_INVALID
    proxy.fail(r"tags/list\?n=1000$", status=413, times=1)  # Quay's TOO_MANY_TAGS
    client = registry_client(imgpipe.TransportOptions())
    direct = list_repositories(client, sync_catalogue.registry.host)
    assert list_repositories(client, proxy.host) == direct
    assert list_tags(client, Reference(proxy.host, "cat/app01")) == [f"v1.{j}.0" for j in range(10)]
    asked = [x.path for x in proxy.log()]
    assert any("n=500" in p for p in asked), asked
    close_converters()
