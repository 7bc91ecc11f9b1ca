"""The audit log (invariant 7): one append-only row per decision or change, written in its transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from coord.db.models import AuditEvent


def record(session: Session, actor: str, action: str, subject_type: str, subject_id: str, now: datetime,
           **details: Any) -> None:
    session.add(AuditEvent(at=now, actor=actor[:128], action=action, subject_type=subject_type,
                           subject_id=subject_id, details={k: v for k, v in details.items() if v is not None}))
