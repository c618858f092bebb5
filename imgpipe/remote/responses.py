"""How registry answers become errors: one table, one line per error.

The message names registry and repository, never a token or a signed URL:

=================================  =========================================
401, 403 / DENIED, UNAUTHORIZED    Unauthorized
404 / *_UNKNOWN                    NotFound
400 DIGEST_INVALID                 DigestMismatch
400 SIZE_INVALID                   SizeMismatch
413                                ResourceLimit
405 / UNSUPPORTED                  Unsupported
408, 429, 5xx after retries        Unavailable
no connection after retries        Unavailable
other 4xx                          FailedPrecondition
=================================  =========================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from imgpipe.formats import errors
from imgpipe.formats.digest import Digest

from .http import is_retryable, read_limited

if TYPE_CHECKING:
    import urllib3

__all__ = ["MAX_ERROR_BODY", "error_code", "error_for", "parse_digest", "strip_params"]

#: Registry error bodies are small JSON; we read at most this much of one.
MAX_ERROR_BODY: Final = 64 << 10


def _ocierrors(body: bytes) -> tuple[str, str]:
    """The first ``(code, message)`` of an OCI error body, or empty strings."""
    try:
        obj = json.loads(body)
        first = obj["errors"][0]
        code, msg = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""
    return code[:64], " ".join(msg.split())[:200]


def error_code(body: bytes) -> str:
    """The first error code of an OCI error body (``NAME_UNKNOWN``...), or ""."""
    return _ocierrors(body)[0]


def error_for(resp: urllib3.BaseHTTPResponse, what: str) -> errors.ImgpipeError:
    """The error class for a failed answer, with a one-line message (reads the body)."""
    status = resp.status
    code, msg = _ocierrors(read_limited(resp, MAX_ERROR_BODY))
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {msg}" if msg else "")
    text = f"{what}: {detail}"
    if status in (401, 403) or code in ("DENIED", "UNAUTHORIZED"):
        return errors.Unauthorized(text)
    if status == 404 or code.endswith("_UNKNOWN") or code == "NAME_UNKNOWN":
        return errors.NotFound(text)
    if code == "DIGEST_INVALID":
        return errors.DigestMismatch(text)
    if code == "SIZE_INVALID":
        return errors.SizeMismatch(text)
    if status == 413:
        return errors.ResourceLimit(text)
    if status == 405 or code == "UNSUPPORTED":
        return errors.Unsupported(text)
    if is_retryable(status=status) or status >= 500:
        return errors.Unavailable(text)
    return errors.FailedPrecondition(text)


def strip_params(content_type: str) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


def parse_digest(text: str, shown: str) -> Digest:
    """A digest header's value; FailedPrecondition (naming ``shown``) if malformed."""
    try:
        return Digest.parse(text.strip())
    except errors.InvalidDigest:
        raise errors.FailedPrecondition(f"{shown}: the registry sent a malformed digest") from None
