"""Whether a host speaks TLS: the probe that picks HTTPS or plain HTTP for loopback and
``insecure`` registries (:meth:`~imgpipe.remote.client.RegistryClient.schemes`).

The probe writes one TLS ClientHello on a plain TCP connection and reads the first
bytes of the answer, nothing more: no HTTP request, no credentials, no OpenSSL. A TLS
server answers with a TLS record (its ServerHello, or an alert if it dislikes the
offer); a plain-HTTP server answers with an HTTP error. Building no ``SSLContext``
matters on the plain-HTTP path: the process's first one initialises OpenSSL's TLS
library and reads its config (1.5-3 ms), and a plain-HTTP pull makes no other.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final

__all__ = ["TLS_PROBE_TIMEOUT", "client_hello", "speaks_tls"]

#: Seconds the TLS probe of a loopback or insecure host may take (it is a handshake on
#: a local or explicitly trusted address; a slow answer just means "try HTTPS").
TLS_PROBE_TIMEOUT: Final = 2.0

#: TLS record content types (RFC 8446 5.1): change_cipher_spec, alert, handshake, data.
_RECORD_TYPES: Final = frozenset({20, 21, 22, 23})
# What the ClientHello offers: what OpenSSL 3 and Go's crypto/tls offer first.
_SUITES: Final = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8009c009d")
_GROUPS: Final = bytes.fromhex("001d00170018")  # x25519, secp256r1, secp384r1
_SIGNATURES: Final = bytes.fromhex("04030804040105030805050108060601")
_VERSIONS: Final = bytes.fromhex("03040303")  # TLS 1.3, 1.2


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _vector16(body: bytes) -> bytes:
    return struct.pack("!H", len(body)) + body


def client_hello(server_name: str = "") -> bytes:
    """One TLS record holding a ClientHello (RFC 8446 4.1.2) for TLS 1.2 or 1.3, with
    SNI when ``server_name`` is a host name (not an address)."""
    extensions = (
        _extension(10, _vector16(_GROUPS))  # supported_groups
        + _extension(11, b"\x01\x00")  # ec_point_formats: uncompressed
        + _extension(13, _vector16(_SIGNATURES))  # signature_algorithms
        + _extension(43, bytes([len(_VERSIONS)]) + _VERSIONS)  # supported_versions
        # key_share: an x25519 share (any 32 bytes are a public key; none is ever used)
        + _extension(51, _vector16(b"\x00\x1d" + _vector16(os.urandom(32))))
    )
    if server_name and not _is_address(server_name):
        name = server_name.encode("idna")
        entry = b"\x00" + _vector16(name)
        extensions = _extension(0, _vector16(entry)) + extensions  # server_name
    body = (
        b"\x03\x03"  # legacy_version: TLS 1.2
        + os.urandom(32)
        + b"\x20"
        + os.urandom(32)  # a legacy session id, as TLS 1.3 clients send
        + _vector16(_SUITES)
        + b"\x01\x00"  # compression: null
        + _vector16(extensions)
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + _vector16(handshake)


def _is_address(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


def speaks_tls(host: str, *, timeout: float = TLS_PROBE_TIMEOUT) -> bool:
    """Whether ``host`` (``name[:port]``, default port 443) answers a TLS ClientHello.

    Used only for hosts that may fall back to plain HTTP (loopback, ``insecure``). False
    only when the peer plainly is not a TLS server (its first bytes are not a TLS record
    header: an HTTP error, typically); any other outcome (a TLS record, silence, a
    closed connection, a refused or slow connect) says True, and the real, verifying
    HTTPS request decides as before.
    """
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout) as sock:
            sock.sendall(client_hello(name))
            head = b""
            while len(head) < 3:
                chunk = sock.recv(3 - len(head))
                if not chunk:
                    break
                head += chunk
    except (OSError, ValueError, UnicodeError):
        return True
    if not head:
        return True
    # a record header: content type, then the version's major byte (3 for every TLS)
    return head[0] in _RECORD_TYPES and (len(head) < 2 or head[1] == 3)
