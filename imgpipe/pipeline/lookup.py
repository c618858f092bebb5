"""Finding a stored image by name, by digest, or by a unique prefix of its digest.

Docker users name an image by what ``docker images`` shows: a name, or an image ID,
often shortened (``c46e3394dbb2``). Here the ID is the digest ``imgpipe images`` shows
(the root document's, as nerdctl and ctr show it). The rules, in order:

1. ``sha256:<hex>`` (or another algorithm's prefix) is a digest or a digest prefix,
   never a name (Docker reads it so too; as a name it would mean ``sha256`` at tag
   ``<hex>`` on Docker Hub, which nobody means);
2. otherwise the text is tried as a name first, so an image called ``cafe`` is found by
   ``cafe`` even though that is also hex;
3. failing that, a string of at least :data:`MIN_ID_PREFIX` hex digits is an ID prefix.

A digest or prefix matches every name of one image; prefixes that match several
*different* images are ambiguous: InvalidArgument naming the candidates, as Docker
refuses an ambiguous prefix rather than pick one.
"""

from __future__ import annotations

import re
from typing import Final

from imgpipe.formats.errors import InvalidArgument, InvalidReference, NotFound
from imgpipe.metadata import ImageRecord, MetadataDB

from .names import normalize_name

__all__ = ["MIN_ID_PREFIX", "find_images"]

#: The shortest ID prefix accepted: git's shortest abbreviation. Shorter hex strings would
#: match half the store by accident.
MIN_ID_PREFIX: Final = 4
#: Candidates an ambiguity message names before it counts the rest.
_SHOWN: Final = 5
_ALGORITHM_PREFIX: Final = re.compile(r"^(sha256|sha512):")
_HEX: Final = re.compile(r"^[0-9a-f]+$")


def find_images(db: MetadataDB, text: str) -> tuple[ImageRecord, ...]:
    """The records of the one image ``text`` names (by name: that record; by digest or ID
    prefix: every name of that image, sorted).

    Raises NotFound when nothing matches, InvalidArgument when a prefix matches several
    images (the message names them), InvalidReference for text that is neither a valid
    name nor a digest or ID prefix.
    """
    algorithm, sep, rest = text.partition(":")
    if sep and _ALGORITHM_PREFIX.match(text):
        return _by_prefix(db, algorithm, rest.lower(), text, explicit=True)
    try:
        local = normalize_name(text)
    except InvalidReference:
        if not _HEX.match(text):
            raise
        local = ""
    if local:
        try:
            return (db.get_image(local),)
        except NotFound:
            if not (_HEX.match(text) and len(text) >= MIN_ID_PREFIX):
                raise
    return _by_prefix(db, "sha256", text, text, explicit=False)


def _by_prefix(
    db: MetadataDB, algorithm: str, prefix: str, shown: str, *, explicit: bool
) -> tuple[ImageRecord, ...]:
    if not _HEX.match(prefix) or (len(prefix) < MIN_ID_PREFIX and explicit):
        raise InvalidArgument(
            f"{shown!r}: a digest or ID prefix is {MIN_ID_PREFIX} to 64 hex digits"
        )
    found = [
        rec
        for rec in db.list_images()
        if rec.target.digest.algorithm == algorithm and rec.target.digest.encoded.startswith(prefix)
    ]
    if not found:
        raise NotFound(f"no image has the name, digest or ID {shown!r}")
    digests = sorted({str(rec.target.digest) for rec in found})
    if len(digests) > 1:
        named = [f"{d[len(algorithm) + 1 :][:12]} ({_names(found, d)})" for d in digests[:_SHOWN]]
        more = f" and {len(digests) - _SHOWN} more" if len(digests) > _SHOWN else ""
        raise InvalidArgument(
            f"{shown!r} is ambiguous: it begins {len(digests)} image IDs: "
            + ", ".join(named)
            + more
            + "; give more digits"
        )
    return tuple(sorted(found, key=lambda r: r.name))


def _names(records: list[ImageRecord], digest: str) -> str:
    return ", ".join(sorted(r.name for r in records if str(r.target.digest) == digest))
