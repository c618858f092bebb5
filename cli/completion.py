"""Shell completion for bash and zsh, answered by the parser itself.

``imgpipe completion bash|zsh`` prints a small script; on each <Tab> it runs the hidden
``imgpipe __complete`` with the words typed so far, and prints what this module finds by
walking the same argparse tree that parses the command: commands and subcommands,
options, the choices of an option (``--snapshotter``), the names of the local images
where a command takes one (``inspect``, ``run``, ``push``...) and the containers where it
takes a container (``rm``, ``logs``...). Nothing to install (argcomplete would add a
dependency and an import to every start-up), and the script never goes stale: a new verb
or option completes as soon as it parses. An empty answer lets the shell complete file
names (``oci:DIR``, ``--report FILE``).

The protocol (``SHELL`` is the one the script was printed for)::

    imgpipe __complete bash LINE                # LINE: the line up to the cursor
    imgpipe __complete zsh INDEX WORD...        # WORD...: $words, INDEX: the current one

The answer is one candidate a line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from .parser import GLOBAL_DESTS, find, verbs

__all__ = ["candidates", "complete_main", "script"]

#: (verb path, positional dest) -> what it names. Positionals not listed complete files.
IMAGE_ARGS: Final = {
    ("push", "name"),
    ("inspect", "name"),
    ("tag", "source"),
    ("rmi", "names"),
    ("run", "image"),
    ("unpack", "name"),
    ("mount", "name"),
    ("convert", "source"),
    ("encrypt", "source"),
    ("decrypt", "source"),
}
#: Verbs whose positionals are all container names.
CONTAINER_VERBS: Final = frozenset({"rm", "logs", "stop", "wait", "kill"})

_BASH: Final = r"""# bash completion for imgpipe; load with: eval "$(imgpipe completion bash)"
_imgpipe() {
    local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n'
    COMPREPLY=($(imgpipe __complete bash "${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
    return 0
}
complete -o default -F _imgpipe imgpipe
"""

_ZSH: Final = r"""#compdef imgpipe
# zsh completion for imgpipe; put it in a directory of $fpath as _imgpipe, or source it
_imgpipe() {
    local -a candidates
    candidates=("${(@f)$(imgpipe __complete zsh $((CURRENT - 1)) "${words[@]}" 2>/dev/null)}")
    candidates=(${candidates:#})
    if (( ${#candidates} )); then
        compadd -Q -- "${candidates[@]}"
    else
        _files
    fi
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _imgpipe "$@"
else
    compdef _imgpipe imgpipe
fi
"""


def script(shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    return {"bash": _BASH, "zsh": _ZSH}[shell]


def _split(line: str) -> list[str]:
    """The words of a partial command line; an open quote still gives its word."""
    try:
        words = shlex.split(line)
    except ValueError:  # an unterminated quote: the word being typed
        words = shlex.split(line + '"') if '"' in line else line.split()
    if not line or line[-1].isspace():
        words.append("")
    return words


def complete_main(top: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """``imgpipe __complete ...`` (the protocol in the module docstring)."""
    if len(argv) >= 2 and argv[0] == "bash":
        words = _split(argv[1])
        found = candidates(top, words[1:-1], words[-1])
        # bash splits words at ':' (COMP_WORDBREAKS): it replaces only what follows the
        # last one, so the candidates must too (what bash-completion's
        # __ltrim_colon_completions does)
        cut = words[-1].rfind(":") + 1
        found = [c[cut:] for c in found]
    elif len(argv) >= 2 and argv[0] == "zsh" and argv[1].isdigit():
        index, words = int(argv[1]), list(argv[2:])
        current = words[index] if index < len(words) else ""
        found = candidates(top, words[1:index], current)
    else:
        print("usage: imgpipe __complete bash LINE | zsh INDEX WORD...", file=sys.stderr)
        return 2
    for c in found:
        print(c)
    return 0


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def candidates(top: argparse.ArgumentParser, before: Sequence[str], current: str) -> list[str]:
    """What may come at ``current`` after the words ``before`` (the program name left
    out), sorted; empty when the shell should complete file names."""
    p = top
    path: list[str] = []
    positionals = 0
    root: str | None = None
    pending: argparse.Action | None = None  # an option waiting for its value
    options_done = False
    given: list[str] = []  # the positionals of the verb so far
    for word in before:
        if pending is not None:
            if pending.dest == "root":
                root = word
            pending = None
            continue
        if word == "--":
            options_done = True
            continue
        if word.startswith("-") and len(word) > 1 and not options_done:
            name, eq, value = word.partition("=")
            action = p._option_string_actions.get(name)
            if action is not None and _takes_value(action):
                if eq:
                    root = value if action.dest == "root" else root
                else:
                    pending = action
            continue
        child = find(p, [word]) if _has_subcommands(p) else None
        if child is not None:
            p, positionals, given = child, 0, []
            path.append(word)
            continue
        given.append(word)
        action = _positional(p, positionals)
        if action is not None and action.nargs == argparse.REMAINDER:
            return []  # the container's own command line: files are the best guess
        if action is not None and action.nargs not in ("*", "+"):
            positionals += 1
    if pending is not None:
        return _values(pending, current)
    if current.startswith("-") and not options_done:
        return _options(p, current)
    if _has_subcommands(p):
        return sorted(n for n in _subcommand_names(p) if n.startswith(current))
    action = _positional(p, positionals)
    if action is None:
        return []
    if action.choices is not None:
        return _values(action, current)
    verb = " ".join(path)
    if verb == "help":  # `imgpipe help content l<Tab>`: the commands themselves
        target = find(top, given)
        if target is None or not _has_subcommands(target):
            return []
        return sorted(n for n in _subcommand_names(target) if n.startswith(current))
    if (verb, action.dest) in IMAGE_ARGS:
        return _matching(_local_images(root), current)
    if path and path[0] in CONTAINER_VERBS:
        return _matching(_containers(root), current)
    return []


def _has_subcommands(p: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in p._actions)


def _subcommand_names(p: argparse.ArgumentParser) -> list[str]:
    out = []
    for path, aliases, _ in verbs(p, leaves_only=False):
        if len(path) == 1:
            out += [path[0], *aliases]
    return out


def _positional(p: argparse.ArgumentParser, index: int) -> argparse.Action | None:
    """The ``index``-th positional of ``p``; the last one if it repeats (``NAME...``)."""
    pos = [a for a in p._actions if not a.option_strings and a.dest != argparse.SUPPRESS]
    if index < len(pos):
        return pos[index]
    if pos and pos[-1].nargs in ("*", "+", argparse.REMAINDER):
        return pos[-1]
    return None


def _options(p: argparse.ArgumentParser, current: str) -> list[str]:
    out = set()
    for action in p._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for opt in action.option_strings:
            # the global options show once, in their long spelling, not as -q and --quiet
            if action.dest in GLOBAL_DESTS and not opt.startswith("--"):
                continue
            if opt.startswith(current):
                out.add(opt)
    if current in ("-", "--"):
        out.discard("-h")
    return sorted(out)


def _values(action: argparse.Action, current: str) -> list[str]:
    if action.choices is None:
        return []
    return sorted(str(c) for c in action.choices if str(c).startswith(current))


def _matching(names: Iterable[str], current: str) -> list[str]:
    return sorted({n for n in names if n.startswith(current)})


def _local_images(root: str | None) -> list[str]:
    """The stored images, as users type them (``alpine:3.19``) and in full."""
    try:
        import imgpipe

        if not _store_exists(root):
            return []
        with imgpipe.Store(root) as store:
            names = [rec.name for rec in imgpipe.images(store=store)]
    except Exception:
        return []
    out = []
    for name in names:
        out.append(name)
        short = name.removeprefix("docker.io/library/")
        if short != name:
            out.append(short)
    return out


def _containers(root: str | None) -> list[str]:
    try:
        import imgpipe

        if not _store_exists(root):
            return []
        return [c.record.id for c in imgpipe.list_containers(root=root)]
    except Exception:
        return []


def _store_exists(root: str | None) -> bool:
    """Whether there is a store to ask: a <Tab> must not create one."""
    import imgpipe

    return (imgpipe.default_root() if root is None else Path(root)).joinpath("metadata.db").exists()
