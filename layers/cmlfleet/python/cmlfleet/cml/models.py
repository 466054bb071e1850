"""CML's answers as CML Fleet uses them: credentials, system stats and lab summaries.

The parsers read the CML 2.9 shapes (`SystemStats`, `LabResponse` in its OpenAPI) and
raise `ValueError` on anything else; the client turns that into a `CmlError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cmlfleet.events.catalog import LabSummary


@dataclass(frozen=True)
class CmlCredentials:
    """A CML login; the password is kept out of `repr` so it never reaches a log."""

    username: str
    password: str = field(repr=False)


class SystemStats(BaseModel):
    """One controller's load: percentages of its totals, and its nodes from `dominfo`."""

    model_config = ConfigDict(frozen=True)

    cpu_percent: float | None = Field(default=None, ge=0, le=100)
    memory_percent: float | None = Field(default=None, ge=0, le=100)
    disk_percent: float | None = Field(default=None, ge=0, le=100)
    running_nodes: int = Field(default=0, ge=0)
    total_nodes: int = Field(default=0, ge=0)
    cpu_count: int | None = Field(default=None, ge=0)
    compute_count: int = Field(default=0, ge=0)


def parse_system_stats(body: Any) -> SystemStats:
    """`GET /system_stats`: `all` holds the totals, each of `computes` its own `dominfo`."""
    if not isinstance(body, Mapping):
        raise ValueError("system_stats is not a JSON object")
    totals = _mapping(body.get("all"))
    cpu = _mapping(totals.get("cpu"))
    computes = [c for c in _mapping(body.get("computes")).values() if isinstance(c, Mapping)]
    domains = [_mapping(_mapping(c.get("stats")).get("dominfo")) for c in computes]
    return SystemStats(
        cpu_percent=_percent(_number(cpu.get("percent"))),
        memory_percent=_used_share(totals.get("memory")),
        disk_percent=_used_share(totals.get("disk")),
        running_nodes=sum(_count(d.get("running_nodes")) for d in domains),
        total_nodes=sum(_count(d.get("total_nodes")) for d in domains),
        cpu_count=_count(cpu["count"]) if "count" in cpu else None,
        compute_count=len(computes),
    )


def parse_lab(body: Any) -> LabSummary:
    """`GET /labs/{id}` (`LabResponse`) as the dashboard's `LabSummary`."""
    if not isinstance(body, Mapping):
        raise ValueError("lab is not a JSON object")
    return LabSummary(
        lab_id=body.get("id"),
        title=body.get("lab_title"),
        state=body.get("state"),
        node_count=body.get("node_count", 0),
        # The owner's name reads better than the user id; older controllers lack it.
        owner=body.get("owner_username") or body.get("owner"),
        description=body.get("lab_description") or None,
        modified_at=_timestamp(body.get("modified")),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int:
    number = _number(value)
    return max(0, int(number)) if number is not None else 0


def _percent(value: float | None) -> float | None:
    # Clamped: a host rounding to 100.2 % is busy, not a malformed answer.
    return None if value is None else round(min(100.0, max(0.0, value)), 2)


def _used_share(section: Any) -> float | None:
    """`used / total` of a `MemoryStats` or `DiskStats` section, in percent."""
    values = _mapping(section)
    used, total = _number(values.get("used")), _number(values.get("total"))
    if used is None or not total or total <= 0:
        return None
    return _percent(100.0 * used / total)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.fromisoformat(value)
    # CML writes offsets; should one ever be missing, the controller's clock is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
