"""What became of one plan item: :class:`ItemResult`, a report line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from .plan import PlanItem

__all__ = ["DONE", "ItemResult", "Status"]

Status = Literal["converted", "skipped", "failed"]
#: The statuses that finish an item: a resume does not run it again.
DONE: Final = frozenset({"converted", "skipped"})


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome. ``exit_code`` is the command's exit code for the error (0 when
    done); ``retryable`` says the failure may pass (a registry unreachable, 5xx, 429,
    a worker lost). ``totals`` are the conversion's (layers by action, bytes)."""

    id: str
    source: str
    target: str
    status: Status
    fingerprint: str = ""
    source_digest: str = ""
    destination_digest: str = ""
    seconds: float = 0.0
    exit_code: int = 0
    error: str = ""
    retryable: bool = False
    attempts: int = 1
    totals: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(
        cls, item: PlanItem, error: str, exit_code: int, *, retryable: bool, seconds: float = 0.0
    ) -> ItemResult:
        return cls(
            item.id,
            item.source,
            item.target,
            "failed",
            item.fingerprint,
            seconds=seconds,
            exit_code=exit_code,
            error=error,
            retryable=retryable,
        )

    def again(self, attempts: int) -> ItemResult:
        return replace(self, attempts=attempts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "sourceDigest": self.source_digest,
            "destinationDigest": self.destination_digest,
            "seconds": round(self.seconds, 6),
            "attempts": self.attempts,
        }
        if self.status == "failed":
            out.update(exitCode=self.exit_code, error=self.error, retryable=self.retryable)
        if self.totals:
            out["totals"] = dict(self.totals)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ItemResult:
        return cls(
            str(obj["id"]),
            str(obj.get("source", "")),
            str(obj.get("target", "")),
            obj["status"],
            str(obj.get("fingerprint", "")),
            str(obj.get("sourceDigest", "")),
            str(obj.get("destinationDigest", "")),
            float(obj.get("seconds", 0.0)),
            int(obj.get("exitCode", 0)),
            str(obj.get("error", "")),
            bool(obj.get("retryable", False)),
            int(obj.get("attempts", 1)),
            dict(obj.get("totals") or {}),
        )
