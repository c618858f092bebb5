"""The option groups several verbs share, each written once, and the verb boilerplate.

``p`` is a parser or an argument group (argparse has no public type for both). Nothing
here imports more than argparse: the parser is built on every start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .parser import sentence

if TYPE_CHECKING:
    from imgpipe import TransportOptions

SNAPSHOTTERS: Final = ("overlay", "btrfs", "native")
_SNAPSHOTTER_HELP: Final = "overlay, btrfs or native (default: overlay where it works, else native)"


def verb(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], *more: str, **kw: Any
) -> argparse.ArgumentParser:
    """A subcommand parser that runs ``func``. Its help is the first paragraph of
    ``func``'s docstring, its description the rest followed by ``more``; ``help=`` and
    ``description=`` override them (one function serving several spellings)."""
    head, _, body = (func.__doc__ or "").strip().partition("\n\n")
    head = " ".join(head.split())
    # without a body, the one-line help is the description too: every verb has one
    description = " ".join([*body.split(), *more]) or sentence(head)
    kw.setdefault("help", head)
    kw.setdefault("description", description)
    p: argparse.ArgumentParser = sub.add_parser(name, **kw)
    p.set_defaults(func=func)
    return p


def connection(p: argparse.ArgumentParser) -> None:
    """The flags that say how to reach a registry (ignored by local transports)."""
    g = p.add_argument_group("registry connection")
    g.add_argument(
        "--plain-http",
        action="store_true",
        help="talk plain HTTP to the registry (default: HTTPS; loopback hosts and "
        "'insecure' hosts of the registry config fall back to HTTP by themselves)",
    )
    g.add_argument("--tls-ca", metavar="FILE", help="PEM file of CA certificates to trust as well")
    g.add_argument(
        "--registry-config",
        metavar="FILE",
        help="registries.toml to read (mirrors, ca, insecure per host; default: "
        "$IMGPIPE_CONFIG/registries.toml, /etc/imgpipe as root, else ~/.config/imgpipe)",
    )
    auth_file(g)


def auth_file(p: Any) -> None:
    p.add_argument(
        "--auth-file",
        metavar="FILE",
        help="Docker-format credentials file (default: $REGISTRY_AUTH_FILE, "
        "$DOCKER_CONFIG/config.json, ~/.docker/config.json)",
    )


def connection_given(args: argparse.Namespace) -> bool:
    """Whether the command line names any registry connection setting."""
    return bool(args.plain_http or args.tls_ca or args.registry_config or args.auth_file)


def transport_options(args: argparse.Namespace, concurrent: int | None = None) -> TransportOptions:
    """The connection flags as the library's options; the default registries.toml when
    ``--registry-config`` names none."""
    import imgpipe

    kw: dict[str, Any] = {}
    if concurrent is not None:
        kw["max_concurrent"] = concurrent
    return imgpipe.TransportOptions(
        plain_http=args.plain_http,
        tls_ca=args.tls_ca,
        registry_config=args.registry_config or imgpipe.default_registry_config(),
        auth_file=args.auth_file,
        **kw,
    )


def max_concurrent(p: Any, direction: str) -> None:
    """``--max-concurrent-downloads`` / ``--max-concurrent-uploads``."""
    p.add_argument(
        f"--max-concurrent-{direction}s",
        type=int,
        metavar="N",
        default=None,
        help=f"blobs {direction}ed at once (default: 3)",
    )


def snapshotter(p: Any, help: str = _SNAPSHOTTER_HELP) -> None:
    p.add_argument("--snapshotter", choices=SNAPSHOTTERS, help=help)


def platform(p: Any, help: str = "os/arch[/variant] of a multi-platform image") -> None:
    p.add_argument("--platform", help=help)


def decrypt_keys(
    p: Any,
    *flags: str,
    help: str = "private key (PEM/DER) for encrypted layers; PASS is pass:TEXT, env:VAR, "
    "file:PATH or the password itself; repeatable",
    required: bool = False,
) -> None:
    """Repeatable ocicrypt private keys (``FILE[:PASS]``) into ``args.decrypt_key``."""
    p.add_argument(
        *(flags or ("--decrypt-key",)),
        dest="decrypt_key",
        action="append",
        default=None if required else [],
        required=required,
        metavar="FILE[:PASS]",
        help=help,
    )


def runtime(p: Any) -> None:
    p.add_argument("--runtime", help="runtime binary (default: runc on PATH)")


def json_output(p: Any, help: str = "machine-readable output") -> None:
    p.add_argument("--json", action="store_true", help=help)
