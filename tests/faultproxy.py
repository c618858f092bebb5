"""A hostile registry: an HTTP proxy in front of a real one that misbehaves on request.

The proxy forwards every request to the upstream registry (keeping ``Host``, so the
``Location`` headers the registry builds point back at the proxy) and streams the answer
back, counting the body bytes it served per path. Faults are rules matched by a regular
expression on the request path (and a method); each fires ``times`` times (``None`` =
always) and then the proxy behaves:

- ``corrupt``: flip one byte of the body (the length is unchanged);
- ``truncate``: announce the full ``Content-Length`` but close after ``after`` bytes;
- ``stall``: send ``after`` bytes, then hold the connection until ``release()`` (so a test
  can kill a client mid-blob without racing a clock);
- ``status``: answer ``status`` with an error body instead of forwarding;
- ``body``: answer with the upstream's status and headers but another body (a registry
  serving the wrong manifest for a digest).

:meth:`FaultProxy.throttle` caps the bytes per second of every response body together
(a slow registry link, shared by the parallel transfers as a real one is), and of the
request bodies (uploads) the same way. :meth:`FaultProxy.strip_range` drops the ``Range``
header of every request (a registry or CDN that ignores Range: whole blobs, status 200).

``Range`` and every other end-to-end header is forwarded, so resumption can be tested.
Authorization headers are forwarded but never logged.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass
class Fault:
    """One misbehaviour rule; see the module docstring for the kinds."""

    kind: str
    pattern: re.Pattern[str]
    method: str = "GET"
    times: int | None = 1
    after: int = 0  # truncate/stall: body bytes to send first; corrupt: offset of the byte
    status: int = 500
    code: str = "UNKNOWN"  # status: the registry error code in the answer's body
    body: bytes = b""
    skip: int = 0  # matching requests let through untouched before the fault fires
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.pattern.search(path) is None:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]  # without Authorization and cookies
    status: int


@dataclass
class FaultProxy:
    """A proxy on 127.0.0.1 in front of ``upstream`` (an object with ``.host`` and
    ``.ca_file``); create it with :meth:`start`, stop it with :meth:`close`."""

    upstream_host: str
    upstream_tls: ssl.SSLContext | None = None
    faults: list[Fault] = field(default_factory=list)
    requests: list[LoggedRequest] = field(default_factory=list)
    bytes_by_path: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)
    rate: float | None = None  # body bytes per second over all connections, None: no cap
    no_range: bool = False  # drop Range from requests (strip_range)
    _next_send: float = 0.0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- what tests use ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str) -> str:
        return f"{self.host}/{repo}:{tag}"

    def add(self, kind: str, pattern: str, **kw: Any) -> Fault:
        fault = Fault(kind, re.compile(pattern), **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def corrupt(
        self, pattern: str, *, offset: int = 0, times: int | None = None, skip: int = 0
    ) -> Fault:
        """Flip the byte at ``offset`` of matching GET bodies (after the first ``skip``)."""
        return self.add("corrupt", pattern, after=offset, times=times, skip=skip)

    def truncate(self, pattern: str, *, after: int, times: int | None = None) -> Fault:
        """Close matching GETs after ``after`` body bytes (the length header stays full)."""
        return self.add("truncate", pattern, after=after, times=times)

    def drop_once(self, pattern: str, *, after: int) -> Fault:
        """Drop the connection once after ``after`` bytes; later requests (Range) succeed."""
        return self.add("truncate", pattern, after=after, times=1)

    def stall(self, pattern: str, *, after: int) -> Fault:
        """Send ``after`` bytes of the first matching GET, then hold until :meth:`release`."""
        return self.add("stall", pattern, after=after, times=1)

    def fail(
        self,
        pattern: str,
        *,
        status: int = 500,
        times: int = 1,
        method: str = "*",
        code: str = "UNKNOWN",
    ) -> Fault:
        """Answer the first ``times`` matching requests with ``status`` and a registry
        error body carrying ``code``."""
        return self.add("status", pattern, status=status, times=times, method=method, code=code)

    def replace_body(self, pattern: str, body: bytes, *, times: int | None = None) -> Fault:
        """Serve ``body`` instead of the upstream's for matching GETs."""
        return self.add("body", pattern, body=body, times=times)

    def release(self) -> None:
        self._released.set()

    def throttle(self, bytes_per_second: float | None) -> None:
        """Serve every body at most this fast, all connections together (None: unthrottled)."""
        with self._lock:
            self.rate = bytes_per_second
            self._next_send = time.monotonic()

    def strip_range(self, on: bool = True) -> None:
        """Forward requests without their ``Range`` header: every answer is the whole body."""
        with self._lock:
            self.no_range = on

    def _paced(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Request bodies (uploads) go through the slow link too."""
        for chunk in chunks:
            self._pace(len(chunk))
            yield chunk

    def _pace(self, n: int) -> None:
        # One clock for the whole link: each chunk is given the next free slot of the
        # shared rate, and its sender waits for it (the proxy *is* the slow link here).
        with self._lock:
            if self.rate is None:
                return
            start = max(time.monotonic(), self._next_send)
            self._next_send = start + n / self.rate
            due = self._next_send
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def served(self, pattern: str = "") -> int:
        """Body bytes served on paths matching ``pattern`` (all paths when empty)."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(n for p, n in self.bytes_by_path.items() if rx.search(p))

    def log(self, pattern: str = "", method: str | None = None) -> list[LoggedRequest]:
        rx = re.compile(pattern)
        with self._lock:
            return [
                r
                for r in self.requests
                if rx.search(r.path) and (method is None or r.method == method)
            ]

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_by_path.clear()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle(self) -> None:
                # a client that hangs up (or one the fault hung up on) is not a test error
                try:
                    super().handle()
                except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
                    self.close_connection = True

            def do_GET(self) -> None:
                proxy._forward(self)

            do_HEAD = do_GET
            do_PUT = do_GET
            do_POST = do_GET
            do_PATCH = do_GET
            do_DELETE = do_GET

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- forwarding -------------------------------------------------------------------------

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.fired += 1
                    return fault
        return None

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_by_path[path] += n

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        fault = self._pick(method, path)
        logged = {k: v for k, v in h.headers.items() if k.lower() not in SECRET_HEADERS}

        body_iter = self._paced(_request_body(h))
        if fault is not None and fault.kind == "status":
            for _ in body_iter:  # drain what the client sent, to keep the connection usable
                pass
            self._log(method, path, logged, fault.status)
            payload = b'{"errors":[{"code":"%s","message":"injected fault"}]}' % fault.code.encode()
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(payload)
            return

        conn: http.client.HTTPConnection
        if self.upstream_tls is not None:
            conn = http.client.HTTPSConnection(
                self.upstream_host, timeout=60, context=self.upstream_tls
            )
        else:
            conn = http.client.HTTPConnection(self.upstream_host, timeout=60)
        try:
            headers: dict[str, str] = {}
            drop = HOP_BY_HOP | {"range", "if-range"} if self.no_range else HOP_BY_HOP
            for k, v in h.headers.items():
                if k.lower() not in drop:
                    # repeated headers (several Accept lines) fold into one list, as HTTP allows
                    headers[k] = f"{headers[k]}, {v}" if k in headers else v
            # the registry builds Location URLs from Host and the scheme it was reached by
            headers["X-Forwarded-Proto"] = "http"
            has_body = "Content-Length" in h.headers or "chunked" in h.headers.get(
                "Transfer-Encoding", ""
            )
            if has_body:
                length = h.headers.get("Content-Length")
                if length is not None:
                    headers["Content-Length"] = length
                    conn.request(method, path, body=_join(body_iter, int(length)), headers=headers)
                else:
                    conn.request(method, path, body=body_iter, headers=headers, encode_chunked=True)
            else:
                conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            self._relay(h, resp, fault, logged)
        finally:
            conn.close()

    def _log(self, method: str, path: str, headers: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append(LoggedRequest(method, path, headers, status))

    def _relay(
        self,
        h: BaseHTTPRequestHandler,
        resp: http.client.HTTPResponse,
        fault: Fault | None,
        logged: dict[str, str],
    ) -> None:
        method, path = h.command, h.path
        self._log(method, path, logged, resp.status)
        length_header = resp.getheader("Content-Length")
        replaced = fault is not None and fault.kind == "body"
        if replaced:
            assert fault is not None
            resp.read()
            chunks: Iterator[bytes] = iter([fault.body])
            length = len(fault.body)
        elif length_header is None and method != "HEAD":
            data = resp.read()  # chunked upstream answers are small JSON documents
            chunks, length = iter([data]), len(data)
        else:
            chunks = iter(lambda: resp.read(CHUNK), b"")
            length = int(length_header or 0)

        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if method == "HEAD":
            return

        sent = 0
        for data in chunks:
            chunk = data
            if (
                fault is not None
                and fault.kind == "corrupt"
                and sent <= fault.after < sent + len(chunk)
            ):
                i = fault.after - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            cut = fault is not None and fault.kind in ("truncate", "stall")
            if cut and fault is not None and sent + len(chunk) >= fault.after:
                head = chunk[: fault.after - sent]
                h.wfile.write(head)
                h.wfile.flush()
                self._count(path, len(head))
                if fault.kind == "stall":
                    self._released.wait(timeout=120)
                _hang_up(h)
                return
            self._pace(len(chunk))
            h.wfile.write(chunk)
            h.wfile.flush()
            sent += len(chunk)
            self._count(path, len(chunk))
        h.wfile.flush()


def _hang_up(h: BaseHTTPRequestHandler) -> None:
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)


def _request_body(h: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """The request body as chunks, from a Content-Length or chunked encoding."""
    length = h.headers.get("Content-Length")
    if length is not None:
        left = int(length)
        while left > 0:
            data = h.rfile.read(min(CHUNK, left))
            if not data:
                raise ConnectionError("client closed mid-body")
            left -= len(data)
            yield data
        return
    if "chunked" not in h.headers.get("Transfer-Encoding", ""):
        return
    while True:
        size_line = h.rfile.readline(1024)
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            # trailers end with an empty line
            while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return
        data = h.rfile.read(size)
        h.rfile.readline(16)
        yield data


class _join:
    """A file-like view of a chunk iterator for http.client with a known length."""

    def __init__(self, chunks: Iterator[bytes], length: int) -> None:
        self._chunks = chunks
        self._buf = b""
        self.length = length

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n) and (chunk := next(self._chunks, b"")):
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out
