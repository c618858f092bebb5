"""A small Docker token server for the token-auth registry fixture.

It speaks the protocol distribution's ``auth.token`` expects
(https://distribution.github.io/distribution/spec/auth/token/):

- ``GET /token?service=S&scope=repository:NAME:pull,push&account=U`` with optional Basic
  credentials -> ``{"token", "access_token", "expires_in", "issued_at"}``;
- ``POST /token`` form (``grant_type=password`` with username/password, or
  ``grant_type=refresh_token`` with refresh_token; service, scope, client_id,
  ``access_type=offline``) -> the same, plus ``refresh_token`` when asked for offline access
  or when a refresh token was presented.

Policy: anonymous callers get ``pull`` on every repository; the one configured user gets
``pull`` and ``push``. Wrong credentials are a 401, never a downgrade to anonymous, as
real token servers do.

Tokens are ES256 JWTs. The header carries the signing certificate in ``x5c``: distribution
2.8 (``registry/auth/token/token.go``) tries ``x5c`` first and verifies the chain against
``rootcertbundle``, which holds that same self-signed certificate.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TOKEN_TTL = 300  # seconds; the registry adds 60 s leeway on expiry checks
ISSUER = "imgpipe-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    """One request the server answered, for assertions (no secrets kept)."""

    method: str
    account: str  # the authenticated user, "" for anonymous
    scopes: list[str]
    grant_type: str  # "" for GET
    status: int


@dataclass
class TokenServer:
    """Issue registry tokens on 127.0.0.1; ``start()`` then ``realm`` is the token URL."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    service: str
    username: str
    password: str
    ttl: int = TOKEN_TTL
    log: list[TokenRequest] = field(default_factory=list)
    _refresh: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def realm(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self._reply(404, {"error": "not found"})
                    return
                q = urllib.parse.parse_qs(url.query)
                user = self._basic_user()
                if user is None:
                    self._deny("GET", q.get("scope", []), "")
                    return
                status, body = server._issue(user, q.get("scope", []), offline=False)
                server._record("GET", user, q.get("scope", []), "", status)
                self._reply(status, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                scopes = " ".join(form.get("scope", [])).split()
                user: str | None
                if grant == "password":
                    u, p = form.get("username", [""])[0], form.get("password", [""])[0]
                    user = u if server._check(u, p) else None
                elif grant == "refresh_token":
                    with server._lock:
                        user = server._refresh.get(form.get("refresh_token", [""])[0])
                else:
                    self._reply(400, {"error": "unsupported_grant_type"})
                    return
                if user is None:
                    self._deny("POST", scopes, grant)
                    return
                offline = form.get("access_type", [""])[0] == "offline" or grant == "refresh_token"
                status, body = server._issue(user, scopes, offline=offline)
                server._record("POST", user, scopes, grant, status)
                self._reply(status, body)

            def _basic_user(self) -> str | None:
                """The Basic user, "" when none was sent, None when the password is wrong."""
                header = self.headers.get("Authorization", "")
                if not header:
                    return ""
                scheme, _, value = header.partition(" ")
                if scheme.lower() != "basic":
                    return None
                try:
                    u, _, p = base64.b64decode(value).decode().partition(":")
                except ValueError:
                    return None
                return u if server._check(u, p) else None

            def _deny(self, method: str, scopes: list[str], grant: str) -> None:
                server._record(method, "", scopes, grant, 401)
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- policy and signing ----------------------------------------------------------------

    def _check(self, user: str, password: str) -> bool:
        return secrets.compare_digest(user, self.username) and secrets.compare_digest(
            password, self.password
        )

    def _record(self, method: str, user: str, scopes: list[str], grant: str, status: int) -> None:
        with self._lock:
            self.log.append(TokenRequest(method, user, list(scopes), grant, status))

    def _issue(self, user: str, scopes: list[str], *, offline: bool) -> tuple[int, dict[str, Any]]:
        access = []
        for scope in scopes:
            for one in scope.split():
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                wanted = [a for a in actions.split(",") if a]
                allowed = {"pull", "push", "*"} if user else {"pull"}
                granted = [a for a in wanted if a in allowed]
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": self.service,
            "exp": now + self.ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = self.sign(claims)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        if offline and user:
            refresh = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh[refresh] = user
            body["refresh_token"] = refresh
        return 200, body

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact ES256 JWS over ``claims`` with the certificate in ``x5c``."""
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        # JWS wants the raw 32-byte r || s, not DER (RFC 7518 section 3.4)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(sig)
