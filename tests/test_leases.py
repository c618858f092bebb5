"""Expiring leases: what a failed or interrupted run keeps, and what ``gc`` frees after.

A run's lease carries containerd's ``containerd.io/gc.expire``; while it lives, the blobs
and partial downloads (ingests) it holds survive ``gc``; once it expired, ``gc`` deletes it
and what only it held, and the partial downloads nobody leases once they are older than
the expiry. ``imgpipe leases ls|rm`` and ``content ls --ingests`` show and drop them.
Expiry is judged at a ``now`` the test passes (or a tiny configured expiry): no sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE, run_cli

import imgpipe
from imgpipe import Context, ImagePlan, Interrupted, Pipeline, Store
from imgpipe.config import DEFAULT_LEASE_EXPIRY, lease_expiry, parse_duration
from imgpipe.errors import InvalidArgument
from imgpipe.formats.digest import Digest
from imgpipe.formats.reference import parse_transport
from imgpipe.metadata import LABEL_GC_EXPIRE

PAST = "2000-01-01T00:00:00Z"


class CtrlC:
    """A user stage that stands for Ctrl-C arriving right after the blobs are in, the
    first time it runs (the user runs the command again, and it goes through)."""

    name = "ctrl-c"

    def __init__(self) -> None:
        self.fired = False

    def run(self, plan: ImagePlan, ctx: Context) -> ImagePlan:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt("interrupted by SIGINT")
        return plan


def partial(store: Store, data: bytes, keep: int) -> Digest:
    """A download of ``data`` cut after ``keep`` bytes: an ingest left for a resume."""
    digest = Digest.from_bytes(data)
    with store.content.writer(f"import-{digest}", expected=digest, total=len(data)) as w:
        w.write(data[:keep])
    return digest


def test_interrupted_pull_keeps_its_blobs_under_an_expiring_lease(
    fixture_dir: Path, store: Store
) -> None:
    src = parse_transport(f"oci:{fixture_dir / 'layered'}:layered")
    pipeline = Pipeline.pull().insert_after("fetch-blobs", CtrlC())
    before = time.time()
    with pytest.raises(Interrupted) as caught:
        pipeline.run(src, store=store, lease_expiry=3600)
    kept = caught.value.kept
    assert str(caught.value) == "interrupted by SIGINT"
    stored = {i.digest for i in store.content.walk()}
    # the manifest, the config and the four layers: all this run committed
    assert {d for d, _ in kept.blobs} == stored and len(stored) == 6
    assert kept.lease is not None and kept.expires_at is not None
    assert before + 3600 <= kept.expires_at <= time.time() + 3600
    (lease,) = store.db.leases()
    assert lease.id == kept.lease
    assert lease.labels[LABEL_GC_EXPIRE].endswith("Z")
    assert lease.labels["imgpipe.subject"] == str(src)
    assert imgpipe.images(store=store) == []

    assert "imgpipe.ended" in lease.labels  # no running process needs it any more

    # a gc now keeps everything (the lease lives); the next pull fetches nothing, and
    # once it succeeded the lease the interrupted attempt left goes (the image holds all)
    assert imgpipe.gc(store=store).removed_blobs == ()
    events: list[imgpipe.Event] = []
    pipeline.run(src, store=store, observer=events.append)
    assert imgpipe.EventKind.BLOB_DONE not in {e.kind for e in events}
    assert store.db.leases() == []
    assert imgpipe.gc(store=store, now=kept.expires_at + 1).removed_blobs == ()


def test_a_running_attempt_keeps_its_lease_when_another_succeeds(
    fixture_dir: Path, store: Store
) -> None:
    """Only leases of *ended* attempts go with a success: one still running (here: not
    labelled ended, as a live run's is not) stays, whatever it is for."""
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    running = store.db.create_lease(
        labels={"imgpipe.pipeline": ",".join(Pipeline.pull().names()), "imgpipe.subject": src}
    )
    imgpipe.pull(src, store=store)
    assert [rec.id for rec in store.db.leases()] == [running]


def test_gc_after_the_expiry_frees_what_only_the_lease_held(
    fixture_dir: Path, store: Store
) -> None:
    pipeline = Pipeline.pull().insert_after("fetch-blobs", CtrlC())
    with pytest.raises(Interrupted) as caught:
        pipeline.run(parse_transport(f"oci:{fixture_dir / 'busybox'}:busybox"), store=store)
    kept = caught.value.kept
    assert kept.expires_at is not None
    assert kept.expires_at == pytest.approx(time.time() + DEFAULT_LEASE_EXPIRY, abs=60)
    dry = imgpipe.gc(store=store, now=kept.expires_at + 1, dry_run=True)
    assert dry.removed_blobs and list(store.content.walk())  # dry run: all still there
    result = imgpipe.gc(store=store, now=kept.expires_at + 1)
    assert result.removed_leases == (kept.lease,)
    assert sorted(result.removed_blobs) == sorted(kept.blobs)
    assert result.bytes_freed == sum(n for _, n in kept.blobs)
    assert list(store.content.walk()) == []


def test_a_lease_keeps_its_partial_download_however_old(store: Store) -> None:
    held = partial(store, b"h" * 5000, 1234)
    loose = partial(store, b"l" * 5000, 777)
    lease_id = store.db.create_lease(expires_in=None)  # never expires
    store.db.lease_add(lease_id, "content", str(held))  # as a pull leases a blob first
    # now: both stay (the unleased one is young); a day later only the leased one
    assert len(imgpipe.gc(store=store).removed_ingests) == 0
    later = time.time() + DEFAULT_LEASE_EXPIRY + 60
    result = imgpipe.gc(store=store, now=later)
    assert result.removed_ingests == (f"import-{loose}",)
    assert result.ingest_sizes == (777,)
    assert result.bytes_freed == 777
    assert [i.ref for i in store.content.ingests()] == [f"import-{held}"]
    (details,) = imgpipe.content_ingests(store=store)
    assert details.status.offset == 1234 and details.leases == (lease_id,)


def test_leases_rm_frees_its_partial_downloads_at_once(store: Store) -> None:
    digest = partial(store, b"p" * 4000, 1000)
    lease_id = store.db.create_lease()
    store.db.lease_add(lease_id, "content", str(digest))
    with pytest.raises(imgpipe.NotFound):
        imgpipe.lease_remove([lease_id, "no-such-lease"], store=store)
    assert [d.record.id for d in imgpipe.leases(store=store)] == [lease_id]  # none deleted
    result = imgpipe.lease_remove([lease_id], store=store)
    assert result is not None
    assert result.removed_ingests == (f"import-{digest}",)
    assert result.bytes_freed == 1000
    assert imgpipe.leases(store=store) == []


def test_lease_expiry_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGPIPE_LEASE_EXPIRY", raising=False)
    monkeypatch.setenv("IMGPIPE_CONFIG", str(tmp_path / "conf"))
    assert lease_expiry() == DEFAULT_LEASE_EXPIRY  # no file: the default
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.toml").write_text('[gc]\nlease-expiry = "90m"\n')
    assert lease_expiry() == 5400
    monkeypatch.setenv("IMGPIPE_LEASE_EXPIRY", "2d")
    assert lease_expiry() == 2 * 86400
    monkeypatch.setenv("IMGPIPE_LEASE_EXPIRY", "soon")
    with pytest.raises(InvalidArgument, match="IMGPIPE_LEASE_EXPIRY"):
        lease_expiry()


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("1.5d", 129600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "h", "1w", "inf", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument, match="positive duration"):
        parse_duration(text, "x")


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [IMGPIPE, "--root", root, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_the_commands_show_and_free_leases_and_ingests(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Store(root) as store:
        leased = partial(store, b"a" * 3000, 1500)
        stale = partial(store, b"b" * 3000, 2500)
        lease_id = store.db.create_lease(labels={"imgpipe.subject": "docker://x/y:1"})
        store.db.lease_add(lease_id, "content", str(leased))
        expired = store.db.create_lease(labels={LABEL_GC_EXPIRE: PAST})

    table = run_cli("content", "ls", "--ingests", root=root)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["REF", "SIZE", "UPDATED", "STATE"]
    row = next(line for line in lines if str(leased) in line)
    assert "1.5 kB/3 kB" in row and f"leased {lease_id}" in row

    listed = json.loads(run_cli("leases", "ls", "--json", root=root).stdout)
    assert [(x["id"], x["expired"]) for x in listed] == [(lease_id, False), (expired, True)]
    table = run_cli("leases", "ls", root=root).stdout
    assert "docker://x/y:1" in table and "1 content" in table and "expired" in table

    # gc with a tiny expiry: the expired lease goes, the stale unleased ingest goes (its
    # size said), the leased one stays
    out = _cli(root, "gc", env={"IMGPIPE_LEASE_EXPIRY": "0.001"})
    assert out.returncode == 0, out.stderr
    assert f"removed expired lease {expired}" in out.stdout
    assert f"removed ingest import-{stale} 2.5 kB" in out.stdout
    assert "freed 2.5 kB (0 blob(s), 1 ingest(s), 1 lease(s))" in out.stdout
    assert str(leased) not in out.stdout
    assert "kept 1 partial download(s) (1.5 kB) that leases" in out.stdout

    missing = run_cli("leases", "rm", "nope", root=root)
    assert missing.returncode == 5
    assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr
    gone = run_cli("leases", "rm", lease_id, root=root)
    assert gone.returncode == 0, gone.stderr
    assert f"removed ingest import-{leased} 1.5 kB" in gone.stdout
    assert json.loads(run_cli("content", "ls", "--ingests", "--json", root=root).stdout) == []
    assert json.loads(run_cli("leases", "ls", "--json", root=root).stdout) == []
