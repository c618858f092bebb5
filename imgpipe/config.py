"""imgpipe's configuration directory, the ``[[processors]]`` of config.toml, and where
``registries.toml`` is.

The directory is ``$IMGPIPE_CONFIG``, else ``/etc/imgpipe`` for the superuser (like
/etc/containerd), else ``$XDG_CONFIG_HOME/imgpipe`` (``~/.config/imgpipe``): the same
order as the state root (``$IMGPIPE_ROOT``, /var/lib/imgpipe, ``$XDG_DATA_HOME``). It
holds ``config.toml`` (this module) and ``registries.toml`` (registry settings: the format
is :mod:`imgpipe.remote.hosts`'s; the registry client is given the file, and never looks
for it itself). A missing file in the directory is an empty configuration, never an error.

``config.toml`` declares external stream processors with containerd's fields::

    [[processors]]
    id = "pigz"
    accepts = ["application/vnd.oci.image.layer.v1.tar+gzip"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "unpigz"            # a name looked up in PATH, or a path
    args = ["-d", "-c"]
    env = ["KEY=VALUE"]        # optional

Configured processors are consulted before the built-in ones.

How long a pull, convert or unpack keeps what it fetched when it fails or is
interrupted (its lease's ``containerd.io/gc.expire``), and how old an unleased partial
download must be before ``gc`` removes it: ``$IMGPIPE_LEASE_EXPIRY``, else::

    [gc]
    lease-expiry = "24h"       # s, m, h or d; a bare number is seconds
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from imgpipe.errors import InvalidArgument, MalformedDocument

if TYPE_CHECKING:
    from imgpipe.processors.external import ExternalProcessor
    from imgpipe.remote.hosts import RegistryConfig
    from imgpipe.remote.options import TransportOptions

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LEASE_EXPIRY",
    "REGISTRIES_FILE",
    "SYSTEM_CONFIG_DIR",
    "config_dir",
    "config_path",
    "default_registry_config",
    "lease_expiry",
    "load_config",
    "load_processors",
    "load_registry_config",
    "parse_duration",
    "with_defaults",
]

#: The superuser's configuration directory.
SYSTEM_CONFIG_DIR: Final = Path("/etc/imgpipe")
#: The main configuration file's name inside the directory.
CONFIG_FILE: Final = "config.toml"
#: The registry settings' file name inside the directory (format: imgpipe.remote.hosts).
REGISTRIES_FILE: Final = "registries.toml"
#: A configuration file is small; refuse to parse a huge one (a wrong path, a device).
MAX_CONFIG_SIZE: Final = 1 << 20

#: containerd's client lease lifetime: long enough to resume an interrupted pull the
#: next day, short enough that a crashed process does not pin blobs for ever.
DEFAULT_LEASE_EXPIRY: Final = 24 * 3600.0

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_PROCESSOR_KEYS: Final = frozenset({"id", "accepts", "returns", "path", "args", "env"})


def config_dir() -> Path:
    """imgpipe's configuration directory (see the module docstring). No I/O."""
    if env := os.environ.get("IMGPIPE_CONFIG"):
        return Path(env)
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_DIR
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "imgpipe"


def config_path() -> Path:
    """``config.toml`` in :func:`config_dir`."""
    return config_dir() / CONFIG_FILE


def default_registry_config() -> str | None:
    """The default ``registries.toml`` (in :func:`config_dir`) if it exists, else None:
    what a caller puts in ``TransportOptions.registry_config`` when the user named none."""
    path = config_dir() / REGISTRIES_FILE
    return str(path) if path.exists() else None


def with_defaults(options: TransportOptions | None) -> TransportOptions:
    """``options`` (or the defaults) with the default ``registries.toml`` filled in when
    none is named: what every verb that opens a transport hands on, so a library caller
    gets the same mirrors, CAs and insecure hosts as the command. No I/O beyond a stat."""
    from imgpipe.remote.options import TransportOptions  # noqa: PLC0415 (start-up)

    opts = options if options is not None else TransportOptions()
    if opts.registry_config is None and (default := default_registry_config()) is not None:
        opts = opts.replace(registry_config=default)
    return opts


def load_registry_config(path: str | os.PathLike[str] | None = None) -> RegistryConfig:
    """Read ``path`` (NotFound if missing), or the default file (absent = empty config).

    Raises MalformedDocument for TOML that does not parse or does not fit the format.
    """
    from imgpipe.remote.hosts import load_registry_config as read  # noqa: PLC0415 (start-up)

    if path is not None:
        return read(path)
    return read(config_dir() / REGISTRIES_FILE, missing_ok=True)


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
    import tomllib  # noqa: PLC0415 (start-up: ~4 ms, only when a file is there)

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
    if not entries:
        return []
    from imgpipe.processors.external import (  # noqa: PLC0415 (start-up: only when asked)
        ExternalProcessor,
        ExternalProcessorConfig,
    )

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


def parse_duration(text: str, where: str) -> float:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"`` or a bare number of seconds, as seconds.

    Raises InvalidArgument naming ``where`` for anything else, zero or a negative value.
    """
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:], None) if value else None
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidArgument(
            f"{where}: {text!r} is not a positive duration (like 90s, 30m, 24h, 7d)"
        )
    return seconds


def lease_expiry(*, config: dict[str, Any] | None = None) -> float:
    """Seconds a run's lease lives (see the module docstring): ``$IMGPIPE_LEASE_EXPIRY``,
    else ``[gc] lease-expiry`` of config.toml, else :data:`DEFAULT_LEASE_EXPIRY`.

    Raises InvalidArgument for a value that is not a duration, MalformedDocument for a
    config file that does not parse.
    """
    if env := os.environ.get("IMGPIPE_LEASE_EXPIRY"):
        return parse_duration(env, "IMGPIPE_LEASE_EXPIRY")
    doc = config if config is not None else load_config()
    section = doc.get("gc", {})
    if not isinstance(section, dict):
        raise MalformedDocument(f"{config_path()}: 'gc' must be a table")
    value = section.get("lease-expiry")
    if value is None:
        return DEFAULT_LEASE_EXPIRY
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedDocument(f"{config_path()}: gc.lease-expiry must be a string like '24h'")
    return parse_duration(str(value), f"{config_path()}: gc.lease-expiry")
