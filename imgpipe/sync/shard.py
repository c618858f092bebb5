"""Static shards of a plan: ``--shard K/N`` (K from 0) or ``--shard auto``.

Every shard computes the same plan and keeps the items whose key hashes to it:
``int(sha256(key)) mod N``, the key being the source repository (``by="repo"``, the
default: a repository's tags stay on one shard, so its mounts, token and layer results
stay local) or the item's id (``by="item"``, for a catalogue of one huge repository).
Adding images to the catalogue moves no item to another shard.

``auto`` reads the environment: ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job,
0-based) with ``--shard-count`` or ``IMGPIPE_SHARD_COUNT`` for N, or GitLab's
``CI_NODE_INDEX`` (1-based) and ``CI_NODE_TOTAL``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imgpipe.formats.errors import InvalidArgument

from .plan import PlanItem

__all__ = ["Shard", "parse_shard"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, item: PlanItem, by: str = "repo") -> bool:
        key = item.repo_key if by == "repo" else item.id
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        return h % self.count == self.index

    def select(self, items: Iterable[PlanItem], by: str = "repo") -> list[PlanItem]:
        if by not in ("repo", "item"):
            raise InvalidArgument(f"shard by {by!r}: want repo or item")
        return [i for i in items if self.owns(i, by)]


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{what}={value!r}: want an integer") from None


def parse_shard(text: str, env: Mapping[str, str] | None = None, count: int | None = None) -> Shard:
    """``K/N`` or ``auto`` (see the module docstring). InvalidArgument otherwise."""
    env = os.environ if env is None else env
    if text == "auto":
        if "JOB_COMPLETION_INDEX" in env:
            index = _int(env["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX")
            total = count or _int(env.get("IMGPIPE_SHARD_COUNT", "0"), "IMGPIPE_SHARD_COUNT")
            if not total:
                raise InvalidArgument(
                    "--shard auto with JOB_COMPLETION_INDEX needs --shard-count N "
                    "(or IMGPIPE_SHARD_COUNT): the Job's completions"
                )
        elif "CI_NODE_INDEX" in env and "CI_NODE_TOTAL" in env:
            index = _int(env["CI_NODE_INDEX"], "CI_NODE_INDEX") - 1
            total = _int(env["CI_NODE_TOTAL"], "CI_NODE_TOTAL")
        else:
            raise InvalidArgument(
                "--shard auto: neither JOB_COMPLETION_INDEX nor CI_NODE_INDEX/CI_NODE_TOTAL is set"
            )
    else:
        k, sep, n = text.partition("/")
        if not sep:
            raise InvalidArgument(f"--shard {text!r}: want K/N (K from 0) or auto")
        index, total = _int(k, "shard index"), _int(n, "shard count")
    if total < 1 or not 0 <= index < total:
        raise InvalidArgument(f"shard {index}/{total}: want 0 <= K < N")
    return Shard(index, total)
