"""A diagnosis's findings: what ``msgraph_diagnose`` reports, line by line. Below the
diagnosis (:mod:`msgraph_mail.diagnose`) and its parts (:mod:`.tracking.diagnose`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["Finding", "Level"]

Level = Literal["ok", "info", "warning", "error"]


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    level: Level
    topic: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)
