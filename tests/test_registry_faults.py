"""A hostile registry: the fault proxy in front of the real one.

Each case ends in a clear one-line error or a transparent recovery; either way nothing
wrong is committed (``content verify`` is clean, no image is recorded after a failure),
and the next pull from the good registry succeeds into the same store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IMGPIPE, run_cli
from faultproxy import FaultProxy
from registry_fixtures import LayoutImage, Registry, make_random_image, read_layout

EXIT_DIGEST_MISMATCH = 8
EXIT_SIZE_MISMATCH = 9
EXIT_UNAVAILABLE = 13

ProxyFactory = Callable[[Registry], FaultProxy]


@pytest.fixture(scope="module")
def image(registry: Registry, fixture_dir: Path) -> LayoutImage:
    """``faults/layered:v1`` in the open registry: 4 layers, the first about 1 MB."""
    registry.push_layout(fixture_dir / "layered", "layered", "faults/layered", "v1")
    return read_layout(fixture_dir / "layered", "layered")


def big_layer(img: LayoutImage) -> tuple[str, int]:
    return max(img.layers, key=lambda layer: layer[1])


def blob_path(digest: str) -> str:
    return f"/blobs/{digest}$"


def images(root: Path) -> list[dict[str, object]]:
    r = run_cli("images", "--json", root=root)
    assert r.returncode == 0, r.stderr
    out: list[dict[str, object]] = json.loads(r.stdout)
    return out


def assert_clean_failure(r: subprocess.CompletedProcess[str], root: Path, code: int) -> None:
    """A one-line error with ``code``; the store verifies and holds no image."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgpipe: error:"), r.stderr
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert images(root) == []


def assert_good_pull(registry: Registry, img: LayoutImage, root: Path) -> None:
    """The next pull from the good registry lands the right image in the same store."""
    r = run_cli("pull", registry.ref("faults/layered", "v1"), root=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == img.manifest_digest
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def pull_via(
    proxy: FaultProxy, root: Path, ref: str = "faults/layered:v1"
) -> subprocess.CompletedProcess[str]:
    # --quiet: only the result or the error line, so the tests can count lines
    return run_cli("--quiet", "pull", f"{proxy.host}/{ref}", root=root)


def test_proxy_is_transparent(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    r = pull_via(proxy, tmp_path / "root")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == image.manifest_digest
    digest, size = big_layer(image)
    assert proxy.served(blob_path(digest)) == size
    assert all("authorization" not in {k.lower() for k in req.headers} for req in proxy.requests)


def test_corrupt_byte_is_digest_mismatch(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, size = big_layer(image)
    proxy.corrupt(blob_path(digest), offset=size // 2)  # every time, retries included
    root = tmp_path / "root"
    r = pull_via(proxy, root)
    assert_clean_failure(r, root, EXIT_DIGEST_MISMATCH)
    assert digest in r.stderr
    stored = run_cli("content", "ls", "--json", root=root)
    assert digest not in {blob["digest"] for blob in json.loads(stored.stdout)}
    assert_good_pull(registry, image, root)


def test_truncated_blob_is_a_clear_error(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, _ = big_layer(image)
    proxy.truncate(blob_path(digest), after=0)  # every request: headers, then nothing
    root = tmp_path / "root"
    r = pull_via(proxy, root)
    assert r.returncode in (EXIT_UNAVAILABLE, EXIT_SIZE_MISMATCH), r.stderr
    assert_clean_failure(r, root, r.returncode)
    # bounded: a few attempts, not a loop
    assert 1 <= len(proxy.log(blob_path(digest), "GET")) <= 10
    assert_good_pull(registry, image, root)


def test_dropped_connection_resumes_with_range(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, size = big_layer(image)
    proxy.drop_once(blob_path(digest), after=size // 3)
    root = tmp_path / "root"
    r = pull_via(proxy, root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == image.manifest_digest
    gets = proxy.log(blob_path(digest), "GET")
    assert len(gets) == 2, gets
    rng = {k.lower(): v for k, v in gets[1].headers.items()}.get("range", "")
    assert rng.startswith("bytes=") and int(rng[6:].split("-")[0]) > 0, rng
    # the resumed request did not start over
    assert proxy.served(blob_path(digest)) < size + size // 3
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0


def test_server_errors_then_success_recover(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, _ = big_layer(image)
    proxy.fail("/manifests/", status=503, times=2)
    proxy.fail(blob_path(digest), status=500, times=2, method="GET")
    r = pull_via(proxy, tmp_path / "root")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == image.manifest_digest
    statuses = [req.status for req in proxy.log(blob_path(digest), "GET")]
    assert statuses == [500, 500, 200]


def test_server_errors_forever_are_unavailable(
    registry: Registry, image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, _ = big_layer(image)
    proxy.fail(blob_path(digest), status=503, times=1000, method="GET")
    root = tmp_path / "root"
    r = pull_via(proxy, root)
    assert_clean_failure(r, root, EXIT_UNAVAILABLE)
    assert 1 < len(proxy.log(blob_path(digest), "GET")) <= 10  # retried, but bounded
    assert_good_pull(registry, image, root)


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_wrong_manifest_for_digest_is_refused(  # noqa: PLR0917
    registry: Registry,
    image: LayoutImage,
    fixture_dir: Path,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    by: str,
) -> None:
    other = read_layout(fixture_dir / "busybox", "busybox")
    other_raw = (
        fixture_dir / "busybox" / "blobs" / "sha256" / other.manifest_digest.split(":")[1]
    ).read_bytes()
    proxy = fault_proxy(registry)
    # every GET of the manifest, by tag or digest, answers busybox's (a valid manifest)
    proxy.replace_body("/v2/faults/layered/manifests/", other_raw)
    root = tmp_path / "root"
    ref = f"faults/layered@{image.manifest_digest}" if by == "digest" else "faults/layered:v1"
    r = pull_via(proxy, root, ref)
    # a body of another size is caught by its length, one of the same size by its hash
    assert r.returncode in (EXIT_DIGEST_MISMATCH, EXIT_SIZE_MISMATCH), r.stderr
    assert_clean_failure(r, root, r.returncode)
    assert_good_pull(registry, image, root)


# -- killed mid-layer, then resumed --------------------------------------------------------


@pytest.fixture(scope="module")
def big_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    layout = tmp_path_factory.mktemp("big-layout")
    img = make_random_image(layout, "big", [24 << 20, 64 << 10], seed=7)
    registry.push_layout(layout, "big", "faults/big", "v1")
    return img


def test_sigkill_mid_layer_then_rerun_downloads_less(
    registry: Registry, big_image: LayoutImage, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    digest, size = big_layer(big_image)
    half = size // 2
    # the proxy sends half the layer, then holds the connection: the kill lands mid-layer
    proxy.stall(blob_path(digest), after=half)
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [IMGPIPE, "--root", str(root), "pull", proxy.ref("faults/big", "v1")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while proxy.served(blob_path(digest)) < half:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the pull never reached the stall point"
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        # let the client's writes of what it received reach the ingest file
        ingest = root / "content" / "ingest"
        while time.monotonic() < deadline and _ingest_bytes(ingest) < half // 2:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        proxy.release()
    first = proxy.served(blob_path(digest))
    assert first == half

    proxy.reset_counters()
    r = run_cli("pull", proxy.ref("faults/big", "v1"), root=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == big_image.manifest_digest
    second = proxy.served(blob_path(digest))
    assert 0 < second < size, f"re-run downloaded {second} of {size} bytes"
    gets = proxy.log(blob_path(digest), "GET")
    assert any("bytes=" in v for g in gets for k, v in g.headers.items() if k.lower() == "range")
    verify = run_cli("content", "verify", root=root)
    assert verify.returncode == 0, verify.stdout


def _ingest_bytes(ingest: Path) -> int:
    if not ingest.exists():
        return 0
    return sum(p.stat().st_size for p in ingest.rglob("*") if p.is_file())
