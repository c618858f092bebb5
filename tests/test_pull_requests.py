"""What a pull asks the registry: each round trip counted, through the fault proxy
(transparent here) in front of the real registry.

A pull resolves its tag with one GET (no HEAD first: the body is read next anyway),
fetches every blob once, and a second pull into the same store fetches no blob.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli
from faultproxy import FaultProxy
from registry_fixtures import LayoutImage, Registry, read_layout


@pytest.fixture(scope="module")
def image(registry: Registry, fixture_dir: Path) -> LayoutImage:
    registry.push_layout(fixture_dir / "layered", "layered", "requests/layered", "v1")
    return read_layout(fixture_dir / "layered", "layered")


def _requests(proxy: FaultProxy) -> Counter[tuple[str, str]]:
    """(method, kind) of every request: kind is manifests/<tag>, manifests/<digest> or
    blobs (the /v2/ ping and token requests left out)."""
    out: Counter[tuple[str, str]] = Counter()
    for req in proxy.requests:
        path = req.path.split("?")[0]
        if "/manifests/sha256:" in path:
            out[(req.method, "manifest by digest")] += 1
        elif "/manifests/" in path:
            out[(req.method, "manifest by tag")] += 1
        elif "/blobs/" in path:
            out[(req.method, "blob")] += 1
    return out


def test_a_pull_resolves_with_one_get_and_fetches_each_blob_once(
    registry: Registry,
    image: LayoutImage,
    fault_proxy: Callable[[Registry], FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry)
    root = tmp_path / "root"
    ref = f"{proxy.host}/requests/layered:v1"
    r = run_cli("--quiet", "pull", ref, root=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == image.manifest_digest
    blobs = 1 + len(image.layers)  # the config and the layers
    assert _requests(proxy) == {("GET", "manifest by tag"): 1, ("GET", "blob"): blobs}
    proxy.reset_counters()
    again = run_cli("--quiet", "pull", ref, root=root)
    assert again.returncode == 0, again.stderr
    assert _requests(proxy) == {("GET", "manifest by tag"): 1}
