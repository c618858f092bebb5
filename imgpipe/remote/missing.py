"""Telling a missing repository from a missing tag, and listing a repository's tags.

A registry's 404 for ``manifests/<ref>`` means either. The OCI distribution spec says
which with the error code (``NAME_UNKNOWN``: no such repository; ``MANIFEST_UNKNOWN``: no
such manifest), but a HEAD answer has no body, and distribution 2.8 (Debian's
``docker-registry``) answers ``MANIFEST_UNKNOWN`` for both. So, after a 404:

1. ``GET manifests/<ref>`` for the error body: ``NAME_UNKNOWN`` is believed at once;
2. otherwise ``GET tags/list``: a 404 (``NAME_UNKNOWN``) means the repository is missing;
   a list means the tag (or digest) is, and the message lists the tags the repository has,
   as the ``oci:`` transport does for a layout.

If the look-up itself fails (refused, unreachable), the registry's first answer is
reported as it was: explaining must never hide the error being explained.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from imgpipe.formats.errors import ImgpipeError, NotFound

from .http import read_limited
from .responses import MAX_ERROR_BODY, error_code, error_for

if TYPE_CHECKING:
    from .client import Repository
    from .hosts import Endpoint

__all__ = ["MAX_TAGS_BODY", "MAX_TAGS_SHOWN", "list_tags", "missing_manifest"]

#: A tags/list answer is read up to this size: 10 000 tags of 100 bytes; a larger list is
#: a registry we do not page through for a message.
MAX_TAGS_BODY: Final = 1 << 20
#: Tags named in a "no such tag" message; the rest are counted, so the line stays a line.
MAX_TAGS_SHOWN: Final = 10


def list_tags(repo: Repository, ep: Endpoint) -> list[str]:
    """The tags of ``repo`` at ``ep`` (``GET tags/list``, first page), sorted.

    Raises NotFound (``NAME_UNKNOWN``: no such repository) and the errors of
    :func:`~imgpipe.remote.responses.error_for` for other failures; MalformedDocument is
    not raised: an unreadable list is an empty one (this feeds messages).
    """
    resp = repo.request("GET", "tags/list", ep=ep, headers={"Accept": "application/json"})
    if resp.status != 200:
        raise error_for(resp, repo.what())
    try:
        tags = json.loads(read_limited(resp, MAX_TAGS_BODY)).get("tags") or []
    except (ValueError, AttributeError):
        return []
    return sorted(t for t in tags if isinstance(t, str))


def missing_manifest(
    repo: Repository, ep: Endpoint, ref: str, shown: str, *, code: str | None = None
) -> NotFound:
    """The NotFound for ``manifests/<ref>`` answering 404: which of repository and tag is
    missing, with the registry's code, and the tags the repository has.

    ``code`` is the error code of the 404's body; None (a HEAD's answer, no body) asks
    ``GET manifests/<ref>`` for it first.
    """
    if code is None:
        resp = repo.request("GET", f"manifests/{ref}", ep=ep, headers={"Accept": "*/*"})
        code = error_code(read_limited(resp, MAX_ERROR_BODY)) if resp.status == 404 else ""
    kind = "digest" if ":" in ref else "tag"  # a tag never holds ':'
    if code == "NAME_UNKNOWN":
        return _no_repository(shown, code)
    try:
        tags = list_tags(repo, ep)
    except NotFound as e:
        return _no_repository(shown, "NAME_UNKNOWN" if "NAME_UNKNOWN" in str(e) else "")
    except ImgpipeError:
        return NotFound(f"{shown}: not found (HTTP 404{' ' + code if code else ''})")
    relayed = f" ({code})" if code else ""
    if not tags:
        listed = "the repository has no tags"
    else:
        more = len(tags) - MAX_TAGS_SHOWN
        listed = "the repository has tags: " + ", ".join(tags[:MAX_TAGS_SHOWN])
        if more > 0:
            listed += f" and {more} more"
    return NotFound(f"{shown}: {kind} not found{relayed}; {listed}")


def _no_repository(shown: str, code: str) -> NotFound:
    relayed = f" ({code})" if code else ""
    return NotFound(f"{shown}: repository not found{relayed}")
