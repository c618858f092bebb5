"""The command's help: examples and positional help for every verb, `imgpipe help VERB`,
README's command summary against the parser, and shell completion in real bash and zsh."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IMGPIPE, run_cli

from imgpipe.cli.helptext import EXAMPLES
from imgpipe.cli.main import build_parser
from imgpipe.cli.parser import find, verbs
from imgpipe.cli.summary import BEGIN, END, render

REPO = Path(__file__).resolve().parent.parent
LEAVES = [" ".join(path) for path, _, _ in verbs(build_parser())]
#: where the shells find `imgpipe`: the one the tests run
BIN_PATH = f"{Path(IMGPIPE).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def test_the_tree_has_the_verbs_we_know() -> None:
    assert {"pull", "push", "images", "content ls", "snapshots rm", "run", "help"} <= set(LEAVES)


@pytest.mark.parametrize("verb", LEAVES)
def test_every_verb_has_a_description_positional_help_and_examples(verb: str) -> None:
    out = run_cli(*verb.split(), "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    parser = find(build_parser(), verb.split())
    assert parser is not None and parser.description, verb
    for action in parser._actions:
        if not action.option_strings:
            assert action.help, f"{verb}: positional {action.dest} has no help"
    examples = text[text.index("examples:") :].splitlines()
    commands = [line.strip() for line in examples if line.strip().startswith(f"imgpipe {verb}")]
    assert len(commands) >= 2, text  # two or three, as a rule
    assert "global options" in text  # and they can come after the verb


def _argv(example: str) -> list[str]:
    """The example's command line as the program sees it: up to a shell redirection."""
    words = shlex.split(example)
    for i, word in enumerate(words):
        if word in (">", ">>", "|", "<") or word.startswith(">"):
            return words[:i]
    return words


@pytest.mark.parametrize(
    ("verb", "example"),
    [(verb, cmd) for verb, rows in EXAMPLES.items() if verb in LEAVES for cmd, _ in rows],
)
def test_every_example_parses(verb: str, example: str) -> None:
    from imgpipe.cli.main import parse

    try:
        args = parse(_argv(example))
    except SystemExit as e:
        pytest.fail(f"imgpipe {example}: exit {e.code}")
    assert args.func is not None


def test_help_verb_is_the_verbs_own_help() -> None:
    for verb in ("pull", "content ls", "snapshots", "help"):
        ours = run_cli("help", *verb.split())
        theirs = run_cli(*verb.split(), "--help")
        assert ours.returncode == theirs.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout
    overview = run_cli("help")
    assert overview.returncode == 0
    assert overview.stdout == run_cli("--help").stdout
    assert "pull" in overview.stdout and "completion" in overview.stdout
    missing = run_cli("help", "pul")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "imgpipe: error: no command 'pul'; 'imgpipe help' lists them"


def test_readme_command_summary_is_the_parsers() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)]
    expected = f"\n```\n{render(build_parser())}```\n"
    assert block == expected, (
        "README.md's command summary is stale: run "
        "`.venv/bin/python -m imgpipe.cli.summary --write README.md`"
    )
    for verb in LEAVES:
        assert f"\n  {verb}" in block, verb


# -- completion ----------------------------------------------------------------------------


def _bash(script: str, line: str) -> list[str]:
    """What bash offers at the end of ``line`` with our completion script loaded."""
    code = (
        f"{script}\n"
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
        'read -ra COMP_WORDS <<< "$COMP_LINE"\n'
        '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        '_imgpipe; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": BIN_PATH},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


#: zsh's compadd and _files work only inside a completion widget: printers stand in
_ZSH_PRINTERS = (
    "compadd() { while [[ $1 == -* && $1 != -- ]]; do shift; done; shift\n"
    '  print -rl -- "$@"; }\n'
    "_files() { print -r -- '<files>'; }\n"
)


def _run_zsh(setup: str, words: list[str], after: str = "") -> list[str]:
    """What our zsh function hands to compadd for ``words`` (the last one being typed),
    once ``setup`` has loaded it."""
    assert shutil.which("zsh"), "zsh is needed (Makefile's APT_PACKAGES installs it)"
    code = (
        f"{setup}\n{_ZSH_PRINTERS}"
        f"words=({' '.join(shlex.quote(w) for w in words)}); CURRENT={len(words)}\n"
        f"_imgpipe\n{after}"
    )
    out = subprocess.run(
        ["zsh", "-f", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": BIN_PATH},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def _zsh(script: str, words: list[str]) -> list[str]:
    """``words`` completed with the script sourced."""
    return _run_zsh(f"autoload -Uz compinit && compinit -u -D\n{script}", words)


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    out = {}
    for shell in ("bash", "zsh"):
        r = run_cli("completion", shell)
        assert r.returncode == 0, r.stderr
        out[shell] = r.stdout
    return out


@pytest.fixture(scope="module")
def stored(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with two images: layered:latest and 127.0.0.1:5000/team/app:1."""
    root = tmp_path_factory.mktemp("completion") / "root"
    r = run_cli("pull", "-q", f"oci:{fixture_dir / 'layered'}:layered", root=root)
    assert r.returncode == 0, r.stderr
    r = run_cli("tag", "layered", "127.0.0.1:5000/team/app:1", root=root)
    assert r.returncode == 0, r.stderr
    return root


def test_bash_completes_verbs_options_choices_and_images(
    scripts: dict[str, str], stored: Path
) -> None:
    bash = scripts["bash"]
    assert _bash(bash, "imgpipe pu") == ["pull", "push"]
    assert _bash(bash, "imgpipe content ") == ["get", "ls", "rm", "verify"]
    assert "--all-platforms" in _bash(bash, "imgpipe pull --a")
    assert _bash(bash, "imgpipe pull --snapshotter n") == ["native"]
    assert _bash(bash, "imgpipe images --j") == ["--json"]
    # the global options complete after the verb too
    assert _bash(bash, "imgpipe images --ro") == ["--root"]
    root = shlex.quote(str(stored))
    assert _bash(bash, f"imgpipe --root {root} inspect lay") == ["layered:latest"]
    # bash breaks words at ':': only what follows the last one is offered
    assert _bash(bash, f"imgpipe rmi --root {root} 127.0.0.1:50") == ["5000/team/app:1"]
    assert _bash(bash, f"imgpipe --root {root} run layered ") == []  # the container's command
    assert _bash(bash, "imgpipe pull ") == []  # a source: the shell completes files
    assert _bash(bash, "imgpipe help con") == ["content", "convert"]
    assert _bash(bash, "imgpipe help snapshots ") == ["ls", "rm"]
    assert _bash(bash, "imgpipe help tag ") == []


def test_zsh_completes_verbs_options_and_images(scripts: dict[str, str], stored: Path) -> None:
    zsh = scripts["zsh"]
    assert _zsh(zsh, ["imgpipe", "pu"]) == ["pull", "push"]
    assert _zsh(zsh, ["imgpipe", "snapshots", "ls", "--snapshotter", ""]) == [
        "btrfs",
        "native",
        "overlay",
    ]
    assert _zsh(zsh, ["imgpipe", "--root", str(stored), "tag", "127"]) == [
        "127.0.0.1:5000/team/app:1"
    ]
    assert _zsh(zsh, ["imgpipe", "push", "--root", str(stored), "layered:latest", "oci:"]) == [
        "<files>"
    ]


def test_completion_creates_no_store(tmp_path: Path, scripts: dict[str, str]) -> None:
    root = tmp_path / "none"
    assert _bash(scripts["bash"], f"imgpipe --root {root} inspect ") == []
    assert not root.exists()


def test_zsh_script_works_installed_in_fpath(tmp_path: Path, scripts: dict[str, str]) -> None:
    """`imgpipe completion zsh > DIR/_imgpipe` with DIR in $fpath: compinit finds it by
    its #compdef line and autoloads it on the first <Tab>."""
    (tmp_path / "_imgpipe").write_text(scripts["zsh"])
    setup = f"fpath=({shlex.quote(str(tmp_path))} $fpath)\nautoload -Uz compinit && compinit -u -D"
    found = _run_zsh(setup, ["imgpipe", "snap"], 'print -r -- "service: ${_comps[imgpipe]}"\n')
    assert found == ["snapshots", "service: _imgpipe"]
