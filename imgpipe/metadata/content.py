"""Content labels: the edges of the garbage-collection graph, one row per blob and key."""

from __future__ import annotations

from collections.abc import Mapping

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument

from .connection import Database
from .labels import validate_labels
from .schema import digest_key


class ContentLabelTable(Database):
    """The ``content_labels`` table's operations."""

    def set_content_labels(self, digest: Digest, labels: Mapping[str, str | None]) -> None:
        """Merge ``labels`` into the blob's labels; a None value deletes that key.

        The blob need not exist yet (a pull may label a parent before fetching it).
        InvalidArgument if a label is empty-keyed or key+value exceeds 4096 bytes; then
        nothing is changed.
        """
        key = digest_key(digest)
        validate_labels({k: v for k, v in labels.items() if v is not None})
        for k in labels:
            if not isinstance(k, str) or not k:
                raise InvalidArgument(f"label key {k!r} must be a non-empty string")
        with self.transaction() as conn:
            for k, v in labels.items():
                if v is None:
                    conn.execute(
                        "DELETE FROM content_labels WHERE digest = ? AND key = ?", (key, k)
                    )
                else:
                    conn.execute(
                        "INSERT INTO content_labels (digest, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (digest, key) DO UPDATE SET value = excluded.value",
                        (key, k, v),
                    )

    def content_labels(self, digest: Digest) -> dict[str, str]:
        """The blob's labels (empty if it has none)."""
        rows = self._read(
            "SELECT key, value FROM content_labels WHERE digest = ? ORDER BY key",
            (digest_key(digest),),
        )
        return dict(rows)

    def labelled_content(self) -> dict[Digest, dict[str, str]]:
        """Every blob that has labels, with its labels (garbage collection's edge list)."""
        out: dict[Digest, dict[str, str]] = {}
        for digest, k, v in self._read(
            "SELECT digest, key, value FROM content_labels ORDER BY digest, key"
        ):
            out.setdefault(Digest.parse(digest), {})[k] = v
        return out

    def delete_content_labels(self, digest: Digest) -> None:
        """Drop every label of the blob. Idempotent."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM content_labels WHERE digest = ?", (digest_key(digest),))
