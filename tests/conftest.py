"""Shared test fixtures: the fixture images, a fresh store, the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # for `import fixtures.build`

from imgpipe.store import Store  # noqa: E402

# The real registry (Debian's docker-registry) and the servers around it; a private
# containerd (Debian's 1.6) with ctr and ctr-remote; the generated sync catalogue.
pytest_plugins = ["registry_fixtures", "containerd_fixture", "sync_catalogue"]

IMGPIPE = Path(sys.executable).parent / "imgpipe"


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fixture image, built once per test session (read-only: copy to modify)."""
    from fixtures.build import build_all

    out = tmp_path_factory.mktemp("fixtures")
    build_all(out)
    return out


@pytest.fixture
def layout_copy(fixture_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A function copying a fixture layout into the test's own directory, to damage it."""

    def copy(name: str) -> Path:
        dst = tmp_path / "layouts" / name
        shutil.copytree(fixture_dir / name, dst)
        for p in dst.rglob("*"):
            if p.is_file():
                p.chmod(0o644)
        return dst

    return copy


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "root") as s:
        yield s


def run_cli(
    *args: str | os.PathLike[str], root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `imgpipe` command, as a user would."""
    argv: list[str | os.PathLike[str]] = [IMGPIPE]
    if root is not None:
        argv += ["--root", root]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300)


def after_leases_expire(store: Store | Path) -> None:
    """A ``gc`` as it runs once every lease a failed run left has expired: what that run
    kept for a retry (its lease holds it, ``imgpipe.config.lease_expiry``) goes then."""
    import time

    import imgpipe
    from imgpipe.metadata import DEFAULT_LEASE_EXPIRY

    later = time.time() + 2 * DEFAULT_LEASE_EXPIRY
    if isinstance(store, Store):
        imgpipe.gc(store=store, now=later, ingest_expiry=DEFAULT_LEASE_EXPIRY)
    else:
        imgpipe.gc(root=store, now=later, ingest_expiry=DEFAULT_LEASE_EXPIRY)
