"""The import direction: cli -> imgpipe -> processors -> formats, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# folder in the repository -> (layer name, rank); a module may import its own layer and
# any layer of lower rank, never a higher one.
FOLDERS = {
    "formats": ("formats", 0),
    "processors": ("processors", 1),
    "imgpipe": ("core", 2),
    "cli": ("cli", 3),
}
SUBPACKAGES = {
    "imgpipe.formats": "formats",
    "imgpipe.processors": "processors",
    "imgpipe.cli": "cli",
}
RANK = dict(FOLDERS.values())


def layer_of_module(module: str) -> str | None:
    """The layer an absolute module name belongs to, or None if it is not ours."""
    if module != "imgpipe" and not module.startswith("imgpipe."):
        return None
    for prefix, layer in SUBPACKAGES.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


def imported_layers(source: str, own_layer: str) -> list[tuple[int, str, str]]:
    """(line, module, layer) for every import of ours in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                layer = layer_of_module(alias.name)
                if layer:
                    out.append((node.lineno, alias.name, layer))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package it is written in
                out.append((node.lineno, "." * node.level + (node.module or ""), own_layer))
                continue
            layer = layer_of_module(node.module or "")
            if layer:
                out.append((node.lineno, node.module or "", layer))
    return out


def violations(source: str, own_layer: str) -> list[str]:
    return [
        f"line {line}: {own_layer} imports {module} ({layer})"
        for line, module, layer in imported_layers(source, own_layer)
        if RANK[layer] > RANK[own_layer]
    ]


def test_checker_catches_an_upward_import() -> None:
    assert violations("from imgpipe.content import ContentStore\n", "formats")
    assert violations("import imgpipe.cli.main\n", "core")
    assert violations("from imgpipe.processors import x\n", "formats")
    assert not violations("from imgpipe.formats.digest import Digest\n", "cli")
    assert not violations("from .errors import X\n", "formats")


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_module_imports_upward(folder: str) -> None:
    layer = FOLDERS[folder][0]
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    problems = []
    for path in files:
        for v in violations(path.read_text(), layer):
            problems.append(f"{path.relative_to(REPO)} {v}")
    assert not problems, "\n".join(problems)
