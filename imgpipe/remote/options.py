"""Connection options for the registry transport (``docker://``).

Kept apart from the HTTP code so that ``imgpipe.transports`` and the CLI can name the
options without importing urllib3 (start-up time).
"""

from __future__ import annotations

from typing import Final

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.errors import InvalidArgument

__all__ = ["DEFAULT_MAX_CONCURRENT", "DEFAULT_USER_AGENT", "TransportOptions"]

#: Blobs moved at once per pull or push: docker's and containerd's default.
DEFAULT_MAX_CONCURRENT: Final = 3

#: What registries see in their logs; containerd sends ``containerd/<version>``.
DEFAULT_USER_AGENT: Final = "imgpipe/0.1"


class TransportOptions(FrozenValue):
    """How transports reach registries. Local transports (oci:, archives) ignore it.

    ``plain_http``
        use plain HTTP for every registry (``--plain-http``). Without it plain HTTP is
        used only for loopback hosts and hosts marked ``insecure = true`` in the registry
        config, and only after HTTPS was refused (see :mod:`imgpipe.remote.hosts`).
    ``tls_ca``
        a PEM file of CA certificates trusted in addition to the system's, for every
        registry (``--tls-ca``); the registry config can name one per host.
    ``registry_config``
        path of the ``registries.toml`` to read instead of the default one
        (``--registry-config``); see :mod:`imgpipe.remote.hosts` for the format.
    ``auth_file``
        the Docker-format credentials file to read instead of the default lookup
        (``~/.docker/config.json``, ``$DOCKER_CONFIG``, ``$REGISTRY_AUTH_FILE``).
    ``max_concurrent``
        blobs transferred at once (``--max-concurrent-downloads``), at least 1.
    ``user_agent``
        the User-Agent header.
    """

    __slots__ = (
        "auth_file",
        "max_concurrent",
        "plain_http",
        "registry_config",
        "tls_ca",
        "user_agent",
    )
    plain_http: bool
    tls_ca: str | None
    registry_config: str | None
    auth_file: str | None
    max_concurrent: int
    user_agent: str

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        plain_http: bool = False,
        tls_ca: str | None = None,
        registry_config: str | None = None,
        auth_file: str | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if (
            isinstance(max_concurrent, bool)
            or not isinstance(max_concurrent, int)
            or max_concurrent < 1
        ):
            raise InvalidArgument(
                f"max_concurrent must be an integer of at least 1, not {max_concurrent!r}"
            )
        if not user_agent or any(c in user_agent for c in "\r\n"):
            raise InvalidArgument("user_agent must be a non-empty single line")
        self._set(
            plain_http=plain_http,
            tls_ca=tls_ca,
            registry_config=registry_config,
            auth_file=auth_file,
            max_concurrent=max_concurrent,
            user_agent=user_agent,
        )
