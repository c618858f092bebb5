"""Ctrl-C and SIGTERM in the middle of a transfer, as a user meets them.

The registry is the real one, behind tests/faultproxy.py throttled to a slow link (all
connections together), so a signal lands while layers are still moving. What is checked:
the command exits 130 soon after the signal (the issue's bound is 1 s; asserted with a
margin for a loaded machine, the measured figure printed), the layers committed before
it are still in the store, the partial downloads are kept as ingests under an expiring
lease, and the re-run fetches at most the missing bytes, counted at the proxy.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE, run_cli
from faultproxy import FaultProxy
from registry_fixtures import Registry, make_random_image

from imgpipe.store import Store

#: The slow link: bytes per second over every connection of the proxy.
LINK_RATE = 4_000_000
#: The issue asks for an exit within 1 s of the signal; this is that bound with room for
#: two cores shared by a whole test session (the figure measured is printed).
EXIT_BOUND = 3.0
#: Layer sizes: a small one that is done early, then three that are still moving.
LAYERS = [1 << 20, 6 << 20, 6 << 20, 6 << 20]


@pytest.fixture(scope="module")
def slow_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-layer image of incompressible bytes in the registry; its manifest."""
    layout = tmp_path_factory.mktemp("interrupt-image") / "layout"
    image = make_random_image(layout, "v1", LAYERS, seed=11)
    registry.push_layout(layout, "v1", "interrupts/slow", "v1")
    return image.manifest


def _events(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def _interrupt_when_partial(
    proc: subprocess.Popen[str], sig: int, layers: set[str], moving_layer: str = ""
) -> tuple[set[str], float]:
    """Read ``proc``'s JSON events until one layer is done and another one (``moving_layer``
    if given) has bytes in, then send ``sig``. (The layers done, the seconds from the
    signal to the exit.)"""
    done: set[str] = set()
    moving: set[str] = set()
    for event in _events(proc):
        digest = event.get("digest", "")
        if digest not in layers:
            continue
        if event["event"] == "blob.done":
            done.add(digest)
        elif event["event"] == "blob.progress" and event.get("offset", 0) > 0:
            moving.add(digest)
        if done and (moving_layer in moving if moving_layer else moving - done):
            break
    else:
        raise AssertionError("the pull ended before it could be interrupted")
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return done, time.monotonic() - sent


def _run_and_interrupt(
    argv: list[str | Path], sig: int, layers: set[str], moving_layer: str = ""
) -> tuple[set[str], float, int, str]:
    """Start ``argv``, interrupt it as :func:`_interrupt_when_partial` does: (layers done,
    seconds from the signal to the exit, exit code, stderr)."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            done, latency = _interrupt_when_partial(proc, sig, layers, moving_layer)
        finally:
            proc.kill()  # a no-op once it exited; a hung one must not outlive the test
            proc.wait()
        assert proc.stderr is not None
        return done, latency, proc.returncode, proc.stderr.read()


def _have(root: Path, blobs: dict[str, int]) -> tuple[set[str], dict[str, int]]:
    """The image's blobs committed in the store, and the bytes of its partial ingests."""
    with Store(root) as s:
        committed = {str(i.digest) for i in s.content.walk()} & set(blobs)
        partial = {
            str(i.expected): i.offset
            for i in s.content.ingests()
            if i.expected is not None and str(i.expected) in blobs
        }
    return committed, partial


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_pull_keeps_what_arrived_and_rerun_fetches_only_the_rest(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
    sig: int,
) -> None:
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    root = tmp_path / "root"
    ref = proxy.ref("interrupts/slow", "v1")
    layers = {d["digest"]: d["size"] for d in slow_image["layers"]}
    blobs = {**layers, slow_image["config"]["digest"]: slow_image["config"]["size"]}

    done, latency, code, err = _run_and_interrupt(
        [IMGPIPE, "--root", root, "pull", "--json", ref], sig, set(layers)
    )
    print(f"\n{signal.Signals(sig).name}: exit {latency:.3f} s after the signal\n{err.strip()}")
    assert code == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and "kept" in err and "lease" in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line

    committed, partial = _have(root, blobs)
    assert done <= committed  # every layer shown done is still there
    assert partial and all(n > 0 for n in partial.values())
    ingests = json.loads(run_cli("content", "ls", "--ingests", "--json", root=root).stdout)
    assert {i["expected"] for i in ingests} >= set(partial)
    (lease,) = json.loads(run_cli("leases", "ls", "--json", root=root).stdout)
    assert all(lease["id"] in i["leases"] for i in ingests if i["expected"] in partial)
    assert lease["labels"]["imgpipe.subject"].endswith(ref)
    assert not lease["expired"]
    assert run_cli("images", root=root).stdout.count("interrupts/slow") == 0  # nothing named

    missing = sum(n for d, n in blobs.items() if d not in committed) - sum(partial.values())
    proxy.reset_counters()
    proxy.throttle(None)
    again = run_cli("pull", ref, root=root)
    assert again.returncode == 0, again.stderr
    refetched = proxy.served("/blobs/")
    print(
        f"{signal.Signals(sig).name}: kept {len(committed)} blobs and "
        f"{sum(partial.values())} partial bytes; re-run fetched {refetched} blob bytes, "
        f"missing were {missing} (of {sum(blobs.values())})"
    )
    assert refetched <= missing
    assert run_cli("content", "verify", root=root).returncode == 0

    # the successful re-run dropped the lease the interrupted one left: the image holds
    # every blob now
    assert json.loads(run_cli("leases", "ls", "--json", root=root).stdout) == []


def test_convert_between_registries_interrupted_writes_no_tag_and_rerun_skips(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
) -> None:
    """convert registry to registry, the source behind the slow link: SIGINT once a layer
    is in the destination. No tag is written; the re-run finds that layer there."""
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    src = proxy.ref("interrupts/slow", "v1")
    dst = registry.ref("interrupts/converted", "v1")
    layers = {d["digest"] for d in slow_image["layers"]}
    done, latency, code, err = _run_and_interrupt(
        [IMGPIPE, "--root", tmp_path / "root", "convert", "--json", src, dst],
        signal.SIGINT,
        layers,
    )
    print(f"\nconvert: exit {latency:.3f} s after SIGINT")
    assert code == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and "the destination has the" in err, err
    status, _, _ = registry.request("HEAD", "/v2/interrupts/converted/manifests/v1")
    assert status == 404  # no tag written

    proxy.throttle(None)
    report_file = tmp_path / "report.json"
    again = run_cli("convert", "--report", report_file, src, dst, root=tmp_path / "root")
    assert again.returncode == 0, again.stderr
    report = json.loads(report_file.read_text())
    exists = {
        layer["before"]["digest"] for layer in report["layers"] if layer["action"] == "exists"
    }
    assert done <= exists


def test_push_interrupted_writes_no_tag_and_rerun_skips_what_arrived(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
) -> None:
    """push to a registry behind the slow link (uploads throttled): SIGINT once a layer is
    up. No tag; the re-run finds the layers that made it (blob.exists), uploads the rest."""
    root = tmp_path / "root"
    pulled = run_cli("pull", "--name", "slow:1", registry.ref("interrupts/slow", "v1"), root=root)
    assert pulled.returncode == 0, pulled.stderr
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    dst = proxy.ref("interrupts/pushed", "v1")
    layers = {d["digest"] for d in slow_image["layers"]}
    done, latency, code, err = _run_and_interrupt(
        [IMGPIPE, "--root", root, "push", "--json", "slow:1", dst], signal.SIGINT, layers
    )
    print(f"\npush: exit {latency:.3f} s after SIGINT")
    assert code == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and len(err.strip().splitlines()) == 1, err
    assert "the destination has the" in err and "skip them" in err, err
    status, _, _ = registry.request("HEAD", "/v2/interrupts/pushed/manifests/v1")
    assert status == 404  # no tag written
    assert json.loads(run_cli("leases", "ls", "--json", root=root).stdout) == []  # none left

    proxy.throttle(None)
    again = subprocess.run(
        [IMGPIPE, "--root", root, "push", "--json", "slow:1", dst],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    exists = {e["digest"] for e in events if e["event"] == "blob.exists"}
    assert done <= exists
    assert registry.manifest_digest("interrupts/pushed", "v1")


def test_pull_unpack_interrupted_keeps_blobs_and_layers_and_resumes(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``pull --unpack`` (native snapshots: no root needed) interrupted while layers still
    download: exit 130, nothing named, no active snapshot left; the re-run fetches only
    what is missing and completes the unpack."""
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    root = tmp_path / "root"
    ref = proxy.ref("interrupts/slow", "v1")
    layers = {d["digest"]: d["size"] for d in slow_image["layers"]}
    blobs = {**layers, slow_image["config"]["digest"]: slow_image["config"]["size"]}
    argv: list[str | Path] = ["pull", "--unpack", "--snapshotter", "native"]
    done, latency, code, err = _run_and_interrupt(
        [IMGPIPE, "--root", root, *argv, "--json", ref], signal.SIGINT, set(layers)
    )
    print(f"\npull --unpack: exit {latency:.3f} s after SIGINT")
    assert code == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and "kept" in err, err
    committed, partial = _have(root, blobs)
    assert done <= committed
    snaps = json.loads(run_cli("snapshots", "ls", "--json", root=root).stdout)
    assert all(s.get("kind") != "active" for s in snaps), snaps  # the half-applied one went

    missing = sum(n for d, n in blobs.items() if d not in committed) - sum(partial.values())
    proxy.reset_counters()
    proxy.throttle(None)
    again = run_cli(*argv, ref, root=root)
    assert again.returncode == 0, again.stderr
    assert proxy.served("/blobs/") <= missing
    assert run_cli("content", "verify", root=root).returncode == 0


def test_run_interrupted_in_its_pull_keeps_what_arrived(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``run REF`` of an image not stored yet pulls it first: Ctrl-C there is the pull's
    interrupt (exit 130, what arrived kept, no container made); a later pull resumes."""
    proxy = fault_proxy(registry)
    proxy.throttle(LINK_RATE)
    root = tmp_path / "root"
    ref = proxy.ref("interrupts/slow", "v1")
    layers = {d["digest"]: d["size"] for d in slow_image["layers"]}
    blobs = {**layers, slow_image["config"]["digest"]: slow_image["config"]["size"]}
    # run prints no JSON events: watch the store for the first committed layer instead
    with subprocess.Popen(
        [IMGPIPE, "--root", root, "run", "--rm", "--snapshotter", "native", ref, "true"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            blob_dir = root / "content" / "blobs" / "sha256"
            layer_files = {d.split(":")[1] for d in layers}
            while proc.poll() is None:
                # polling the store is the only sign run gives; each look is a wait on
                # the process, not a clock
                if blob_dir.is_dir() and layer_files & {p.name for p in blob_dir.iterdir()}:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            assert proc.poll() is None, "run ended before it could be interrupted"
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            latency = time.monotonic() - sent
        finally:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read()
    print(f"\nrun (pulling): exit {latency:.3f} s after SIGINT")
    assert proc.returncode == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and "kept" in err, err
    committed, partial = _have(root, blobs)
    assert committed & set(layers)
    listed = run_cli("ps", root=root)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1:] == []  # no container

    missing = sum(n for d, n in blobs.items() if d not in committed) - sum(partial.values())
    proxy.reset_counters()
    proxy.throttle(None)
    again = run_cli("pull", ref, root=root)
    assert again.returncode == 0, again.stderr
    assert proxy.served("/blobs/") <= missing


def test_sigint_with_a_stalled_download_exits_without_waiting_for_it(
    registry: Registry,
    fault_proxy: Callable[[Registry], FaultProxy],
    slow_image: dict[str, Any],
    tmp_path: Path,
) -> None:
    """One layer's server goes silent mid-blob (the read would wait 60 s for its timeout):
    Ctrl-C still ends the pull at once, the bytes that arrived stay, the re-run resumes."""
    proxy = fault_proxy(registry)
    big = slow_image["layers"][1]
    proxy.stall(f"/blobs/{big['digest']}", after=1 << 20)
    root = tmp_path / "root"
    ref = proxy.ref("interrupts/slow", "v1")
    layers = {d["digest"]: d["size"] for d in slow_image["layers"]}
    blobs = {**layers, slow_image["config"]["digest"]: slow_image["config"]["size"]}
    done, latency, code, err = _run_and_interrupt(  # once the stalled layer has bytes in
        [IMGPIPE, "--root", root, "pull", "--json", ref], signal.SIGINT, set(layers), big["digest"]
    )
    print(f"\nstalled: exit {latency:.3f} s after SIGINT")
    assert code == 130, err
    assert latency < EXIT_BOUND
    assert "interrupted" in err and "kept" in err, err
    committed, partial = _have(root, blobs)
    assert big["digest"] not in committed and done <= committed
    assert 0 < partial.get(big["digest"], 0) <= 1 << 20

    missing = sum(n for d, n in blobs.items() if d not in committed) - sum(partial.values())
    proxy.reset_counters()
    again = run_cli("pull", ref, root=root)
    assert again.returncode == 0, again.stderr
    assert proxy.served("/blobs/") <= missing
