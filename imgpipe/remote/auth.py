"""Registry authentication: the Bearer token flow and Basic auth.

On a 401 the registry names a scheme in ``WWW-Authenticate``:

``Bearer realm="...",service="...",scope="..."``
    get a token from ``realm`` for ``service`` and the scopes we need
    (``repository:<path>:pull`` or ``pull,push``; a cross-repository mount also needs
    ``repository:<from>:pull``). With credentials: ``POST`` a form
    (``grant_type=password`` or ``refresh_token`` for an identity token) and, when the
    token server refuses the form (400/401/404/405), ``GET`` with Basic credentials, as
    containerd does. Without credentials: an anonymous ``GET``. Tokens are cached per
    (host, realm, service, scopes) until ``expires_in`` (60 s when absent, the spec's
    default) minus a margin; concurrent requests for the same scopes share one fetch.
``Basic realm="..."``
    send ``Authorization: Basic`` with the credentials for that host.

A request that gets 401 is retried once with fresh authorization; a second 401 is
Unauthorized. Credentials come from :func:`imgpipe.remote.credentials.lookup` for the
registry host and go only to that host or to the token realm it names; tokens and
passwords never appear in messages or reprs.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode, urlsplit

from imgpipe.formats.errors import Unauthorized, Unavailable

from .http import HttpClient, read_limited, redact_url

if TYPE_CHECKING:
    from .credentials import Credentials

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Authorizer",
    "Challenge",
    "parse_challenges",
]

#: Token lifetime when the token server gives no ``expires_in`` (distribution's spec).
DEFAULT_TOKEN_LIFETIME: Final = 60
#: Tokens are dropped this many seconds before they expire, so a request never carries a
#: token that expires in flight.
_EXPIRY_MARGIN: Final = 5
#: Token responses are small JSON; anything bigger is not a token response.
_MAX_TOKEN_RESPONSE: Final = 1 << 20
_CLIENT_ID: Final = "imgpipe"

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: scheme (lowercase) and params."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (RFC 7235): several challenges, quoted or token params.

    Unparseable trailing text is ignored rather than fatal: the caller fails with
    Unauthorized if no usable challenge is left.
    """
    out: list[Challenge] = []
    i, n = 0, len(header)

    def skip_ws() -> None:
        nonlocal i
        while i < n and header[i] in " \t,":
            i += 1

    while True:
        skip_ws()
        m = _TOKEN_RE.match(header, i)
        if not m:
            break
        scheme, i = m.group(0).lower(), m.end()
        params: dict[str, str] = {}
        while True:
            save = i
            skip_ws()
            pm = _TOKEN_RE.match(header, i)
            if not pm:
                break
            j = pm.end()
            while j < n and header[j] in " \t":
                j += 1
            if j >= n or header[j] != "=":
                i = save  # the next token is a new scheme, not a parameter
                break
            key, j = pm.group(0).lower(), j + 1
            while j < n and header[j] in " \t":
                j += 1
            if j < n and header[j] == '"':
                j += 1
                buf = []
                while j < n and header[j] != '"':
                    if header[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(header[j])
                    j += 1
                value, i = "".join(buf), j + 1
            else:
                vm = _TOKEN_RE.match(header, j)
                value, i = (vm.group(0), vm.end()) if vm else ("", j)
            params[key] = value
        out.append(Challenge(scheme, params))
    return out


@dataclass
class _Token:
    value: str
    expires: float

    def __repr__(self) -> str:
        return "_Token(<redacted>)"


@dataclass
class _HostAuth:
    """What the last challenge from a host said: the scheme and where to get tokens."""

    scheme: str
    realm: str = ""
    service: str = ""


CredentialLookup = Callable[[str], "Credentials | None"]


class Authorizer:
    """Authorization headers for requests to registries; shared by a client's threads.

    ``credentials`` maps a registry host to its credentials (None = anonymous).
    """

    def __init__(
        self,
        http: HttpClient,
        credentials: CredentialLookup,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._clock = clock
        self._hosts: dict[str, _HostAuth] = {}
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}
        self._fetching: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._cred_cache: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Authorizer(hosts={sorted(self._hosts)})"

    def _creds(self, host: str) -> Credentials | None:
        with self._lock:
            if host in self._cred_cache:
                return self._cred_cache[host]
        creds = self._credentials(host)  # may run a helper binary: outside the lock
        with self._lock:
            self._cred_cache[host] = creds
        return creds

    def header(self, host: str, scopes: Sequence[str], *, ca: str | None = None) -> str | None:
        """The ``Authorization`` value for a request to ``host`` needing ``scopes``, or
        None when the host has not asked for authorization (yet)."""
        with self._lock:
            ha = self._hosts.get(host)
        if ha is None:
            return None
        if ha.scheme == "basic":
            return self._basic(host)
        return "Bearer " + self._token(host, ha, scopes, ca=ca)

    def challenge(
        self,
        host: str,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        ca: str | None = None,
        what: str = "",
    ) -> str:
        """Learn from a 401's header; return the ``Authorization`` value to retry with.

        Drops the cached token for these scopes (it was refused). Raises Unauthorized if
        the challenge is unusable or needs credentials we do not have, Unavailable if the
        token server cannot be reached.
        """
        label = what or host
        chosen: _HostAuth | None = None
        extra: list[str] = []
        for c in parse_challenges(www_authenticate):
            if c.scheme == "bearer" and c.params.get("realm"):
                chosen = _HostAuth("bearer", c.params["realm"], c.params.get("service", ""))
                if c.params.get("scope"):
                    extra = c.params["scope"].split(" ")
                break
            if c.scheme == "basic" and chosen is None:
                chosen = _HostAuth("basic")
        if chosen is None:
            raise Unauthorized(
                f"{label}: the registry asks for an authentication scheme imgpipe does not support"
            )
        realm = urlsplit(chosen.realm) if chosen.realm else None
        if realm is not None and realm.scheme not in ("http", "https"):
            raise Unauthorized(f"{label}: token realm is not an HTTP URL")
        with self._lock:
            self._hosts[host] = chosen
        if chosen.scheme == "basic":
            value = self._basic(host)
            if value is None:
                raise Unauthorized(
                    f"{label}: authentication required; log in first "
                    "(imgpipe login) or give --auth-file"
                )
            return value
        all_scopes = sorted({*scopes, *(s for s in extra if s)})
        key = self._key(host, chosen, all_scopes)
        with self._lock:
            self._tokens.pop(key, None)
        return "Bearer " + self._token(host, chosen, all_scopes, ca=ca)

    def _basic(self, host: str) -> str | None:
        creds = self._creds(host)
        if creds is None or not creds.username or not creds.password:
            return None
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @staticmethod
    def _key(host: str, ha: _HostAuth, scopes: Sequence[str]) -> tuple[str, str, str, str]:
        return (host, ha.realm, ha.service, " ".join(sorted(scopes)))

    def _token(self, host: str, ha: _HostAuth, scopes: Sequence[str], *, ca: str | None) -> str:
        key = self._key(host, ha, scopes)
        with self._lock:
            tok = self._tokens.get(key)
            if tok is not None and tok.expires > self._clock():
                return tok.value
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        with fetch_lock:  # one fetch per scope set; the others wait and reuse it
            with self._lock:
                tok = self._tokens.get(key)
                if tok is not None and tok.expires > self._clock():
                    return tok.value
            tok = self._fetch_token(host, ha, sorted(scopes), ca)
            with self._lock:
                self._tokens[key] = tok
            return tok.value

    def _fetch_token(
        self, host: str, ha: _HostAuth, scopes: Sequence[str], ca: str | None
    ) -> _Token:
        creds = self._creds(host)
        realm = redact_url(ha.realm)
        realm_host = urlsplit(ha.realm).netloc
        # The registry's CA applies to the realm only when the realm is the same host.
        realm_ca = ca if realm_host == host else None
        if creds is not None and (creds.identity_token or (creds.username and creds.password)):
            form: list[tuple[str, str]] = [("service", ha.service), ("client_id", _CLIENT_ID)]
            if creds.identity_token:
                form += [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token)]
            else:
                form += [
                    ("grant_type", "password"),
                    ("username", creds.username),
                    ("password", creds.password),
                ]
            form += [("scope", s) for s in scopes]
            resp = self._http.send(
                "POST",
                ha.realm,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                body=urlencode(form).encode(),
                ca=realm_ca,
            )
            if resp.status == 200:
                return self._parse(read_limited(resp, _MAX_TOKEN_RESPONSE), host, realm)
            read_limited(resp, 64 << 10)
            # Token servers that predate the OAuth2 form (docker's own, old Harbor) refuse
            # it; they take GET with Basic credentials instead.
            if resp.status not in (400, 401, 403, 404, 405) or creds.identity_token:
                self._refused(resp.status, host, realm)
        query = [("service", ha.service)] if ha.service else []
        query += [("scope", s) for s in scopes]
        url = ha.realm + ("&" if "?" in ha.realm else "?") + urlencode(query)
        headers: dict[str, str] = {}
        basic = self._basic(host)
        if basic is not None:
            headers["Authorization"] = basic
        resp = self._http.send("GET", url, headers=headers, ca=realm_ca)
        if resp.status != 200:
            read_limited(resp, 64 << 10)
            self._refused(resp.status, host, realm)
        return self._parse(read_limited(resp, _MAX_TOKEN_RESPONSE), host, realm)

    @staticmethod
    def _refused(status: int, host: str, realm: str) -> None:
        if status in (401, 403):
            raise Unauthorized(
                f"{host}: the token server {realm} refused the credentials (HTTP {status})"
            )
        if status == 429 or status >= 500:
            raise Unavailable(f"{host}: token server {realm} answered HTTP {status}")
        raise Unauthorized(f"{host}: token server {realm} answered HTTP {status}")

    def _parse(self, body: bytes, host: str, realm: str) -> _Token:
        try:
            obj = json.loads(body) if len(body) <= _MAX_TOKEN_RESPONSE else None
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            raise Unauthorized(f"{host}: token server {realm} sent no JSON token response")
        value = obj.get("token") or obj.get("access_token")
        if not isinstance(value, str) or not value:
            raise Unauthorized(f"{host}: token server {realm} sent no token")
        lifetime = obj.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        expires = self._clock() + max(lifetime - _EXPIRY_MARGIN, 1)
        return _Token(value, expires)
