"""The metadata database's tables, their migrations, and how values are stored in them.

The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` takes a database
from any older version to :data:`SCHEMA_VERSION` when :mod:`.connection` opens it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import FailedPrecondition, InvalidArgument

# Schema migrations: MIGRATIONS[v] takes user_version v to v + 1. Append, never edit.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE images (
            name TEXT PRIMARY KEY,
            target TEXT NOT NULL,          -- descriptor JSON
            labels TEXT NOT NULL,          -- JSON object of strings
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # One row per label so merges touch only the changed keys and GC can scan the
        # whole graph's edges in one query.
        """CREATE TABLE content_labels (
            digest TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (digest, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE leases (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            expires_at REAL,               -- NULL: never expires
            labels TEXT NOT NULL
        )""",
        """CREATE TABLE lease_resources (
            lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (lease_id, kind, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE snapshots (
            snapshotter TEXT NOT NULL,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            parent TEXT NOT NULL,          -- '' for none
            backend_id TEXT NOT NULL,
            labels TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (snapshotter, key)
        )""",
    ),
)

#: The version this code writes; ``PRAGMA user_version`` of an up-to-date database.
SCHEMA_VERSION: Final = len(MIGRATIONS)


def dump_labels(labels: Mapping[str, str]) -> str:
    """A labels column: a JSON object, keys sorted so equal labels store equal text."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def load_labels(text: str) -> dict[str, str]:
    """A labels column read back; FailedPrecondition if it is not a JSON object."""
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise FailedPrecondition("metadata database: labels column is not a JSON object")
    return {str(k): str(v) for k, v in obj.items()}


def digest_key(digest: Digest | str) -> str:
    """A digest as the tables spell it (parsed, so a malformed one never gets in)."""
    if isinstance(digest, Digest):
        return str(digest)
    return str(Digest.parse(digest))


def check_snapshotter(name: str) -> None:
    """InvalidArgument unless ``name`` can be a snapshotter's name in the tables."""
    # Lease keys and GC nodes are "<snapshotter>/<key>": the name must not contain '/'.
    if not name or "/" in name:
        raise InvalidArgument(f"invalid snapshotter name {name!r}")
