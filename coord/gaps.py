"""Capability gaps (seed `recordMissingCapability`): one row per (type, normalized name).

Counting is exact under concurrent writers: the row is created with insert-or-ignore and counted with
a single `frequency = frequency + 1` UPDATE, both inside the caller's write transaction. Each report is
keyed by the caller's id, so a replayed report is not counted twice (invariant 3).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coord.db.backend import Backend, insert_ignore
from coord.db.models import CapabilityGap, GapReport
from coord.errors import Conflict, InvalidInput, NotFound
from coord.ids import check_id, new_id
from coord.outbox import add_job
from coord.results import GapResult
from coord.states import GAP_TYPES, JOB_PROPOSE

MAX_NAME = 200


def normalize_gap_name(name: str) -> str:
    """`PostgreSQL `, `postgresql` and `Postgresql` are one gap; inner spaces fold to one."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("a capability name is required (e.g. 'postgresql' or 'ruff')")
    folded = re.sub(r"\s+", " ", name.strip().lower())
    if len(folded) > MAX_NAME:
        raise InvalidInput(f"capability name is over {MAX_NAME} characters")
    if any(ord(c) < 32 for c in folded):
        raise InvalidInput("capability name contains control characters")
    return folded


def check_type(capability_type: str) -> str:
    if capability_type not in GAP_TYPES:
        raise InvalidInput(f"capability type {capability_type!r} is not one of {', '.join(GAP_TYPES)}")
    return capability_type


def record_gap(
    session: Session,
    backend: Backend,
    *,
    report_id: str,
    capability_type: str,
    name: str,
    agent_id: str,
    context: dict[str, Any] | None,
    now: datetime,
    max_attempts: int = 5,
) -> tuple[GapResult, list[str]]:
    """Returns the result and the outbox ids to ring (a 'propose' job for a new gap)."""
    check_id(report_id, "report id")
    check_type(capability_type)
    key = normalize_gap_name(name)
    seen = session.get(GapReport, report_id)
    if seen is not None:
        return _replayed(session, seen.gap_id, report_id, capability_type, key), []

    gap_id = new_id()
    created = insert_ignore(
        session, backend, CapabilityGap.__table__,
        dict(
            id=gap_id, capability_type=capability_type, name=key, display_name=name.strip(),
            requested_by=agent_id, last_requested_by=agent_id, context=context or {}, frequency=1,
            first_requested=now, last_requested=now, resolution_status="pending",
        ),
    )
    if not created:
        gap_id = session.scalar(
            select(CapabilityGap.id).where(CapabilityGap.capability_type == capability_type, CapabilityGap.name == key)
        )
    # The report row before the count: a concurrent replay of this report id (a retry while the first call is
    # in flight) waits here for the other transaction, inserts nothing and is answered as a replay, instead
    # of counting twice or failing on the primary key (PostgreSQL; SQLite serialises writers anyway).
    report = dict(id=report_id, gap_id=gap_id, agent_id=agent_id, context=context or {}, at=now)
    if not insert_ignore(session, backend, GapReport.__table__, report):
        other = session.scalar(select(GapReport.gap_id).where(GapReport.id == report_id))
        return _replayed(session, other, report_id, capability_type, key), []
    outbox: list[str] = []
    if created:
        frequency = 1
        outbox.append(add_job(session, backend, JOB_PROPOSE, gap_id, now=now, max_attempts=max_attempts))
    else:
        frequency = session.execute(
            update(CapabilityGap)
            .where(CapabilityGap.id == gap_id)
            .values(frequency=CapabilityGap.frequency + 1, last_requested=now, last_requested_by=agent_id)
            .returning(CapabilityGap.frequency)
        ).scalar_one()
    status = "recorded" if created else "counted"
    return GapResult(status, gap_id, capability_type, key, frequency, created), outbox


def _replayed(session: Session, gap_id: str, report_id: str, capability_type: str, key: str) -> GapResult:
    gap = session.get(CapabilityGap, gap_id)
    if (gap.capability_type, gap.name) != (capability_type, key):
        raise Conflict(
            f"report id {report_id!r} was already used for {gap.capability_type} {gap.name!r}; use a new id"
        )
    return GapResult("replayed", gap.id, gap.capability_type, gap.name, gap.frequency, False)


def list_gaps(session: Session, capability_type: str | None = None, status: str | None = None) -> list[CapabilityGap]:
    stmt = select(CapabilityGap).order_by(CapabilityGap.frequency.desc(), CapabilityGap.last_requested.desc())
    if capability_type:
        stmt = stmt.where(CapabilityGap.capability_type == check_type(capability_type))
    if status:
        stmt = stmt.where(CapabilityGap.resolution_status == status)
    return list(session.scalars(stmt))


def get_gap(session: Session, gap_id: str) -> CapabilityGap:
    gap = session.get(CapabilityGap, gap_id)
    if gap is None:
        raise NotFound(f"capability gap {gap_id!r} does not exist (see `coord gaps ls`)")
    return gap
