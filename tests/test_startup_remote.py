"""What the registry and converting verbs import: each only what it uses.

Module sets, never times: a verb is run in a fresh interpreter (``imgpipe.cli.main``, as
the entry point runs it) and the modules it left in ``sys.modules`` are compared with
what it has no use for. The registry client's stack (urllib3, ssl, http.client: ~30 ms)
belongs to the verbs that talk to a registry; the authorization machinery to a registry
that asks for it; ``importlib.metadata`` (and ``email``, ~25 ms) to an installation with
processor plugins; the eStargz writer to a conversion that writes eStargz.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from registry_fixtures import Registry
from test_start_up_imports import start_up_of

from imgpipe.processors import registry as processor_registry

REGISTRY_STACK = ("urllib3", "ssl", "http.client", "imgpipe.remote.client")
AUTH = ("imgpipe.remote.auth", "imgpipe.remote.credentials")
PLUGIN_LOOKUP = ("importlib.metadata", "email")
SEEKABLE_WRITER = ("imgpipe.processors.estargz_write", "imgpipe.processors.estargz_tar")
# what only eStargz TOCs and configured external processors need
ON_DEMAND = ("imgpipe.formats.estargz.toc", "imgpipe.processors.external")
WATCHED = (*REGISTRY_STACK, *AUTH, *PLUGIN_LOOKUP, *SEEKABLE_WRITER, *ON_DEMAND)


def loaded_by(argv: list[str], tmp_path: Path) -> set[str]:
    """Which of WATCHED the command ``imgpipe ARGV`` imported (it must succeed)."""
    code = (
        "import sys\n"
        "from imgpipe.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    if e.code:\n"
        "        raise\n"
        f"print(sorted(m for m in {WATCHED!r} if m in sys.modules), file=sys.stderr)\n"
    )
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}
    env["HOME"] = str(home)  # no credentials of the machine's
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return set(ast.literal_eval(out.stderr.strip().splitlines()[-1]))


def test_pull_from_a_layout_loads_no_registry_client(fixture_dir: Path, tmp_path: Path) -> None:
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    loaded = loaded_by(["--root", str(tmp_path / "root"), "-q", "pull", src], tmp_path)
    assert loaded == set()


def test_convert_of_a_stored_image_loads_no_registry_client_nor_plugin_lookup(
    fixture_dir: Path, tmp_path: Path
) -> None:
    """``convert --zstd`` local to local: no urllib3/ssl/http.client, no
    importlib.metadata (no plugin is installed), no eStargz writer or TOC model, no
    external-processor machinery (none is configured)."""
    root = str(tmp_path / "root")
    src = f"oci:{fixture_dir / 'busybox'}:busybox"
    assert loaded_by(["--root", root, "-q", "pull", src], tmp_path) == set()
    argv = ["--root", root, "-q", "convert", "--zstd", "local:busybox", "local:busybox-zstd"]
    assert loaded_by(argv, tmp_path) == set()


def test_convert_to_estargz_loads_the_writer(fixture_dir: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    loaded_by(["--root", root, "-q", "pull", f"oci:{fixture_dir / 'busybox'}:busybox"], tmp_path)
    argv = ["--root", root, "-q", "convert", "--estargz", "local:busybox", "local:busybox-sgz"]
    loaded = loaded_by(argv, tmp_path)
    assert set(SEEKABLE_WRITER) <= loaded
    assert not loaded & {*REGISTRY_STACK, *AUTH, *PLUGIN_LOOKUP}


@pytest.fixture(scope="module")
def open_busybox(registry: Registry, fixture_dir: Path) -> str:
    """``busybox`` in the open (plain-HTTP, no auth) registry; its reference."""
    registry.push_layout(fixture_dir / "busybox", "busybox", "startup/busybox", "v1")
    return registry.ref("startup/busybox", "v1")


def test_pull_from_a_registry_that_never_challenges_loads_no_auth(
    open_busybox: str, tmp_path: Path
) -> None:
    """The client's stack, of course; the token flow and credential lookup not: the
    registry never answered 401."""
    loaded = loaded_by(["--root", str(tmp_path / "root"), "-q", "pull", open_busybox], tmp_path)
    assert set(REGISTRY_STACK) <= loaded
    assert not loaded & {*AUTH, *SEEKABLE_WRITER}


def test_inspect_of_a_registry_image_loads_no_auth(open_busybox: str, tmp_path: Path) -> None:
    loaded = loaded_by(
        ["--root", str(tmp_path / "root"), "inspect", f"docker://{open_busybox}"], tmp_path
    )
    assert not loaded & set(AUTH)


def test_a_challenge_loads_the_authorizer(
    registry_token: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    """The lazy path is taken when needed: an anonymous pull from a token registry
    answers its 401 (and the pull succeeds)."""
    registry_token.push_layout(fixture_dir / "busybox", "busybox", "startup/busybox", "v1")
    ref = registry_token.ref("startup/busybox", "v1")
    loaded = loaded_by(["--root", str(tmp_path / "root"), "-q", "pull", ref], tmp_path)
    assert set(AUTH) <= loaded


# -- no dataclass on the registry verbs' paths -----------------------------------------

#: What ``convert`` still defines besides the formats: the conversion's own records and
#: options, and the processors' eStargz parameters (not converted yet; LayerKind and
#: LayerPlan live in imgpipe/conversion/layers.py). Pinned so that nothing is added.
CONVERT_DATACLASSES = {
    "imgpipe.processors.estargz_params.EstargzParams",
    "imgpipe.conversion.layers.LayerKind",
    "imgpipe.conversion.layers.LayerPlan",
    "imgpipe.conversion.report.BlobInfo",
    "imgpipe.conversion.report.LayerReport",
    "imgpipe.conversion.report.ManifestReport",
    "imgpipe.conversion.report.ConvertReport",
    "imgpipe.conversion.flow.Request",
    "imgpipe.conversion.flow.Ends",
    "imgpipe.conversion.flow.Planned",
    "imgpipe.conversion.flow.Result",
    "imgpipe.conversion.flow.Mapped",
    "imgpipe.conversion.options.ConvertOptions",
    "imgpipe.conversion.plan.ManifestNode",
    "imgpipe.conversion.plan.IndexNode",
    "imgpipe.conversion.blobs.CacheEntry",
}


@pytest.mark.parametrize("unpack", [False, True], ids=["pull", "pull-unpack"])
def test_pull_from_a_registry_defines_no_dataclass(
    open_busybox: str, unpack: bool, tmp_path: Path
) -> None:
    """Transport options, registry config and endpoints, the plan, the resolved root,
    snapshot records, the unpack's options, results and stages: none a dataclass."""
    argv = [
        "--root",
        tmp_path / "root",
        "-q",
        "pull",
        *(["--unpack"] if unpack else []),
        open_busybox,
    ]
    _, dataclasses = start_up_of(tmp_path, *argv)
    assert dataclasses == set()


@pytest.mark.parametrize("unpack", [False, True], ids=["pull", "pull-unpack"])
def test_pull_from_a_registry_imports_no_dataclasses(
    open_busybox: str, unpack: bool, tmp_path: Path
) -> None:
    argv = [
        "--root",
        tmp_path / "root",
        "-q",
        "pull",
        *(["--unpack"] if unpack else []),
        open_busybox,
    ]
    modules, _ = start_up_of(tmp_path, *argv)
    assert "dataclasses" not in modules


def test_convert_between_registries_defines_no_new_dataclass(
    open_busybox: str, registry: Registry, tmp_path: Path
) -> None:
    """``convert --zstd docker://A docker://B``: the connection options and registry
    config are not dataclasses any more; the conversion's own still are (see
    CONVERT_DATACLASSES), and nothing else may join them."""
    dst = registry.ref("startup/busybox", "zstd")
    argv = ["--root", tmp_path / "root", "-q", "convert", "--zstd"]
    _, dataclasses = start_up_of(tmp_path, *argv, f"docker://{open_busybox}", f"docker://{dst}")
    assert dataclasses <= CONVERT_DATACLASSES
    assert (
        not {
            "imgpipe.remote.options.TransportOptions",
            "imgpipe.remote.hosts.RegistryConfig",
            "imgpipe.processors.base.ProcessorParams",
            "imgpipe.metadata.gc.GCResult",
        }
        & dataclasses
    )


# -- the look before importlib.metadata -------------------------------------------------


GROUP = processor_registry.ENTRY_POINT_GROUP


def _dist(site: Path, name: str, entry_points: str | None) -> None:
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (dist / "entry_points.txt").write_text(entry_points)


def test_the_plugin_group_is_looked_for_in_entry_points_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _dist(site, "plain", None)
    _dist(site, "scripts", "[console_scripts]\nx = x:main\n")
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert not processor_registry._group_may_be_declared(GROUP)
    _dist(site, "plugin", f"[{GROUP}]\nrot = rot:Rot\n")
    assert processor_registry._group_may_be_declared(GROUP)


def test_what_the_look_cannot_judge_goes_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip on sys.path, an egg, a meta-path finder listing distributions of its own:
    True (importlib.metadata decides), never a plugin silently left out."""
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("p-1.0.dist-info/entry_points.txt", f"[{GROUP}]\np = p:P\n")
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert processor_registry._group_may_be_declared(GROUP)
    egg = tmp_path / "p-1.0-py3.11.egg"
    egg.mkdir()
    monkeypatch.setattr(sys, "path", [str(egg)])
    assert processor_registry._group_may_be_declared(GROUP)
    monkeypatch.setattr(sys, "path", [os.fsencode(tmp_path)])
    assert processor_registry._group_may_be_declared(GROUP)

    class Finder:
        @staticmethod
        def find_distributions(*args: object, **kwargs: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing")])
    assert not processor_registry._group_may_be_declared(GROUP)
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert processor_registry._group_may_be_declared(GROUP)
