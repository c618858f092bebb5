"""What the local verbs import: the modules each loads, pinned as sets (start-up is part
of every command's cost; tests/test_cli.py pins --version's and images' registry-free
start-up). Each command runs in a fresh interpreter through ``cli.main.main``, and that
process writes its ``sys.modules`` to a file at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

#: What no local verb may load: the registry client and its TLS stack, the stream
#: processors, the transports.
REMOTE = {
    "urllib3",
    "ssl",
    "http.client",
    "imgpipe.remote",
    "imgpipe.processors",
    "imgpipe.transports",
}
#: Moved off the start-up path on purpose (each cost milliseconds): the other verbs'
#: modules, the garbage collector, the content writer, the pull pipeline's front end,
#: tracebacks (only --debug prints one), secrets (names come from os.urandom).
MOVED = {
    "imgpipe.cli.cmd_transfer",
    "imgpipe.cli.cmd_convert",
    "imgpipe.cli.cmd_sync",
    "imgpipe.metadata.gc",
    "imgpipe.content.writer",
    "traceback",
    "secrets",
}

# The modules, then the dataclasses defined (``module.qualname`` of every class in an
# imgpipe module's namespace that has dataclass fields), without importing dataclasses.
_DUMP = (
    "import json, sys\n"
    "from imgpipe.cli.main import main\n"
    "code = main(sys.argv[2:])\n"
    "mods = sorted(sys.modules)\n"
    "dcs = sorted({f'{v.__module__}.{v.__qualname__}'\n"
    "    for n in mods if n == 'imgpipe' or n.startswith('imgpipe.')\n"
    "    for v in list(vars(sys.modules[n]).values())\n"
    "    if isinstance(v, type) and '__dataclass_fields__' in v.__dict__})\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump([mods, dcs], f)\n"
    "sys.exit(code)\n"
)


def start_up_of(tmp_path: Path, *argv: str | Path) -> tuple[set[str], set[str]]:
    """The modules ``imgpipe ARGV`` has loaded when it ends (it must succeed), and the
    dataclasses (``module.qualname``) defined in imgpipe's modules by then."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP, out, *map(str, argv)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    mods, dcs = json.loads(out.read_text())
    return set(mods), set(dcs)


def modules_of(tmp_path: Path, *argv: str | Path) -> set[str]:
    """The modules ``imgpipe ARGV`` has loaded when it ends (it must succeed)."""
    return start_up_of(tmp_path, *argv)[0]


def loaded(modules: set[str], names: set[str]) -> set[str]:
    """The ``names`` loaded, each package counting with its submodules."""
    return {n for n in names if any(m == n or m.startswith(n + ".") for m in modules)}


@pytest.fixture(scope="module")
def stored(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding busybox (pulled, not unpacked)."""
    root = tmp_path_factory.mktemp("startup") / "root"
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    out = run_cli("-q", "pull", src, root=root)
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.parametrize(
    "argv",
    [["images"], ["inspect", "busybox"], ["content", "ls"], ["ps", "-a"], ["leases", "ls"]],
)
def test_local_verbs_load_no_registry_client(argv: list[str], stored: Path, tmp_path: Path) -> None:
    modules = modules_of(tmp_path, "--root", stored, *argv)
    assert loaded(modules, REMOTE | MOVED) == set()


@pytest.mark.parametrize("argv", [["images"], ["inspect", "busybox"], ["content", "ls"]])
def test_listings_load_no_runtime(argv: list[str], stored: Path, tmp_path: Path) -> None:
    """A listing reads the database and documents: no snapshotter, unpacker, task stage
    (with ctypes and subprocess) or pipeline runner."""
    modules = modules_of(tmp_path, "--root", stored, *argv)
    unused = {
        "imgpipe.snapshots",
        "imgpipe.unpacking",
        "imgpipe.task",
        "imgpipe.pipeline.pipeline",
        "subprocess",
        "ctypes",
    }
    assert loaded(modules, unused) == set()


def test_ps_opens_no_database(stored: Path, tmp_path: Path) -> None:
    """``ps`` reads the containers' records and the runtime's state: no SQLite, no
    content store, no digests."""
    modules = modules_of(tmp_path, "--root", stored, "ps", "-a")
    assert (
        loaded(modules, {"sqlite3", "hashlib", "imgpipe.content.store", "imgpipe.metadata"})
        == set()
    )


@pytest.mark.root
def test_run_of_an_unpacked_image_loads_only_the_run(stored: Path, tmp_path: Path) -> None:
    """``run --rm`` of an image already unpacked: no registry client, transport or
    processor, no layer applier or lazy mount (nothing is pulled or applied), nor what
    was moved off the path."""
    if os.geteuid() != 0:
        pytest.skip("running containers needs root (CI runs as root)")
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: apt-get install runc")
    out = run_cli("-q", "unpack", "busybox", root=stored)
    assert out.returncode == 0, out.stderr
    modules = modules_of(tmp_path, "--root", stored, "run", "--rm", "busybox", "/bin/true")
    unused = {"imgpipe.api", "imgpipe.unpacking.apply", "imgpipe.diff", "imgpipe.lazy"}
    assert loaded(modules, REMOTE | MOVED | unused) == set()
    assert "imgpipe.task.runner" in modules  # it did run through the task stage


# -- no dataclass on the start-up paths ------------------------------------------------

LOCAL_VERBS = [["images"], ["inspect", "busybox"], ["ps", "-a"]]


@pytest.mark.parametrize("argv", LOCAL_VERBS)
def test_local_verbs_define_no_dataclass(argv: list[str], stored: Path, tmp_path: Path) -> None:
    """Records, details, plans, snapshot records: NamedTuples or hand-written value
    classes (imgpipe.formats._record), none a dataclass."""
    _, dataclasses = start_up_of(tmp_path, "--root", stored, *argv)
    assert dataclasses == set()


@pytest.mark.parametrize("argv", [["images"], ["inspect", "busybox"]])
def test_local_verbs_import_no_dataclasses(argv: list[str], stored: Path, tmp_path: Path) -> None:
    modules, _ = start_up_of(tmp_path, "--root", stored, *argv)
    assert "dataclasses" not in modules


def test_ps_imports_no_dataclasses(stored: Path, tmp_path: Path) -> None:
    """``ps`` reads no image document: it needs no formats type either."""
    modules, dataclasses = start_up_of(tmp_path, "--root", stored, "ps", "-a")
    assert "dataclasses" not in modules
    assert dataclasses == set()


def _unpacked(stored: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root (CI runs as root)")
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: apt-get install runc")
    out = run_cli("-q", "unpack", "busybox", root=stored)
    assert out.returncode == 0, out.stderr
    return stored


@pytest.mark.root
def test_run_of_an_unpacked_image_defines_no_dataclass(stored: Path, tmp_path: Path) -> None:
    """``run --rm``: ContainerSettings, SnapshotRecord, the stages: no dataclass."""
    root = _unpacked(stored)
    _, dataclasses = start_up_of(tmp_path, "--root", root, "run", "--rm", "busybox", "/bin/true")
    assert dataclasses == set()


@pytest.mark.root
def test_run_of_an_unpacked_image_imports_no_dataclasses(stored: Path, tmp_path: Path) -> None:
    root = _unpacked(stored)
    modules, _ = start_up_of(tmp_path, "--root", root, "run", "--rm", "busybox", "/bin/true")
    assert "dataclasses" not in modules
