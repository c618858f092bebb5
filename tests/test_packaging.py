"""The project installs as a user would install it: a wheel in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# repository folder -> installed package
PACKAGE_DIRS = {
    "imgpipe": "imgpipe",
    "formats": "imgpipe.formats",
    "processors": "imgpipe.processors",
    "cli": "imgpipe.cli",
}


def all_modules() -> list[str]:
    """Every module the wheel must contain, by its installed dotted name."""
    mods = []
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = path.stem
            mods.append(package if name == "__init__" else f"{package}.{name}")
        for sub in sorted((REPO / folder).iterdir()):
            if sub.is_dir() and (sub / "__init__.py").exists():
                for path in sorted(sub.glob("*.py")):
                    name = path.stem
                    base = f"{package}.{sub.name}"
                    mods.append(base if name == "__init__" else f"{base}.{name}")
    return mods


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the project's wheel installed (no editable link)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(REPO),
        ],
        check=True,
    )
    wheels = list((tmp / "dist").glob("imgpipe-*.whl"))
    assert len(wheels) == 1, wheels
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    target = Path(
        subprocess.run(
            [
                env / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Third-party dependencies come from the test environment's site-packages (no
    # network in tests); the project itself only from the wheel.
    (target / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheels[0]),
        ],
        check=True,
    )
    return env


def test_wheel_installs_the_command(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [installed / "bin" / "imgpipe", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("imgpipe ")


def test_wheel_contains_every_module(installed: Path, tmp_path: Path) -> None:
    mods = all_modules()
    assert "imgpipe.formats.digest" in mods and "imgpipe.cli.main" in mods
    script = (
        "import importlib, sys\n"
        f"mods = {mods!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        "    assert mod.__file__.startswith(sys.prefix), (m, mod.__file__)\n"
        "import imgpipe\n"
        "assert (__import__('pathlib').Path(imgpipe.__file__).parent / 'py.typed').exists()\n"
        "print(len(mods))\n"
    )
    out = subprocess.run(
        [installed / "bin" / "python", "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(mods)


PUBLIC_API = {
    # unpack, run, convert
    "UnpackResult",
    "export_rootfs",
    "mount",
    "mount_lazy",  # mount --lazy: eStargz/zstd:chunked over FUSE (imgpipe.lazy)
    "prepare_rootfs",
    "snapshot_remove",
    "snapshots_list",
    "umount",
    "unpack",
    "ContainerSettings",
    "Task",
    "remove_container",
    "run",
    # run -d and the verbs around it
    "run_detached",
    "container_logs",
    "stop_container",
    "wait_container",
    "pass_host_env",
    "ConvertOptions",
    "ConvertReport",
    "Converter",
    "convert",
    # the store, the pipeline and the errors
    "AlreadyExists",
    "Conflict",
    "Context",
    "DigestMismatch",
    "Event",
    "EventKind",
    "FailedPrecondition",
    "ImageDetails",
    "ImagePlan",
    "ImgpipeError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidReference",
    "MalformedDocument",
    "ManifestDetails",
    "NotFound",
    "Observer",
    "Pipeline",
    "RemovedImages",
    "ResourceLimit",
    "SizeMismatch",
    "SourceDetails",
    "Stage",
    "Store",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "__version__",
    "content_list",
    "content_remove",
    "content_verify",
    "default_root",
    "gc",
    "images",
    "inspect",
    "inspect_source",
    "normalize_name",
    "pull",
    "pull_lazy",
    "push",
    "remove_image",
    "remove_images",
    "tag",
    # added by the spine (issue 10): what the command line needs, so it uses only these
    "CommandNotExecutable",
    "CommandNotFound",
    "ContainerStatus",
    "TransportOptions",
    "content_get",
    "default_registry_config",
    "list_containers",
    "login",
    "logout",
    "parse_env_file",
    "parse_volume",
    "pull_unpack",
    "registry_host",
    # issue 11: the system refusing the store's disk
    "NoSpace",
    "ReadOnlyStore",
    "StorageError",
    # issue 11 (interrupts): what Ctrl-C keeps, the leases that keep it, partial downloads
    "IngestDetails",
    "Interrupted",
    "Kept",
    "LazyRun",
    "LeaseDetails",
    "content_caches",
    "content_ingests",
    "lease_remove",
    "leases",
    # lazy reads (issue 14): estargz ls|cat and their errors
    "CorruptLayer",
    "RangeNotSupported",
    "estargz_cat",
    "estargz_list",
    # a catalogue (issue 16): imgpipe sync, convert --from-list, report merge
    "ItemResult",
    "PlanItem",
    "WorkerSettings",
    "convert_many",
    "merge_reports",
    "parse_executor",
    "parse_shard",
    "read_plan",
    "read_report",
    "run_plan",
    "sync_plan",
    "write_plan",
}


def test_public_api_is_pinned() -> None:
    """Adding or dropping a public name is a decision: change this set with it."""
    import imgpipe

    assert set(imgpipe.__all__) == PUBLIC_API
    assert len(imgpipe.__all__) == len(PUBLIC_API)
    for name in imgpipe.__all__:
        assert getattr(imgpipe, name) is not None, name
