"""The import arrows of docs/architecture.md, checked on every source file.

Each module belongs to a *part*: the top-level folders ``formats``, ``processors`` and
``cli``, and inside ``imgpipe/`` the subpackage or top-level module it sits in
(``imgpipe.content.store`` is in ``content``, ``imgpipe.store`` in ``store``). A part may
import itself and the parts ``ALLOWED`` lists for it, nothing else: not at module level,
not inside a function, not under ``TYPE_CHECKING`` (an arrow the type checker needs is an
arrow too). A module in a part the table does not name fails, so a new part is a decision
written down here and in docs/architecture.md, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: folder in the repository -> the package it installs as
FOLDERS = {
    "formats": "imgpipe.formats",
    "processors": "imgpipe.processors",
    "imgpipe": "imgpipe",
    "cli": "imgpipe.cli",
}

# The leaves and the roles, bottom up.
_LEAVES = {"formats", "processors", "fs", "errors", "events"}
_ROLES = {"content", "metadata", "snapshots", "diff", "store"}
_ENDS = {"remote", "transports", "config"}
#: everything the stages stand on
_BELOW_STAGES = _LEAVES | _ROLES | _ENDS | {"image", "decode"}
#: what a verb stands on
_BELOW_VERBS = _BELOW_STAGES | {"pipeline"}

#: the verbs, which only the public namespace imports all of
_VERBS = {
    "api",
    "blobs",
    "unpacking",
    "task",
    "containers",
    "snapshot_admin",
    "conversion",
    "estargz",
    "sync",
}

#: part -> the parts it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "formats": set(),
    "processors": {"formats"},
    # small shared leaves
    "fs": {"formats"},
    "errors": {"formats"},
    "events": {"formats"},
    "_version": set(),  # one constant, read by pyproject and the namespace
    # roles: they never import one another
    "content": {"formats", "fs"},
    "metadata": {"formats"},  # gc is handed the content store
    "snapshots": {"formats", "fs"},  # records through snapshots.records, not metadata
    "diff": {"formats", "processors", "fs"},
    "store": {"formats", "content", "metadata"},
    # ends: where images live; the registry client gets its configuration passed in
    "remote": {"formats", "processors", "content"},
    "transports": {"formats", "processors", "content", "remote"},
    # the user's configuration files: processors (config.toml), registries.toml
    "config": {"formats", "errors", "processors", "remote"},
    # the model, and the configured decoders
    "image": {"formats", "processors", "content", "transports"},
    "decode": {"formats", "processors", "config"},
    # the spine
    "pipeline": _BELOW_STAGES,
    # the verbs: compositions of stages
    # lazy mounts (FUSE over eStargz/zstd:chunked TOCs): what a verb stands on, no verb
    "lazy": _BELOW_VERBS,
    "api": _BELOW_VERBS | {"unpacking", "snapshot_admin", "lazy"},  # pull --unpack; gc
    "blobs": _BELOW_VERBS,
    "unpacking": _BELOW_VERBS | {"lazy"},  # mount --lazy
    "task": _BELOW_VERBS | {"unpacking", "api", "lazy"},  # run --lazy
    "containers": _BELOW_VERBS | {"task", "lazy"},  # ps: a lazy rootfs's failure
    # in use: mounts, containers; a lazy mount's state
    "snapshot_admin": _BELOW_VERBS | {"unpacking", "task", "lazy"},
    "conversion": _BELOW_VERBS,
    "estargz": _BELOW_VERBS,  # estargz ls|cat: Resolve, then Range reads of the layers
    "sync": _BELOW_VERBS | {"conversion"},  # a catalogue: many conversions
    # the public namespace re-exports every verb, lazily
    "namespace": _BELOW_VERBS | _VERBS | {"_version", "lazy"},
    # the command: only through the public API
    "cli": {"namespace", "errors", "events", "formats"},
}


#: the modules and packages directly under imgpipe (to tell `from imgpipe import config`,
#: a part, from `from imgpipe import pull`, a public name)
_SUBMODULES = {
    *(p.stem for p in (REPO / "imgpipe").glob("*.py")),
    *(p.name for p in (REPO / "imgpipe").iterdir() if (p / "__init__.py").exists()),
    *(package.rpartition(".")[2] for package in FOLDERS.values() if package != "imgpipe"),
}


def part_of(module: str) -> str | None:
    """The part an absolute module name belongs to, or None if it is not ours."""
    if module == "imgpipe":
        return "namespace"
    if not module.startswith("imgpipe."):
        return None
    return module.split(".")[1]


def _absolute(module: str | None, level: int, package: str) -> str:
    """``from .x import y`` written in ``package`` -> the absolute module name."""
    if not level:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of ours in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base == "imgpipe":  # `from imgpipe import formats` names a part
                out += [
                    (node.lineno, f"imgpipe.{a.name}" if a.name in _SUBMODULES else base)
                    for a in node.names
                ]
            else:
                out.append((node.lineno, base))
    return [(line, m) for line, m in out if part_of(m) is not None]


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What ``source`` (the module ``module``) imports against the table."""
    own = part_of(module)
    assert own is not None, module
    if own not in ALLOWED:
        return [f"{module} is in part {own!r}, which ALLOWED does not name"]
    package = module if is_package else module.rpartition(".")[0]
    problems = []
    for line, target in imported_modules(source, package):
        part = part_of(target)
        if part != own and part not in ALLOWED[own]:
            problems.append(f"line {line}: {own} imports {target} ({part})")
    return problems


def module_name(path: Path) -> tuple[str, bool]:
    """The installed module name of a source file, and whether it is a package."""
    rel = path.relative_to(REPO)
    package = FOLDERS[rel.parts[0]]
    parts = [*package.split("."), *rel.parts[1:-1]]
    if path.name != "__init__.py":
        parts.append(path.stem)
    return ".".join(parts), path.name == "__init__.py"


# -- the checker catches each arrow the design forbids -----------------------------------


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from imgpipe.content import ContentStore\n", "imgpipe.formats.digest"),
        ("from imgpipe.processors import x\n", "imgpipe.formats.manifest"),
        ("from imgpipe.content.verify import VerifyingReader\n", "imgpipe.processors.gzip"),
        ("import imgpipe.cli.main\n", "imgpipe.pipeline"),
        # snapshotters against a protocol, not the concrete metadata database
        ("from imgpipe.metadata import MetadataDB\n", "imgpipe.snapshots.overlay"),
        # diff: formats' errors, and the in-root resolver from imgpipe.fs
        ("from imgpipe.errors import NotFound\n", "imgpipe.diff.apply"),
        ("from imgpipe.rootpath import open_in_root\n", "imgpipe.diff.apply"),
        # remote gets its configuration from the caller
        ("from imgpipe.config import config_dir\n", "imgpipe.remote.hosts"),
        ("from imgpipe import config\n", "imgpipe.remote.hosts"),
        # roles never import the stages above them
        ("from imgpipe.pipeline import Context\n", "imgpipe.content.store"),
        ("from ..pipeline import Context\n", "imgpipe.content.store"),
        # the CLI works only through the public API
        ("from imgpipe.remote.credentials import Credentials\n", "imgpipe.cli.cmd_login"),
        ("from imgpipe.store import Store\n", "imgpipe.cli.cmd_content"),
        ("from imgpipe.unpacking import unpack\n", "imgpipe.cli.cmd_unpack"),
        ("def f():\n    from imgpipe.task.state import x\n", "imgpipe.cli.cmd_run"),
        # a part nobody placed
        ("import os\n", "imgpipe.newthing"),
    ],
)
def test_checker_catches_a_forbidden_arrow(source: str, module: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from imgpipe.formats.digest import Digest\n", "imgpipe.cli.main"),
        ("from .errors import X\n", "imgpipe.formats.manifest"),
        ("import imgpipe\n", "imgpipe.cli.main"),
        ("from imgpipe.events import Event\n", "imgpipe.cli.output"),
        ("from imgpipe.fs import open_in_root\n", "imgpipe.diff.apply"),
        ("from imgpipe.content.verify import open_verified\n", "imgpipe.remote.client"),
        ("from imgpipe.image import Image\n", "imgpipe.pipeline.fetch"),
        ("from . import store\n", "imgpipe.content.ingest"),
    ],
)
def test_checker_allows_what_the_design_allows(source: str, module: str) -> None:
    assert not violations(source, module)


def test_relative_imports_resolve_from_the_package() -> None:
    assert imported_modules("from ..pipeline import C\n", "imgpipe.content") == [
        (1, "imgpipe.pipeline")
    ]
    assert imported_modules("from . import x\n", "imgpipe.content") == [(1, "imgpipe.content")]


# -- the tree follows it ----------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_import_follows_the_arrows(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    problems = []
    for path in files:
        module, is_package = module_name(path)
        for v in violations(path.read_text(), module, is_package=is_package):
            problems.append(f"{path.relative_to(REPO)}: {v}")
    assert not problems, "\n".join(problems)
