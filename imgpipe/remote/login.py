"""Logging in to a registry: check credentials where a pull would use them, then store.

``login`` asks the registry's ``/v2/`` with the credentials, following its Basic or
Bearer challenge through the client's own :class:`~imgpipe.remote.auth.Authorizer` and
:class:`~imgpipe.remote.http.HttpClient`, so a login succeeds exactly when a pull would
authenticate, and a typo is an error now rather than a failed pull later. Only then are
the credentials stored (:func:`imgpipe.remote.credentials.store`: the host's credential
helper if the file names one, else ``auths``, mode 0600).
"""

from __future__ import annotations

from pathlib import Path

from imgpipe.formats.errors import InvalidArgument, Unauthorized, Unavailable

from .client import RegistryClient
from .credentials import Credentials, erase, normalize_host, store
from .hosts import api_host, has_port
from .http import NotTLS, connect_failed, read_limited
from .options import TransportOptions
from .responses import MAX_ERROR_BODY

__all__ = ["check_login", "login", "logout", "registry_host"]


def registry_host(registry: str) -> str:
    """``https://reg:5000/v2/`` or ``reg:5000`` -> ``reg:5000``; Hub aliases -> docker.io."""
    return normalize_host(registry)


def check_login(
    host: str, credentials: Credentials, *, options: TransportOptions | None = None
) -> bool:
    """``GET /v2/`` on ``host`` with ``credentials``, answering its challenge: True if
    the registry asked for credentials and accepted these, False if it asked for none
    (it answered 200 without a challenge: any password would "work", so none is checked).

    The registry itself is asked, never a mirror: credentials are checked where they
    will be used. Raises Unauthorized when the registry or its token server refuses
    them, Unavailable when it cannot be reached (naming each scheme tried).
    """
    api = api_host(host)
    with RegistryClient(options, credentials=lambda h: credentials if h == api else None) as c:
        ep = c.config.endpoints(
            host, push=True, plain_http=c.options.plain_http, tls_ca=c.options.tls_ca
        )[-1]
        last_error: Unavailable | None = None
        refused: list[str] = []
        for scheme in c.schemes(ep):
            url = f"{scheme}://{ep.host}/v2/"
            try:
                # after a refused HTTPS on host:port, one HTTP try (see Repository.request)
                resp = c.http.send("GET", url, ca=ep.ca, once=bool(refused) and has_port(ep.host))
            except NotTLS as e:
                last_error = e  # a plain-HTTP server: try the next scheme if allowed
                continue
            except Unavailable as e:
                if not connect_failed(e):
                    raise
                refused.append(str(e))  # nothing listens for HTTPS: HTTP too, if allowed
                last_error = Unavailable(f"login to {host}: " + "; ".join(refused))
                continue
            read_limited(resp, MAX_ERROR_BODY)
            if resp.status == 200:
                # Docker stores the credentials anyway and says "Login Succeeded", which
                # tells a user with a mistyped password that it was right.
                return False
            if resp.status != 401:
                raise Unavailable(f"login to {host}: GET /v2/ answered HTTP {resp.status}")
            challenge = resp.headers.get("WWW-Authenticate", "")
            header = c.auth.challenge(ep.host, challenge, [], ca=ep.ca, what=host)
            resp = c.http.send("GET", url, headers={"Authorization": header}, ca=ep.ca)
            read_limited(resp, MAX_ERROR_BODY)
            if resp.status == 200:
                return True
            if resp.status in (401, 403):
                raise Unauthorized(f"login to {host}: the registry refused the credentials")
            raise Unavailable(f"login to {host}: GET /v2/ answered HTTP {resp.status}")
        assert last_error is not None
        raise last_error


def login(
    registry: str, username: str, password: str, *, options: TransportOptions | None = None
) -> Path | None:
    """Check ``username``/``password`` against ``registry`` (see :func:`check_login`),
    then store them; returns the Docker config file written, or None when the registry
    asks for no credentials (then nothing is stored: there was nothing to check them
    against, and a pull sends none).

    ``options`` says how to reach the registry and which credentials file to write
    (``auth_file``). Raises InvalidArgument for an empty registry, user name or password.
    """
    host = registry_host(registry)
    if not host:
        raise InvalidArgument("the registry is empty")
    if not username or not password:
        raise InvalidArgument("user name and password must not be empty")
    creds = Credentials(username=username, password=password)
    if not check_login(host, creds, options=options):
        return None
    return store(host, creds, auth_file=options.auth_file if options else None)


def logout(registry: str, *, auth_file: str | None = None) -> bool:
    """Forget the stored credentials for ``registry``; True if there were any."""
    return erase(registry_host(registry), auth_file=auth_file)
