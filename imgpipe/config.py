"""imgpipe's configuration directory and the ``[[processors]]`` entries of config.toml.

The directory is ``$IMGPIPE_CONFIG``, else ``/etc/imgpipe`` for the superuser (like
/etc/containerd), else ``$XDG_CONFIG_HOME/imgpipe`` (``~/.config/imgpipe``): the same
order as the state root (``$IMGPIPE_ROOT``, /var/lib/imgpipe, ``$XDG_DATA_HOME``). It
holds ``config.toml`` (this module) and ``registries.toml`` (registry settings, read by
the registry client). A missing file is an empty configuration, never an error.

``config.toml`` declares external stream processors with containerd's fields::

    [[processors]]
    id = "pigz"
    accepts = ["application/vnd.oci.image.layer.v1.tar+gzip"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "unpigz"            # a name looked up in PATH, or a path
    args = ["-d", "-c"]
    env = ["KEY=VALUE"]        # optional

Configured processors are consulted before the built-in ones.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Final

from imgpipe.errors import InvalidArgument, MalformedDocument
from imgpipe.processors.external import ExternalProcessor, ExternalProcessorConfig

__all__ = [
    "CONFIG_FILE",
    "SYSTEM_CONFIG_DIR",
    "config_dir",
    "config_path",
    "load_config",
    "load_processors",
]

#: The superuser's configuration directory.
SYSTEM_CONFIG_DIR: Final = Path("/etc/imgpipe")
#: The main configuration file's name inside the directory.
CONFIG_FILE: Final = "config.toml"
#: A configuration file is small; refuse to parse a huge one (a wrong path, a device).
MAX_CONFIG_SIZE: Final = 1 << 20

_PROCESSOR_KEYS: Final = frozenset({"id", "accepts", "returns", "path", "args", "env"})


def config_dir() -> Path:
    """imgpipe's configuration directory (see the module docstring). No I/O."""
    env = os.environ.get("IMGPIPE_CONFIG")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_DIR
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "imgpipe"


def config_path() -> Path:
    """``config.toml`` in :func:`config_dir`."""
    return config_dir() / CONFIG_FILE


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The parsed config file (``config_path()`` by default); ``{}`` if it does not exist.

    Raises MalformedDocument when it is not valid TOML or is too large.
    """
    p = Path(path) if path is not None else config_path()
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        return {}
    if len(data) > MAX_CONFIG_SIZE:
        raise MalformedDocument(f"{p}: larger than {MAX_CONFIG_SIZE} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MalformedDocument(f"{p}: {e}") from None


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedDocument(f"{where} must be a list of strings")
    return tuple(value)


def load_processors(
    path: str | os.PathLike[str] | None = None, *, config: dict[str, Any] | None = None
) -> list[ExternalProcessor]:
    """The ``[[processors]]`` entries of the config file, in file order.

    Raises MalformedDocument naming the file and the entry for a wrong shape, an unknown
    key, a missing field or a duplicate id.
    """
    where = str(path if path is not None else config_path())
    doc = config if config is not None else load_config(path)
    entries = doc.get("processors", [])
    if not isinstance(entries, list):
        raise MalformedDocument(f"{where}: 'processors' must be an array of tables")
    out: list[ExternalProcessor] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}: processors[{i}]"
        if not isinstance(entry, dict):
            raise MalformedDocument(f"{at} must be a table")
        unknown = set(entry) - _PROCESSOR_KEYS
        if unknown:
            raise MalformedDocument(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("id", "returns", "path"):
            if not isinstance(entry.get(key), str):
                raise MalformedDocument(f"{at}: {key!r} must be a string")
        try:
            cfg = ExternalProcessorConfig(
                id=entry["id"],
                accepts=_strings(entry.get("accepts"), f"{at}.accepts"),
                returns=entry["returns"],
                path=entry["path"],
                args=_strings(entry.get("args", []), f"{at}.args"),
                env=_strings(entry.get("env", []), f"{at}.env"),
            )
        except InvalidArgument as e:
            if isinstance(e, MalformedDocument):
                raise
            raise MalformedDocument(f"{at}: {e}") from None
        if cfg.id in seen:
            raise MalformedDocument(f"{at}: duplicate id {cfg.id!r}")
        seen.add(cfg.id)
        out.append(ExternalProcessor(cfg))
    return out
