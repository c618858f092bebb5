"""The sync pieces that need no registry: spec checking, semver ranges, fingerprints,
shards, report merging, executor and shard spellings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgpipe
from imgpipe.sync import ReportWriter, Shard, fingerprint, merge_reports, parse_shard
from imgpipe.sync.report import read_report
from imgpipe.sync.semver import SemverRange
from imgpipe.sync.spec import parse_spec


def spec(**entry: object) -> dict[str, object]:
    return {
        "version": 1,
        "sync": [{"type": "repository", "source": "r.io/a", "target": "d.io/a", **entry}],
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "want a mapping"),
        ({"version": 2, "sync": []}, "version 2"),
        ({"sync": []}, "want a list"),
        ({"sync": [{"type": "x", "source": "a", "target": "b"}]}, "type 'x'"),
        (spec(convert={"compress": "zstd"}), "unknown key 'compress'"),
        (spec(tags={"allow": ["("]}), "bad regular expression"),
        (spec(tags={"semver": "~>1"}), "semver"),
        (spec(repos={"semver": ">1"}), "repos"),
        (spec(bogus=1), "unknown key 'bogus'"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(doc: object, message: str):
    with pytest.raises(imgpipe.InvalidArgument, match=message):
        parse_spec(doc)


def test_entry_convert_goes_over_defaults_and_keys_are_relative(tmp_path: Path):
    doc = {
        "defaults": {"convert": {"compression": "zstd", "oci": True}},
        "sync": [
            {"source": "r.io/a:1", "target": "d.io/a", "convert": {"compression": "gzip"}},
            {"source": "r.io/b:1", "target": "d.io/b", "convert": {"recipients": ["jwe:k.pem"]}},
        ],
    }
    s = parse_spec(doc, base=tmp_path)
    assert dict(s.entries[0].convert) == {"compression": "gzip", "oci": True}
    assert s.entries[1].convert["recipients"] == [f"jwe:{tmp_path}/k.pem"]


@pytest.mark.parametrize(
    ("range_", "yes", "no"),
    [
        (">=1.2 <2", ["1.2.0", "v1.9.9", "1.2"], ["1.1.9", "2.0.0", "latest", "2.0.0-rc1"]),
        ("^1.2.3", ["1.2.3", "1.9.0"], ["2.0.0", "1.2.2"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("<1.0.0 || >=3", ["0.9.0", "3.1.0"], ["1.0.0", "2.5.0"]),
        ("=1.0.0", ["1.0.0"], ["1.0.0-rc1", "1.0.1"]),
        (">1.0.0-rc1", ["1.0.0-rc2", "1.0.0"], ["1.0.0-beta", "1.0.0-rc1"]),
    ],
)
def test_semver_ranges(range_: str, yes: list[str], no: list[str]):
    r = SemverRange.parse(range_)
    assert [t for t in yes if r.matches(t)] == yes
    assert [t for t in no if r.matches(t)] == []


def test_fingerprint_follows_the_options_and_the_recipient_keys(tmp_path: Path):
    key = tmp_path / "k.pem"
    key.write_bytes(b"key one")
    base = fingerprint({"compression": "zstd"})
    assert base == fingerprint({"compression": "zstd"})
    assert base != fingerprint({"compression": "gzip"})
    # decryption keys write nothing different; recipients do, by their bytes not paths
    assert base == fingerprint({"compression": "zstd", "decryptKeys": ["x.pem"]})
    with_key = fingerprint({"compression": "zstd", "recipients": [f"jwe:{key}"]})
    other = tmp_path / "other.pem"
    other.write_bytes(b"key one")
    assert with_key == fingerprint({"compression": "zstd", "recipients": [f"jwe:{other}"]})
    key.write_bytes(b"key two")
    assert with_key != fingerprint({"compression": "zstd", "recipients": [f"jwe:{key}"]})
    with pytest.raises(imgpipe.NotFound):
        fingerprint({"recipients": [f"jwe:{tmp_path}/missing.pem"]})


def _item(repo: str, tag: str) -> imgpipe.PlanItem:
    return imgpipe.PlanItem.make(
        f"r.io/{repo}:{tag}", f"d.io/{repo}:{tag}", {"compression": "zstd"}
    )


_names = st.lists(
    st.tuples(st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6})?", fullmatch=True), st.integers(0, 50)),
    min_size=1,
    max_size=40,
    unique=True,
)


@settings(max_examples=40, deadline=None)
@given(_names, _names, st.integers(1, 7), st.sampled_from(["repo", "item"]))
def test_shards_cover_the_plan_once_and_stay_put(old, new, n: int, by: str):
    plan = [_item(r, f"v{t}") for r, t in old]
    shards = [Shard(k, n).select(plan, by) for k in range(n)]
    assert sorted(i.id for s in shards for i in s) == sorted(i.id for i in plan)
    if by == "repo":  # a repository's tags are on one shard
        for s in shards:
            others = [i for t in shards if t is not s for i in t]
            assert not {i.repo_key for i in s} & {i.repo_key for i in others}
    grown = plan + [_item(r, f"v{t}") for r, t in new if (r, t) not in old]
    for k in range(n):
        before = {i.id for i in shards[k]}
        after = {i.id for i in Shard(k, n).select(grown, by)}
        assert before <= after  # an added image moves nothing already placed


def test_shard_spellings():
    assert parse_shard("1/3", {}) == Shard(1, 3)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "2"}, count=4) == Shard(2, 4)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "0", "IMGPIPE_SHARD_COUNT": "2"}) == Shard(
        0, 2
    )
    assert parse_shard("auto", {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3"}) == Shard(2, 3)
    for bad, env in [("3/3", {}), ("x", {}), ("auto", {}), ("auto", {"JOB_COMPLETION_INDEX": "0"})]:
        with pytest.raises(imgpipe.InvalidArgument):
            parse_shard(bad, env)


def _report(
    tmp_path: Path,
    name: str,
    plan: list[imgpipe.PlanItem],
    results: list[imgpipe.ItemResult],
    shard: str = "",
) -> Path:
    out = io.StringIO()
    w = ReportWriter(
        out, plan_digest=imgpipe.sync.plan_digest(plan), shard=shard, items=len(results)
    )
    for r in results:
        w.add(r)
    w.close()
    path = tmp_path / name
    path.write_text(out.getvalue())
    return path


def _done(item: imgpipe.PlanItem, status: str = "converted") -> imgpipe.ItemResult:
    return imgpipe.ItemResult(
        item.id, item.source, item.target, status, item.fingerprint, "sha256:s", "sha256:d"
    )  # type: ignore[arg-type]


def test_merge_takes_the_best_outcome_and_names_what_is_missing(tmp_path: Path):
    plan = [_item("a", "1"), _item("b", "1"), _item("c", "1")]
    failed = imgpipe.ItemResult.failure(plan[1], "HTTP 503", 13, retryable=True)
    r1 = _report(tmp_path, "r1", plan, [_done(plan[0]), failed], "0/2")
    r2 = _report(tmp_path, "r2", plan, [_done(plan[1], "skipped")], "1/2")
    reports = [read_report(r1), read_report(r2)]
    summary = merge_reports(reports, plan)
    assert (summary.count("converted"), summary.count("skipped"), summary.count("failed")) == (
        1,
        1,
        0,
    )
    assert summary.missing == (plan[2].id,)
    assert summary.exit_code == 1
    assert summary.duplicates == 1
    assert merge_reports(reports).exit_code == 0  # without the plan nothing is missing
    only_failed = merge_reports([read_report(r1)])
    assert only_failed.exit_code == 13
    # a report of another plan is refused
    r3 = _report(tmp_path, "r3", plan[:1], [_done(plan[0])])
    with pytest.raises(imgpipe.InvalidArgument, match="different plans"):
        merge_reports([read_report(r1), read_report(r3)])


def test_a_report_cut_mid_line_reads_up_to_the_cut(tmp_path: Path):
    plan = [_item("a", "1"), _item("b", "1")]
    path = _report(tmp_path, "r", plan, [_done(plan[0]), _done(plan[1])])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # killed while writing
    report = read_report(path)
    assert [r.id for r in report.results] == [plan[0].id]
    assert json.loads(lines[0])["kind"] == "header"


def test_plan_lines_and_pairs(tmp_path: Path):
    plan = [_item("a", "1"), _item("b", "2")]
    f = tmp_path / "plan.jsonl"
    with f.open("w") as out:
        imgpipe.write_plan(plan, out)
    assert imgpipe.read_plan(f) == plan
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# a comment\n\nr.io/a:1 docker://d.io/a:1\n")
    (item,) = imgpipe.read_plan(pairs, {"compression": "zstd"})
    assert item == plan[0]
    pairs.write_text("only-one-word\n")
    with pytest.raises(imgpipe.InvalidArgument, match=r"pairs.txt:1"):
        imgpipe.read_plan(pairs)


@pytest.mark.parametrize(
    ("text", "kind", "workers"),
    [
        ("threads:8", "threads", 8),
        ("processes:2", "processes", 2),
        ("dask-local:3", "dask-local", 3),
    ],
)
def test_executor_spellings(text: str, kind: str, workers: int):
    engine = imgpipe.parse_executor(text)
    assert (engine.kind, engine.workers) == (kind, workers)
    assert imgpipe.parse_executor("dask://sched:8786").address == "sched:8786"


def test_report_merge_command_names_what_is_missing(tmp_path: Path):
    import subprocess

    from conftest import IMGPIPE

    plan = [_item("a", "1"), _item("b", "1")]
    with (tmp_path / "plan.jsonl").open("w") as f:
        imgpipe.write_plan(plan, f)
    r1 = _report(tmp_path, "r1", plan, [_done(plan[0])])
    r = subprocess.run(
        [str(IMGPIPE), "report", "merge", str(r1), "--plan", str(tmp_path / "plan.jsonl")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "2 images: 1 converted, 0 skipped, 0 failed, 1 missing" in r.stdout
    assert "missing: 1 plan items in no report" in r.stderr
    r = subprocess.run(
        [str(IMGPIPE), "report", "merge", str(r1), "--json", "-o", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    last = json.loads(r.stdout.splitlines()[-1])
    assert (last["event"], last["exitCode"], last["converted"]) == ("result", 0, 1)
    assert json.loads((tmp_path / "m.json").read_text())["items"] == 1
