"""Listing a registry's repositories (``_catalog``) and a repository's tags, page by page.

The distribution API pages both lists with ``n`` (page size) and ``last`` (exclusive
start), and says the next page in a ``Link: <...>; rel="next"`` header; clients should
prefer the header. Registries differ: distribution 2.8 ignores ``n`` on tags/list
(every tag, unsorted, no Link), refuses a big ``n`` on ``_catalog`` with 400
PAGINATION_NUMBER_INVALID, Quay answers 413 TOO_MANY_TAGS_REQUESTED over 100. So:

* follow ``Link`` while there is one; without one, a page shorter than ``n`` (or longer:
  ``n`` ignored) is the last; a full page goes on with ``last=`` its last entry;
* a 400/413 for the page size halves ``n`` and asks again;
* a page that repeats what came before ends the listing (a registry looping on ``last``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode, urljoin

from imgpipe.formats.errors import InvalidArgument, MalformedDocument, Unavailable
from imgpipe.formats.reference import Reference
from imgpipe.remote.http import read_limited
from imgpipe.remote.responses import error_for

if TYPE_CHECKING:
    import urllib3

    from imgpipe.remote.client import RegistryClient, Repository
    from imgpipe.remote.hosts import Endpoint

__all__ = ["PAGE_SIZE", "list_repositories", "list_tags"]

#: Entries asked for per page: distribution's default catalogue cap is 1000 per request.
PAGE_SIZE: Final = 1000
#: A listing page is JSON of names; bigger than this is not a listing.
_MAX_PAGE_BYTES: Final = 16 << 20
_LINK_RE: Final = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def list_repositories(client: RegistryClient, host: str, *, page: int = PAGE_SIZE) -> list[str]:
    """Every repository of the registry ``host`` (``_catalog``), sorted."""
    repo = client.repository(Reference(host, "library"))
    repo.scopes = ("registry:catalog:*",)
    return sorted(set(_pages(repo, "_catalog", "repositories", page)))


def list_tags(client: RegistryClient, ref: Reference, *, page: int = PAGE_SIZE) -> list[str]:
    """Every tag of the repository ``ref`` names, sorted."""
    return sorted(set(_pages(client.repository(ref), "tags/list", "tags", page)))


def _pages(repo: Repository, what: str, key: str, n: int) -> Iterator[str]:
    ep = repo.endpoints[-1]  # listing asks the registry itself, not a pull mirror
    seen: set[str] = set()
    url: str | None = None
    last = ""
    while True:
        query = {"n": str(n), **({"last": last} if last else {})}
        resp = _get(repo, ep, what, url, query)
        if resp.status in (400, 413) and url is None and n > 1:
            read_limited(resp, 1 << 16)
            n //= 2  # the page size was refused: ask for smaller pages
            continue
        if resp.status != 200:
            raise error_for(resp, f"{repo.ref.domain}: listing {what}")
        link = resp.headers.get("Link", "")
        body = read_limited(resp, _MAX_PAGE_BYTES)
        names = _names(body, key, f"{repo.ref.domain}: {what}")
        fresh = [x for x in names if x not in seen]
        yield from fresh
        seen.update(fresh)
        m = _LINK_RE.search(link)
        if not fresh:
            return  # an empty page, or one that only repeats: the end
        if m is not None:
            url = m.group(1)
            continue
        if len(names) != n:
            return  # short (the end) or long (``n`` ignored: everything came at once)
        url, last = None, names[-1]


def _get(
    repo: Repository, ep: Endpoint, what: str, url: str | None, query: dict[str, str]
) -> urllib3.BaseHTTPResponse:
    if what == "tags/list" and url is None:
        return repo.request("GET", what, ep=ep, query=query)
    # _catalog is not under a repository, and a Link is a URL relative to the registry
    last_error: Unavailable | None = None
    for scheme in repo.client.schemes(ep):
        base = f"{scheme}://{ep.host}/v2/"
        full = urljoin(base, url) if url else base + what + "?" + urlencode(query)
        try:
            return repo.request("GET", what, ep=ep, url=full)
        except Unavailable as e:
            last_error = e
    raise last_error or Unavailable(f"{ep.host}: no scheme to list {what} with")


def _names(body: bytes, key: str, shown: str) -> list[str]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise MalformedDocument(f"{shown}: not JSON") from None
    names = doc.get(key) if isinstance(doc, dict) else None
    if names is None:
        return []  # distribution answers {"tags": null} for a repository without tags
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise MalformedDocument(f"{shown}: {key!r} is not a list of names")
    if any(not x for x in names):
        raise InvalidArgument(f"{shown}: an empty name in the listing")
    return names
