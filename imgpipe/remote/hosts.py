"""Where a registry is reached: scheme, CA, mirrors. Read from ``registries.toml``.

The file is TOML, one table per registry host (the host as it appears in image
references, with its port if any), in the spirit of containerd's ``hosts.toml``::

    # <config dir>/registries.toml
    [registry."registry.example.com"]
    mirrors = ["mirror.example.com:5000", "https://mirror2.example.com"]
    ca = "/etc/ssl/example-ca.pem"      # PEM, trusted in addition to the system CAs
    insecure = false                    # true: plain HTTP allowed (after HTTPS is refused)

    [registry."docker.io"]
    mirrors = ["mirror.gcr.io"]

    [registry."mirror.example.com:5000"]
    insecure = true

Keys of a ``[registry."HOST"]`` table (all optional; unknown keys are an error, so a typo
does not silently drop a setting):

``mirrors``
    hosts tried, in order, before ``HOST`` itself for pulls (resolve and fetch), never for
    pushes. An entry is ``host[:port]`` or ``https://host[:port]`` / ``http://host[:port]``
    (an explicit ``http://`` means plain HTTP for that mirror). A mirror is asked as
    ``/v2/<repo>/...?ns=HOST``, as containerd does. A mirror's own CA and ``insecure``
    come from its own table. When a mirror fails (not found, unreachable, refused), the
    next one is tried, then ``HOST``. Credentials are looked up for the host actually asked.
``ca``
    a PEM file with extra CA certificates for this host; a relative path is relative to
    the file's directory.
``insecure``
    allow plain HTTP for this host: HTTPS is tried first, plain HTTP when the server does
    not speak TLS. Certificate errors are never "fixed" by falling back.

Where the file is, the caller says (the client reads ``TransportOptions.registry_config``):
``--registry-config FILE``, else ``<config dir>/registries.toml`` as
:func:`imgpipe.config.load_registry_config` finds it (``$IMGPIPE_CONFIG``, else
``/etc/imgpipe`` as root, else ``$XDG_CONFIG_HOME/imgpipe``). A missing default file is no
registry config; a missing file given explicitly is NotFound.

Plain HTTP is decided by :func:`schemes_for`: ``--plain-http`` means HTTP only; a loopback
host (``localhost``, ``127.0.0.0/8``, ``::1``) or an ``insecure`` host tries HTTPS, then
HTTP; any other host is HTTPS only, as Docker does.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.errors import InvalidArgument, MalformedDocument, NotFound

__all__ = [
    "DOCKER_HUB_API_HOST",
    "Endpoint",
    "HostConfig",
    "RegistryConfig",
    "api_host",
    "has_port",
    "is_loopback",
    "load_registry_config",
    "schemes_for",
]

#: References say ``docker.io``; its API lives elsewhere (containerd's DefaultHost).
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
_DOCKER_HUB: Final = "docker.io"
_HOST_KEYS: Final = frozenset({"mirrors", "ca", "insecure"})


def api_host(host: str) -> str:
    """The host to send API requests to for a reference's domain."""
    return DOCKER_HUB_API_HOST if host == _DOCKER_HUB else host


def _split_port(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the bare host name or address."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") > 1:  # a bare IPv6 address
        return host
    return host.rpartition(":")[0] if ":" in host else host


def has_port(host: str) -> bool:
    """Whether ``host`` names its port (``h:5000``, ``[v6]:5000``): then HTTPS and HTTP
    are tried on the same one; without, on 443 and 80."""
    if host.startswith("["):
        return host.partition("]")[2].startswith(":")
    return host.count(":") == 1


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    name = _split_port(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def schemes_for(host: str, *, plain_http: bool = False, insecure: bool = False) -> tuple[str, ...]:
    """The URL schemes to try, in order, for ``host``: the plain-HTTP decision.

    ``plain_http`` (the caller asked) -> ``("http",)``; a loopback or ``insecure`` host ->
    ``("https", "http")`` (HTTP only when the server does not speak TLS); anything else ->
    ``("https",)``, so a typo'd or hostile name never gets credentials in clear text.
    """
    if plain_http:
        return ("http",)
    if insecure or is_loopback(host):
        return ("https", "http")
    return ("https",)


class HostConfig(NamedTuple):
    """One ``[registry."HOST"]`` table."""

    host: str
    mirrors: tuple[str, ...] = ()
    ca: str | None = None
    insecure: bool = False


class Endpoint(NamedTuple):
    """One place to send requests: ``scheme://host`` plus what applies there.

    ``schemes`` are tried in order (see :func:`schemes_for`); ``namespace`` is the
    original registry host when this is a mirror (sent as ``?ns=``).
    """

    host: str
    schemes: tuple[str, ...]
    ca: str | None = None
    namespace: str = ""

    @property
    def is_mirror(self) -> bool:
        return bool(self.namespace)


class RegistryConfig(FrozenValue):
    """The parsed registry config: host -> :class:`HostConfig`."""

    __slots__ = ("hosts", "path")
    hosts: Mapping[str, HostConfig]
    path: str

    def __init__(self, hosts: Mapping[str, HostConfig] | None = None, path: str = "") -> None:
        self._set(hosts={} if hosts is None else hosts, path=path)

    def host(self, host: str) -> HostConfig:
        """The config for ``host`` (an empty one if the file does not mention it)."""
        return self.hosts.get(host) or HostConfig(host)

    def endpoints(
        self,
        host: str,
        *,
        push: bool = False,
        plain_http: bool = False,
        tls_ca: str | None = None,
    ) -> tuple[Endpoint, ...]:
        """Where to send requests for the registry ``host``: mirrors first (pulls only).

        ``tls_ca`` (``--tls-ca``) applies where the host's own table names no CA.
        """
        out: list[Endpoint] = []
        if not push:
            for m in self.host(host).mirrors:
                scheme, _, name = m.rpartition("://")
                mc = self.host(name)
                schemes = (
                    (scheme,)
                    if scheme and not plain_http
                    else schemes_for(name, plain_http=plain_http, insecure=mc.insecure)
                )
                out.append(Endpoint(name, schemes, mc.ca or tls_ca, namespace=host))
        hc = self.host(host)
        out.append(
            Endpoint(
                api_host(host),
                schemes_for(host, plain_http=plain_http, insecure=hc.insecure),
                hc.ca or tls_ca,
            )
        )
        return tuple(out)


def _parse_host(host: str, table: Any, base: Path, where: str) -> HostConfig:
    if not isinstance(table, dict):
        raise MalformedDocument(f"{where}: [registry.{host!r}] must be a table")
    unknown = set(table) - _HOST_KEYS
    if unknown:
        raise MalformedDocument(
            f"{where}: [registry.{host!r}]: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_HOST_KEYS))})"
        )
    mirrors = table.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise MalformedDocument(f"{where}: [registry.{host!r}] mirrors must be a list of hosts")
    for m in mirrors:
        scheme, sep, name = m.rpartition("://")
        if (sep and scheme not in ("http", "https")) or not name or "/" in name:
            raise MalformedDocument(
                f"{where}: [registry.{host!r}] mirror {m!r} must be [http[s]://]host[:port]"
            )
    ca = table.get("ca")
    if ca is not None:
        if not isinstance(ca, str) or not ca:
            raise MalformedDocument(f"{where}: [registry.{host!r}] ca must be a file path")
        ca = str(base / ca)  # an absolute ca stays as it is
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise MalformedDocument(f"{where}: [registry.{host!r}] insecure must be true or false")
    return HostConfig(host, tuple(mirrors), ca, insecure)


def load_registry_config(
    path: str | os.PathLike[str], *, missing_ok: bool = False
) -> RegistryConfig:
    """Read the registry config ``path``: NotFound if it is missing (an empty config with
    ``missing_ok``, for a default location).

    Raises MalformedDocument for TOML that does not parse or does not fit the format.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if not missing_ok:
            raise NotFound(f"registry config {p}: no such file") from None
        return RegistryConfig()
    except IsADirectoryError:
        raise InvalidArgument(f"registry config {p} is a directory") from None
    import tomllib  # noqa: PLC0415 (1.3 ms, only when a file is there to read)

    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MalformedDocument(f"registry config {p}: {e}") from None
    unknown = set(doc) - {"registry"}
    if unknown:
        raise MalformedDocument(
            f"registry config {p}: unknown table(s) {', '.join(sorted(unknown))}; "
            'hosts go in [registry."HOST"] tables'
        )
    tables = doc.get("registry", {})
    if not isinstance(tables, dict):
        raise MalformedDocument(f"registry config {p}: 'registry' must be a table of hosts")
    hosts = {h: _parse_host(h, t, p.parent, str(p)) for h, t in tables.items()}
    return RegistryConfig(hosts, str(p))
