"""Capability gaps (seed `recordMissingCapability`): one row per (type, normalized name).

Counting is exact under concurrent writers: the row is created with insert-or-ignore and counted with
a single `frequency = frequency + 1` UPDATE, both inside the caller's write transaction. Each report is
keyed by the caller's id, so a replayed report is not counted twice (invariant 3).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from coord.db.backend import Backend
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


GAPS = CapabilityGap.__table__
REPORTS = GapReport.__table__
_BUILT: dict[str, dict[str, Any]] = {}


def _statements(backend: Backend) -> dict[str, Any]:
    """The recording statements, built once per engine: a report is written a lot (every agent that lacks
    something says so), and building a statement costs more than running it."""
    built = _BUILT.get(backend.dialect)
    if built is None:
        key = (GAPS.c.capability_type == bindparam("capability_type"), GAPS.c.name == bindparam("name"))
        # The report names its gap by the gap's key, so the gap's id is not read in a statement of its own.
        report = select(
            bindparam("report_id", type_=GAPS.c.id.type), GAPS.c.id, bindparam("agent_id", type_=GAPS.c.id.type),
            bindparam("context", type_=REPORTS.c.context.type), bindparam("at", type_=REPORTS.c.at.type),
        ).where(*key)
        built = _BUILT[backend.dialect] = {
            "seen": select(REPORTS.c.gap_id).where(REPORTS.c.id == bindparam("report_id")),
            "create": backend.insert(GAPS).on_conflict_do_nothing(),
            "report": backend.insert(REPORTS)
            .from_select(["id", "gap_id", "agent_id", "context", "at"], report)
            .on_conflict_do_nothing()
            .returning(REPORTS.c.gap_id),
            "count": update(GAPS)
            .where(GAPS.c.id == bindparam("gap_id"))
            .values(frequency=GAPS.c.frequency + 1, last_requested=bindparam("now"),
                    last_requested_by=bindparam("agent_id"))
            .returning(GAPS.c.frequency),
        }
    return built


def record_gap(
    session: Session | Connection,
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
    """Returns the result and the outbox ids to ring (a 'propose' job for a new gap). Core statements
    only, so it runs in an ORM session or on a bare connection; three or four of them."""
    check_id(report_id, "report id")
    check_type(capability_type)
    key = normalize_gap_name(name)
    sql = _statements(backend)
    seen = session.execute(sql["seen"], {"report_id": report_id}).scalar()
    if seen is not None:
        return _replayed(session, seen, report_id, capability_type, key), []

    gap_id = new_id()
    created = session.execute(sql["create"], dict(
        id=gap_id, capability_type=capability_type, name=key, display_name=name.strip(),
        requested_by=agent_id, last_requested_by=agent_id, context=context or {}, frequency=1,
        first_requested=now, last_requested=now, resolution_status="pending",
    ), execution_options={"preserve_rowcount": True}).rowcount > 0  # see insert_ignore
    # The report row before the count: a concurrent replay of this report id (a retry while the first call is
    # in flight) waits here for the other transaction, inserts nothing and is answered as a replay, instead
    # of counting twice or failing on the primary key (PostgreSQL; SQLite serialises writers anyway).
    reported = session.execute(sql["report"], dict(
        report_id=report_id, agent_id=agent_id, context=context or {}, at=now, capability_type=capability_type,
        name=key,
    )).scalar()
    if reported is None:
        other = session.execute(sql["seen"], {"report_id": report_id}).scalar()
        return _replayed(session, other, report_id, capability_type, key), []
    gap_id = reported
    outbox: list[str] = []
    if created:
        frequency = 1
        outbox.append(add_job(session, backend, JOB_PROPOSE, gap_id, now=now, max_attempts=max_attempts))
    else:
        frequency = session.execute(sql["count"], dict(gap_id=gap_id, now=now, agent_id=agent_id)).scalar_one()
    status = "recorded" if created else "counted"
    return GapResult(status, gap_id, capability_type, key, frequency, created), outbox


def _replayed(
    session: Session | Connection, gap_id: str, report_id: str, capability_type: str, key: str
) -> GapResult:
    gap = session.execute(select(GAPS).where(GAPS.c.id == gap_id)).one()
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
