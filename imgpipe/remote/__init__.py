"""imgpipe's registry client (distribution API v2) and the ``docker://`` transport.

Modules (private implementation, public names re-exported here):

- :mod:`~imgpipe.remote.options`: :class:`TransportOptions`, what the CLI flags set;
- :mod:`~imgpipe.remote.hosts`: the ``registries.toml`` format (mirrors, CA, insecure)
  and the plain-HTTP decision; the caller says where the file is;
- :mod:`~imgpipe.remote.http`: the urllib3 pool, timeouts, retries, safe redirects;
- :mod:`~imgpipe.remote.auth`: Bearer token flow and Basic auth;
- :mod:`~imgpipe.remote.credentials`: credentials from the Docker config and helpers;
- :mod:`~imgpipe.remote.client`: :class:`RegistryClient`, :class:`Repository` and its
  authorised requests; :mod:`~imgpipe.remote.responses`: answers -> errors;
- :mod:`~imgpipe.remote.resolve`: references and documents;
  :mod:`~imgpipe.remote.download`: blobs that resume;
  :mod:`~imgpipe.remote.push`: mounts, uploads, manifests;
- :mod:`~imgpipe.remote.login`: ``login`` / ``logout``, checked as a pull would be;
- :mod:`~imgpipe.remote.transport`: :class:`RegistrySource`, :class:`RegistrySink`.

Remote imports only :mod:`imgpipe.formats`, :mod:`imgpipe.content.verify` (the one
verified read), :mod:`imgpipe.content.closing` (the one ``with`` shape) and
:mod:`imgpipe.processors.streams` (the one pass-through stream) of the project.

Importing this package imports only the options; urllib3 and the client load on first
use of a name that needs them (start-up time of commands that never reach a registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

from .options import TransportOptions

if TYPE_CHECKING:
    from .client import RegistryClient, Repository
    from .hosts import RegistryConfig, load_registry_config
    from .transport import RegistrySink, RegistrySource

__all__ = [
    "RegistryClient",
    "RegistryConfig",
    "RegistrySink",
    "RegistrySource",
    "Repository",
    "TransportOptions",
    "load_registry_config",
]

_WHERE = {
    "RegistryClient": "client",
    "Repository": "client",
    "RegistryConfig": "hosts",
    "load_registry_config": "hosts",
    "RegistrySink": "transport",
    "RegistrySource": "transport",
}


__getattr__ = lazy_exports(__name__, _WHERE)
