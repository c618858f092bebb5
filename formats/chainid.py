"""Chain IDs: the identity of a stack of layers, as the OCI image spec defines it.

``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0|...|Ln) = sha256(ChainID(L0|...|Ln-1) + " " +
DiffID(Ln))`` over the canonical ``alg:hex`` strings. Snapshots of unpacked layers are
keyed by chain ID, so two images sharing a base share its snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence

from .digest import Digest
from .errors import InvalidArgument

__all__ = ["chain_id", "chain_ids"]


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The chain ID of every prefix of ``diff_ids``: ``[ChainID(L0), ChainID(L0|L1), ...]``.

    The result has one entry per layer; an empty input gives an empty list. The chain is
    always hashed with sha256, whatever the diff IDs' algorithm, as the spec's
    reference implementation does.
    """
    out: list[Digest] = []
    for d in diff_ids:
        if not isinstance(d, Digest):
            raise InvalidArgument(f"diff ID must be a Digest, not {type(d).__name__}")
        out.append(d if not out else Digest.from_bytes(f"{out[-1]} {d}".encode()))
    return out


def chain_id(diff_ids: Sequence[Digest]) -> Digest:
    """The chain ID of the whole stack; InvalidArgument if ``diff_ids`` is empty."""
    ids = chain_ids(diff_ids)
    if not ids:
        raise InvalidArgument("chain ID of no layers is undefined")
    return ids[-1]
