"""HTTP for the registry client: one urllib3 pool, timeouts, TLS, retries, safe redirects.

Everything the registry client sends goes through :meth:`HttpClient.send`, which

* keeps one thread-safe :class:`urllib3.PoolManager` (connections are reused per host);
* verifies TLS against the system CAs plus the CA file given for the endpoint;
* sets connect and read timeouts (:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`);
* retries with exponential backoff, honouring ``Retry-After``, only what
  :func:`is_retryable` accepts (408/429/5xx and dropped/refused/timed-out connections),
  and only requests whose body can be sent again;
* follows redirects itself so that ``Authorization`` is dropped whenever the next hop is
  another host (blob storage behind a redirect must never see registry credentials:
  CVE-2020-15157), and never downgrades https to http while credentials are attached.

Failures become the error classes of :mod:`imgpipe.formats.errors`: a connection that
cannot be made or keeps dropping is Unavailable. Messages name the method, host and path,
never query strings (signed storage URLs carry secrets there) or headers.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from imgpipe.formats.errors import ImgpipeError, InvalidArgument, NotFound, Unavailable

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "CONNECT_TIMEOUT",
    "IO_BLOCK_SIZE",
    "MAX_ATTEMPTS",
    "MAX_REDIRECTS",
    "READ_TIMEOUT",
    "RETRYABLE_STATUSES",
    "RETRY_AFTER_MAX",
    "TLS_PROBE_TIMEOUT",
    "HttpClient",
    "NotTLS",
    "connect_failed",
    "is_retryable",
    "read_limited",
    "redact_url",
    "speaks_tls",
]

#: Seconds to establish a TCP (+TLS) connection. Registries answer in milliseconds; a
#: host that takes longer is down or filtered, and the retries give it a few more chances.
CONNECT_TIMEOUT: Final = 10.0
#: Seconds without a byte before a read fails. Long enough for a registry assembling a
#: large upload, short enough that a stalled blob download resumes rather than hangs.
READ_TIMEOUT: Final = 60.0
#: Attempts per request (1 + retries), as containerd's doWithRetries bounds it.
MAX_ATTEMPTS: Final = 4
#: Backoff before retry k is BACKOFF_INITIAL * 2**k seconds, at most BACKOFF_MAX.
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 2.0
#: A server's Retry-After is honoured up to this many seconds (a hostile server must not
#: park us for hours).
RETRY_AFTER_MAX: Final = 10.0
#: Redirect hops followed for one request (distribution redirects once, to storage).
MAX_REDIRECTS: Final = 5
#: Socket send block size for uploads: urllib3's default is 16 KiB, which costs a system
#: call per 16 KiB; 1 MiB matches the content store's buffers.
IO_BLOCK_SIZE: Final = 1 << 20

#: Statuses worth retrying: request timeout, rate limit, server errors that may pass.
#: 501 (not implemented) and 505 (version) will not change on retry.
RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


def is_retryable(*, status: int | None = None, error: BaseException | None = None) -> bool:
    """Whether a request that got ``status`` (or failed with ``error``) should be retried.

    Retried: the statuses in :data:`RETRYABLE_STATUSES`; connection refused, connect and
    read timeouts, connections dropped or reset mid-request. Not retried: everything else,
    notably 4xx answers, TLS failures (a bad certificate does not heal), host names that
    do not resolve, and our own errors.
    """
    if error is not None:
        if isinstance(error, ImgpipeError | SSLError | NameResolutionError):
            return False
        return isinstance(
            error,
            NewConnectionError
            | ConnectTimeoutError
            | ReadTimeoutError
            | ProtocolError
            | ConnectionError
            | TimeoutError,
        )
    return status is not None and status in RETRYABLE_STATUSES


def redact_url(url: str) -> str:
    """``scheme://host/path`` of ``url``: no user info, query or fragment (they may hold
    signatures or tokens)."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


class NotTLS(Unavailable):
    """The server at an https URL does not speak TLS (a plain-HTTP server answered).

    The registry client falls back to plain HTTP on this, where that is allowed.
    """


def connect_failed(exc: Unavailable) -> bool:
    """Whether ``exc`` (from :meth:`HttpClient.send`) means no connection was made at all
    (refused, timed out, unknown host), as opposed to a TLS or protocol failure."""
    return isinstance(exc.__cause__, NewConnectionError | ConnectTimeoutError)


def _describe(exc: BaseException) -> str:
    """A short reason for a transport error, without object reprs or URLs."""
    text = str(exc).lower()
    if isinstance(exc, NameResolutionError):
        return "cannot resolve the host name"
    if isinstance(exc, NewConnectionError):
        return "connection refused" if "refused" in text else "cannot connect"
    if isinstance(exc, ConnectTimeoutError):
        return f"connect timed out after {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, ReadTimeoutError):
        return f"no data for {READ_TIMEOUT:g} s"
    if isinstance(exc, SSLError):
        cause = exc.__cause__ or (exc.args[0] if exc.args else None)
        if isinstance(cause, ssl.SSLCertVerificationError) or "certificate verify" in text:
            reason = getattr(cause, "verify_message", "") or "certificate verify failed"
            return (
                f"TLS certificate not trusted ({reason}); give its CA with --tls-ca FILE "
                "or ca = ... in registries.toml"
            )
        return "TLS handshake failed"
    if isinstance(exc, ProtocolError | ConnectionError):
        return "connection dropped"
    return type(exc).__name__


def _is_not_tls(exc: SSLError) -> bool:
    """A TLS handshake that failed because the peer is not a TLS server (a plain-HTTP
    server answers a ClientHello with an HTTP error, which OpenSSL reads as a bad record)."""
    cause = exc.__cause__ or (exc.args[0] if exc.args else None)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return False
    text = str(exc).lower()
    return any(s in text for s in _NOT_TLS_MARKERS)


# How OpenSSL 1.1 and 3.x describe a non-TLS reply to a ClientHello.
_NOT_TLS_MARKERS: Final = (
    "wrong version number",
    "record layer failure",
    "packet length too long",
    "http request",
)


#: Seconds the TLS probe of a loopback or insecure host may take (it is a handshake on
#: a local or explicitly trusted address; a slow answer just means "try HTTPS").
TLS_PROBE_TIMEOUT: Final = 2.0


def speaks_tls(host: str, *, timeout: float = TLS_PROBE_TIMEOUT) -> bool:
    """Whether ``host`` (``name[:port]``, default port 443) answers a TLS ClientHello.

    Used only for hosts that may fall back to plain HTTP (loopback, ``insecure``): it sends
    a handshake and nothing else — no HTTP request, no credentials — with a context that
    loads no CA bundle (~0.5 ms against ~17 ms for a verifying one). False only when the
    peer plainly is not a TLS server; any other outcome (it speaks TLS, it is slow, it
    refused) says True, and the real, verifying HTTPS request decides as before.
    """
    import socket  # noqa: PLC0415

    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # no trust is placed in this handshake: it is a probe
    try:
        with (
            socket.create_connection((name, int(port or 443)), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=name),
        ):
            return True
    except ssl.SSLError as e:
        text = str(e).lower()
        return not any(m in text for m in _NOT_TLS_MARKERS)
    except (OSError, ValueError):
        return True


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:  # an HTTP-date (RFC 9110 10.2.3)
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class HttpClient:
    """One connection pool for every registry a client talks to. Thread-safe.

    ``sleep`` is the backoff wait (tests may pass one that records the waits).
    """

    def __init__(
        self,
        *,
        user_agent: str,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.max_attempts = max(1, max_attempts)
        self._sleep = sleep or time.sleep
        # maxsize: connections kept per host; more than the default transfer
        # concurrency so token, manifest and blob requests do not evict each other.
        self._pm = urllib3.PoolManager(num_pools=32, maxsize=8, blocksize=IO_BLOCK_SIZE)
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        # host -> monotonic time before which no request goes there: a 429's Retry-After
        # holds every thread of this client, not only the one that was told
        self._not_before: dict[str, float] = {}

    def close(self) -> None:
        self._pm.clear()

    def _ssl_context(self, ca: str | None) -> ssl.SSLContext | None:
        if ca is None:
            return None
        with self._lock:
            ctx = self._contexts.get(ca)
            if ctx is None:
                # The extra CA is trusted *in addition to* the system's, as containerd's
                # hosts.toml ``ca`` is.
                ctx = ssl.create_default_context()
                try:
                    ctx.load_verify_locations(cafile=ca)
                except FileNotFoundError:
                    raise NotFound(f"CA file {ca}: no such file") from None
                except ssl.SSLError as e:
                    raise InvalidArgument(
                        f"CA file {ca}: not PEM certificates ({e.reason})"
                    ) from None
                self._contexts[ca] = ctx
            return ctx

    def _open_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: object,
        ca: str | None,
    ) -> urllib3.BaseHTTPResponse:
        u = urlsplit(url)
        kw: dict[str, object] = {}
        ctx = self._ssl_context(ca) if u.scheme == "https" else None
        if ctx is not None:
            kw["ssl_context"] = ctx
        pool = self._pm.connection_from_url(url, pool_kwargs=kw or None)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        try:
            return pool.urlopen(
                method,
                path,
                body=body,  # type: ignore[arg-type]
                headers=dict(headers),
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=self.timeout,
                assert_same_host=False,
            )
        except SSLError as e:
            if _is_not_tls(e):
                raise NotTLS(f"{method} {redact_url(url)}: the server does not speak TLS") from e
            raise Unavailable(f"{method} {redact_url(url)}: {_describe(e)}") from e

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | object | None = None,
        ca: str | None = None,
        follow_redirects: bool = True,
        once: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; return the final response, body unread (close it).

        Retries what :func:`is_retryable` allows when ``body`` is None or bytes (a stream
        cannot be sent twice) and ``once`` is not set; the last retryable status is
        returned as it is, for the caller to report. Redirects are followed for GET and
        HEAD; an ``Authorization`` header is dropped when a hop changes host, port or
        scheme. Raises Unavailable
        (NotTLS for an https URL answered by a plain-HTTP server) when no connection
        could be made or the connection kept dropping.
        """
        hdrs = {"User-Agent": self.user_agent, **(headers or {})}
        replayable = body is None or isinstance(body, bytes | bytearray)
        attempts = self.max_attempts if replayable and not once else 1
        host = urlsplit(url).netloc
        for attempt in range(attempts):
            last = attempt == attempts - 1
            self._wait_for(host)
            try:
                resp = self._send_following(
                    method, url, headers=hdrs, body=body, ca=ca, follow=follow_redirects
                )
            except NotTLS:
                raise
            except Unavailable as e:
                inner = e.__cause__
                if last or inner is None or not is_retryable(error=inner):
                    raise
                self._backoff(attempt, None)
                continue
            if resp.status == 429:
                self._hold(host, _retry_after(resp))
            if not last and is_retryable(status=resp.status):
                wait = _retry_after(resp)
                _discard(resp)
                self._backoff(attempt, wait)
                continue
            return resp
        raise AssertionError("unreachable")

    def _hold(self, host: str, seconds: float | None) -> None:
        """No request to ``host`` for ``seconds`` (a rate limit: BACKOFF_MAX if unsaid)."""
        until = time.monotonic() + (BACKOFF_MAX if seconds is None else seconds)
        with self._lock:
            self._not_before[host] = max(self._not_before.get(host, 0.0), until)

    def _wait_for(self, host: str) -> None:
        with self._lock:
            until = self._not_before.get(host, 0.0)
        delay = until - time.monotonic()
        if delay > 0:
            self._sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        delay = retry_after if retry_after is not None else BACKOFF_INITIAL * (2**attempt)
        self._sleep(min(delay, max(BACKOFF_MAX, retry_after or 0.0)))

    def _send_following(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: object,
        ca: str | None,
        follow: bool,
    ) -> urllib3.BaseHTTPResponse:
        origin = urlsplit(url)
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                resp = self._open_once(method, url, headers, body, ca)
            except (NotTLS, Unavailable):
                raise
            except (HTTPError, OSError) as e:
                raise Unavailable(f"{method} {redact_url(url)}: {_describe(e)}") from e
            location = resp.headers.get("Location")
            if not follow or resp.status not in _REDIRECTS or not location:
                return resp
            if method not in ("GET", "HEAD"):
                return resp  # an upload's Location is for the caller to use, not follow
            _discard(resp)
            url = urljoin(url, location)
            nxt = urlsplit(url)
            if nxt.scheme not in ("http", "https"):
                raise Unavailable(f"{method} {redact_url(url)}: redirect to a non-HTTP URL")
            if (nxt.scheme, nxt.hostname, nxt.port) != (
                origin.scheme,
                origin.hostname,
                origin.port,
            ):
                # Another host (blob storage, a CDN): it gets no registry credentials, and
                # the CA configured for the registry does not apply to it.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                ca = None
        raise Unavailable(f"{method} {redact_url(url)}: more than {MAX_REDIRECTS} redirects")


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Finish with a response whose body we do not want; keep the connection if cheap."""
    with contextlib.suppress(HTTPError, OSError):
        resp.drain_conn()
    resp.release_conn()


def read_limited(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of the body; then the response is finished.

    The caller compares ``len(result) > limit`` to refuse an oversized body without
    reading all of it (that connection is closed rather than reused).
    """
    try:
        data = bytes(resp.read(limit + 1))
    except (HTTPError, OSError) as e:
        resp.close()
        raise Unavailable(f"reading a response: {_describe(e)}") from e
    if len(data) > limit:
        resp.close()
    else:
        resp.release_conn()
    return data
