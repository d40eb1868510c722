"""The verdicts of one message: the values checks return and policy reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sesmail_gateway.checks.dkim import ArcResult, DkimResult
from sesmail_gateway.checks.dmarc import DmarcResult
from sesmail_gateway.checks.spf import SpfResult

__all__ = ["Verdicts"]


@dataclass(frozen=True)
class Verdicts:
    """SPF, every DKIM signature (top first), ARC and DMARC. ``dmarc`` is None
    when it was not evaluated (e.g. at MAIL FROM, before the message exists)."""

    spf: SpfResult
    dkim: tuple[DkimResult, ...] = ()
    arc: ArcResult = field(default_factory=lambda: ArcResult("none"))
    dmarc: DmarcResult | None = None
    checked_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (for the spool metadata and the log line).

        Every result is a flat dataclass of strings, numbers and a tuple of
        strings, so a copy of its fields is enough (``dataclasses.asdict``
        deep-copies each value: a tenth of an SMTP worker's time per message).
        """
        dmarc = dict(vars(self.dmarc)) if self.dmarc else None
        if dmarc is not None:
            dmarc["aligned"] = list(dmarc["aligned"])
        return {
            "spf": dict(vars(self.spf)),
            "dkim": [dict(vars(result)) for result in self.dkim],
            "arc": dict(vars(self.arc)),
            "dmarc": dmarc,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdicts:
        """The inverse of :meth:`to_dict` (for ``queue show`` / ``queue release``)."""
        dmarc = data.get("dmarc")
        return cls(
            spf=SpfResult(**data["spf"]),
            dkim=tuple(DkimResult(**item) for item in data.get("dkim", ())),
            arc=ArcResult(**data.get("arc", {"result": "none"})),
            dmarc=DmarcResult(**{**dmarc, "aligned": tuple(dmarc["aligned"])}) if dmarc else None,
            checked_at=float(data.get("checked_at", 0.0)),
        )

    def results_by_method(self) -> dict[str, str]:
        """One result per method, for metrics labels (``dkim`` is the best one)."""
        order = ("pass", "fail", "neutral", "permerror", "temperror", "none")
        dkim = min((r.result for r in self.dkim), key=order.index, default="none")
        return {"spf": self.spf.result, "dkim": dkim, "arc": self.arc.result,
                "dmarc": self.dmarc.result if self.dmarc else "none"}
