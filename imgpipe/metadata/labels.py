"""containerd's label vocabulary for garbage collection, and the helpers that read it.

Labels are the edges of the garbage-collection graph (see :mod:`imgpipe.metadata.gc`). The
keys are containerd's, verbatim, so a store labelled by imgpipe reads the same way as one
labelled by containerd:

``containerd.io/gc.root``
    on content or a snapshot: keep it. The value is not parsed (clients put a time there).
``containerd.io/gc.ref.content[.<name>|/<name>]`` = digest
    on content, a snapshot or an image: a forward reference to a blob.
``containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`` = key
    on content, a snapshot or an image: a forward reference to a snapshot.
``containerd.io/gc.expire`` = RFC 3339 time
    on a lease or an image: after that time it no longer protects anything.
``containerd.io/gc.flat``
    on a lease: hold only the objects listed in the lease, not what their labels name.

A label's key plus value is at most 4096 bytes of UTF-8, containerd's limit
(``pkg/labels/validate.go``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument, InvalidDigest

# Every garbage-collection label of containerd's shares this prefix.
_GC: Final = "containerd.io/gc."

LABEL_GC_ROOT: Final = _GC + "root"
LABEL_GC_REF_CONTENT: Final = _GC + "ref.content"
#: Followed by ``.<snapshotter>`` (see :func:`snapshot_refs`).
LABEL_GC_REF_SNAPSHOT: Final = _GC + "ref.snapshot"
LABEL_GC_EXPIRE: Final = _GC + "expire"
LABEL_GC_FLAT: Final = _GC + "flat"
#: On a layer blob: the diffID (digest of the uncompressed tar).
LABEL_UNCOMPRESSED: Final = "containerd.io/uncompressed"
#: Prefix; containerd writes ``containerd.io/distribution.source.<registry host>`` = repos.
LABEL_DISTRIBUTION_SOURCE: Final = "containerd.io/distribution.source"

#: containerd's bound on ``len(key) + len(value)`` in bytes; larger labels are refused so
#: one object cannot bloat every GC scan.
MAX_LABEL_SIZE: Final = 4096

# Go's time.RFC3339 layout (with optional fraction, as time.Parse accepts it): a date, a
# 'T', a time and a mandatory zone. A time without a zone would be read in some local
# zone, which is why it is refused rather than guessed.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)


def index_child_labels(manifests: Sequence[Descriptor]) -> dict[str, str]:
    """Labels for an index blob naming its manifests: ``gc.ref.content.m.<i>`` = digest."""
    return {f"{LABEL_GC_REF_CONTENT}.m.{i}": str(d.digest) for i, d in enumerate(manifests)}


def manifest_child_labels(config: Descriptor, layers: Sequence[Descriptor]) -> dict[str, str]:
    """Labels for a manifest blob: ``gc.ref.content.config`` and ``gc.ref.content.l.<i>``."""
    out = {f"{LABEL_GC_REF_CONTENT}.config": str(config.digest)}
    for i, layer in enumerate(layers):
        out[f"{LABEL_GC_REF_CONTENT}.l.{i}"] = str(layer.digest)
    return out


def validate_label(key: str, value: str) -> None:
    """Check one label; InvalidArgument if the key is empty or key+value > 4096 bytes."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise InvalidArgument(f"label {key!r}: key and value must be strings")
    if not key:
        raise InvalidArgument("label key must not be empty")
    total = len(key.encode()) + len(value.encode())
    if total > MAX_LABEL_SIZE:
        raise InvalidArgument(
            f"label {key[:64]!r}: key and value are {total} bytes, "
            f"more than the maximum of {MAX_LABEL_SIZE}"
        )


def validate_labels(labels: Mapping[str, str]) -> None:
    """Check every label with :func:`validate_label`; InvalidArgument on the first bad one."""
    for key, value in labels.items():
        validate_label(key, value)


def _is_named_under(key: str, prefix: str) -> bool:
    # containerd allows several references of one kind by suffixing the key with
    # ".<name>" or "/<name>"; any other continuation is another label entirely.
    return key == prefix or (key.startswith(prefix) and key[len(prefix)] in "./")


def content_refs(labels: Mapping[str, str]) -> Iterator[Digest]:
    """The blobs the labels reference (``gc.ref.content*``). Invalid digests are skipped,
    as containerd skips them: a bad label must not stop a collection."""
    for key, value in labels.items():
        if _is_named_under(key, LABEL_GC_REF_CONTENT):
            try:
                yield Digest.parse(value)
            except InvalidDigest:
                continue


def snapshot_refs(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The ``(snapshotter, key)`` pairs named by ``gc.ref.snapshot.<snapshotter>[/<x>]``."""
    prefix = LABEL_GC_REF_SNAPSHOT + "."
    for key, value in labels.items():
        if key.startswith(prefix):
            snapshotter = key[len(prefix) :].split("/", 1)[0]
            if snapshotter and value:
                yield snapshotter, value


def parse_expire(value: str) -> float | None:
    """An RFC 3339 time as a POSIX timestamp, or None if it is not one.

    Callers treat an unparsable ``gc.expire`` as absent (the object does not expire), as
    containerd does: a typo must not make an image collectible.
    """
    if not _RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
