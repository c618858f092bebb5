"""``--lazy`` of ``pull`` and ``run``: the flags, and what a lazy pull says it did.

Honest about laziness (the stargz snapshotter's users cannot tell whether a pull was lazy,
and its fallbacks are silent): one line per layer on stderr, ``lazy``, ``prefetched``,
``complete`` or ``pulled`` with the compressed bytes fetched of it, and a fallback to a
full pull is said in one line naming the reason.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_lazy_flags", "lazy_fields", "lazy_run", "print_fallback", "print_layers"]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"want true or false, not {text!r}")


def add_lazy_flags(p: Any, what: str) -> None:
    g = p.add_argument_group("lazy pull (eStargz, zstd:chunked)")
    g.add_argument("--lazy", action="store_true", help=what)
    g.add_argument(
        "--lazy-background",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="with --lazy, fetch the rest of every layer in the background at low "
        "priority and commit it as an ordinary blob (default true)",
    )


def print_fallback(args: argparse.Namespace, image: str, why: str) -> None:
    """The one line of a lazy pull that was a full pull (even with -q: it is no
    progress, it says what was done instead of what was asked)."""
    if why == "every layer is in the store already":  # imgpipe.lazy.pulling.ALREADY_STORED
        print(f"imgpipe: {image}: {why}: nothing to fetch lazily", file=sys.stderr)
    else:
        print(f"imgpipe: lazy pull of {image} not possible: {why}; pulled in full", file=sys.stderr)


def print_layers(args: argparse.Namespace, layers: Any, *, prefix: str = "") -> None:
    """One stderr line per layer: index, digest, state, bytes fetched of its size."""
    if args.quiet or getattr(args, "json", False):
        return
    from .output import human_size

    for layer in layers:
        size = human_size(layer.size)
        line = f"imgpipe: {prefix}layer {layer.index} {layer.digest.encoded[:12]} {layer.state}"
        line += f", fetched {human_size(layer.fetched)} of {size}"
        if getattr(layer, "error", ""):
            line += f": {layer.error}"
        print(line, file=sys.stderr)


def lazy_fields(result: Any, *, background: bool) -> dict[str, Any]:
    """The ``lazy`` object of ``--json`` results (docs/json.md)."""
    return {
        "lazy": result.fallback is None,
        "fallback": result.fallback,
        "background": background and result.fallback is None,
        "fetched": result.fetched(),
        "size": result.size(),
        "layers": [
            {
                "index": layer.index,
                "digest": str(layer.digest),
                "size": layer.size,
                "state": layer.state,
                "fetched": layer.fetched,
            }
            for layer in result.layers
        ],
    }


def lazy_run(args: argparse.Namespace, observer: Any) -> Any:
    """``run --lazy``'s settings, with the callbacks that say what the lazy pull did:
    its fallback (always) and, once the container has ended (``-d``: started), each
    layer's state and bytes fetched (unless -q)."""
    import imgpipe

    def pulled(result: Any) -> None:
        name = result.record.name if result.record is not None else args.image
        if observer is not None:
            from .output import clear_progress

            clear_progress(observer)  # the bars go before the container's output
        if result.fallback is not None:
            print_fallback(args, name, result.fallback)
        elif not args.quiet:
            from .output import human_size

            print(
                f"imgpipe: {name}: {len(result.layers)} layers lazy, fetched "
                f"{human_size(result.fetched())} of {human_size(result.size())} (TOCs)",
                file=sys.stderr,
            )

    def layers(reports: Any) -> None:
        print_layers(args, reports)

    return imgpipe.LazyRun(background=args.lazy_background, on_pulled=pulled, on_layers=layers)
