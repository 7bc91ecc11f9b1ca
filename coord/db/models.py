"""SQLAlchemy 2 models: the coordination database is the source of truth (invariant 1).

Statuses are short strings (portable, readable in SQL); their allowed values live in coord.states.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from coord.clock import utcnow
from coord.db.types import JSONType, UTCDateTime

NAME = String(128)
SHORT = String(32)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Agent(Base):
    """The registry: one row per agent name; files in agent folders are its usual source."""

    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)  # the agent's name, e.g. "backend-expert"
    description: Mapped[str] = mapped_column(Text, default="")
    # The Markdown body of the agent's file: hybrid ranking reads its words (coord.matching.bodyterms).
    instructions: Mapped[str] = mapped_column(Text, default="", server_default="")
    model: Mapped[str | None] = mapped_column(String(64))
    tools: Mapped[list[Any] | None] = mapped_column(JSONType)  # None = inherits every tool
    mcp_servers: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    collaboration: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    origin: Mapped[str] = mapped_column(SHORT, default="api")  # api | file | coord
    source_path: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(SHORT, default="active")  # active | removed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None]


class AgentExpertise(Base):
    """Normalized expertise tags in their own table: exact-tag matching is an indexed equality."""

    __tablename__ = "agent_expertise"
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(NAME, primary_key=True)
    declared: Mapped[bool] = mapped_column(default=False)  # from `expertise:` rather than derived
    __table_args__ = (Index("ix_agent_expertise_tag", "tag"),)


class AgentHistory(Base):
    __tablename__ = "agent_history"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    agent_id: Mapped[str] = mapped_column(NAME, index=True)
    event: Mapped[str] = mapped_column(SHORT)  # registered | updated | removed | restored
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentEmbedding(Base):
    """Semantic vectors keyed by content hash: an unchanged agent is never embedded again."""

    __tablename__ = "agent_embeddings"
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int]
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    terms: Mapped[bytes | None] = mapped_column(LargeBinary)  # the instructions' word bag (coord.matching.bodyterms)
    # The instructions' own vector (coord.matching.embedder.instruction_segments): b"" when they have no
    # sentence to embed; NULL for a row written before revision 0005 (the embed job makes it again).
    body_vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The ranker's cache check, count + max(updated_at) per model, reads this index only (coord.matching.index).
    __table_args__ = (Index("ix_agent_embeddings_model_updated", "model_id", "updated_at"),)


class AgentFileState(Base):
    """What folder sync last saw of one agent file; the registry is the projection of these rows.

    `name`, `content_hash` and `spec` describe the last *good* parse, kept while the file is broken so a
    bad edit never erases the agent (invariant 8). `seen_hash` and the stat fields describe the bytes last
    read: an unchanged stat means the file is skipped without reading it; `mtime_ns` is None when the read
    was too close to the last write to trust the timestamp.
    """

    __tablename__ = "agent_files"
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    folder: Mapped[str] = mapped_column(String(1024))
    name: Mapped[str | None] = mapped_column(NAME)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    seen_hash: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    ctime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    inode: Mapped[int] = mapped_column(BigInteger, default=0)
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_agent_files_name", "name"),)


class SyncError(Base):
    """A bad agent file: recorded, shown, cleared when fixed; never erases a good registry row."""

    __tablename__ = "sync_errors"
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    folder: Mapped[str] = mapped_column(String(1024))
    reason: Mapped[str] = mapped_column(SHORT)
    message: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """A coordination task (seed: agent_coordination_queue), claimed under a lease (invariant 2)."""

    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    from_agent: Mapped[str] = mapped_column(NAME)
    to_agent: Mapped[str] = mapped_column(NAME)
    task_type: Mapped[str] = mapped_column(SHORT, default="delegation")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    payload_hash: Mapped[str] = mapped_column(String(64))  # replay with another payload is a conflict
    priority: Mapped[int] = mapped_column(Integer, default=1)  # 0 low .. 3 critical
    status: Mapped[str] = mapped_column(SHORT, default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(NAME)
    claimed_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    lease_token: Mapped[int] = mapped_column(Integer, default=0)  # fencing: bumped on every claim
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    completed_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        # Partial indexes (migration 0002): they hold only the tasks a claim or the reaper looks for, so they
        # stay small while finished tasks pile up for months, and a state change touches fewer pages. The
        # claim index follows the claim's exact order: one index seek per claim, however long the queue.
        Index(
            "ix_tasks_claim", "to_agent", priority.desc(), "created_at", "id",
            sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_tasks_lease", "lease_expires_at",
            sqlite_where=text("status = 'claimed'"), postgresql_where=text("status = 'claimed'"),
        ),
    )


class InboxMessage(Base):
    """A notification for an agent. Unique per (agent, kind, ref): a re-rung bell never notifies twice."""

    __tablename__ = "inbox"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    agent_id: Mapped[str] = mapped_column(NAME)
    kind: Mapped[str] = mapped_column(String(64))
    ref_id: Mapped[str] = mapped_column(NAME)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("agent_id", "kind", "ref_id", name="uq_inbox_once"),
        Index("ix_inbox_agent", "agent_id", "read_at", "created_at"),
        # SQLite: rows live in the primary-key b-tree (a ULID, so appends), not in a rowid table plus a key
        # index: one b-tree fewer to write per notification, on every completed task (migration 0002).
        {"sqlite_with_rowid": False},
    )


class CollaborationRequest(Base):
    __tablename__ = "collaboration_requests"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    requester: Mapped[str] = mapped_column(NAME, index=True)
    required_expertise: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(SHORT, default="open")  # open | assigned | closed | unanswered
    candidates: Mapped[list[Any]] = mapped_column(JSONType, default=list)  # [{agent_id, score, why}]
    assigned: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    deadline: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]


class CollaborationResponse(Base):
    __tablename__ = "collaboration_responses"
    request_id: Mapped[str] = mapped_column(ForeignKey("collaboration_requests.id"), primary_key=True)
    agent_id: Mapped[str] = mapped_column(NAME, primary_key=True)
    response: Mapped[str] = mapped_column(SHORT)  # accepted | declined
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class CapabilityGap(Base):
    """Seed: missing_capabilities. One row per (type, normalized name); frequency counts reports."""

    __tablename__ = "capability_gaps"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    capability_type: Mapped[str] = mapped_column(SHORT)  # tool | mcp | agent | expertise
    name: Mapped[str] = mapped_column(String(200))  # normalized
    display_name: Mapped[str] = mapped_column(String(200))
    requested_by: Mapped[str] = mapped_column(NAME)  # first reporter
    last_requested_by: Mapped[str] = mapped_column(NAME)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    frequency: Mapped[int] = mapped_column(Integer, default=1)
    first_requested: Mapped[datetime] = mapped_column(default=utcnow)
    last_requested: Mapped[datetime] = mapped_column(default=utcnow)
    resolution_status: Mapped[str] = mapped_column(SHORT, default="pending")
    resolution_details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    __table_args__ = (UniqueConstraint("capability_type", "name", name="uq_gap_type_name"),)


class GapReport(Base):
    """Each report of a gap, keyed by the caller's id: replaying a report does not count it twice."""

    __tablename__ = "gap_reports"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    gap_id: Mapped[str] = mapped_column(ForeignKey("capability_gaps.id"), index=True)
    agent_id: Mapped[str] = mapped_column(NAME)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Proposal(Base):
    """Seed: capability_proposals. `dedupe_key` keeps repeated gaps from piling up copies."""

    __tablename__ = "proposals"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    gap_id: Mapped[str | None] = mapped_column(ForeignKey("capability_gaps.id"), index=True)
    kind: Mapped[str] = mapped_column(SHORT)  # install_tool | install_mcp | create_agent | workaround | ...
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    proposed_by: Mapped[str] = mapped_column(NAME, default="coordination-system")
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    confidence_basis: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(SHORT, default="proposed")
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Approval(Base):
    """pending -> approved | rejected | expired. Expiry never approves (the seed's auto-approve is gone)."""

    __tablename__ = "approvals"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    proposal_id: Mapped[str] = mapped_column(ForeignKey("proposals.id"), unique=True)
    action: Mapped[str] = mapped_column(SHORT)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    requested_by: Mapped[str] = mapped_column(NAME)
    safety_score: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")  # why a person must decide
    status: Mapped[str] = mapped_column(SHORT, default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(NAME)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_approvals_status_expiry", "status", "expires_at"),)


class Install(Base):
    """Seed: installed_tools / mcp_installations. One row per install, its attempts in install_attempts."""

    __tablename__ = "installs"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    proposal_id: Mapped[str | None] = mapped_column(ForeignKey("proposals.id"), index=True)
    approval_id: Mapped[str | None] = mapped_column(NAME)
    kind: Mapped[str] = mapped_column(SHORT)  # tool | mcp | agent
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(SHORT, default="pending")
    prefix: Mapped[str | None] = mapped_column(Text)
    changes: Mapped[list[Any]] = mapped_column(JSONType, default=list)  # config entries / links / files made
    # What the install found out: the allowlist rule, bins, secrets the user must set (coord.installer.service).
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    approved_by: Mapped[str | None] = mapped_column(NAME)
    tools_hash: Mapped[str | None] = mapped_column(String(64))  # MCP tool pinning
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    rolled_back_at: Mapped[datetime | None]


class InstallAttempt(Base):
    """Seed: installation_history. Every run: argv, exit code, duration, output tail, sandbox."""

    __tablename__ = "install_attempts"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    install_id: Mapped[str] = mapped_column(ForeignKey("installs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(64))
    argv: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    exit_code: Mapped[int | None]
    duration: Mapped[float | None] = mapped_column(Float)
    output_tail: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(SHORT)  # running | ok | failed | timed_out | interrupted
    sandbox: Mapped[str] = mapped_column(SHORT, default="none")
    # host:pid of the process that ran it: a `running` attempt whose process is gone was interrupted.
    worker: Mapped[str | None] = mapped_column(NAME)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Every decision and change, append-only (invariant 7)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(NAME)
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(SHORT)
    subject_id: Mapped[str] = mapped_column(NAME)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class OutboxJob(Base):
    """A job to run, written in the same transaction as the change that caused it (invariant 1).

    The Huey message only carries this row's id. A worker takes the row under a short lease
    (`next_attempt_at` pushed forward, `attempts` bumped) before running it, so a crash mid-job is
    counted and the reconciler rings again once the lease has passed.
    """

    __tablename__ = "outbox"
    id: Mapped[str] = mapped_column(NAME, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    ref_id: Mapped[str] = mapped_column(NAME)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(SHORT, default="pending")  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    rung_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("job", "ref_id", name="uq_outbox_job_ref"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # The rows no worker has taken, in the order a batch takes them (migration 0003).
        Index(
            "ix_outbox_fresh", "job", "created_at",
            sqlite_where=text("status = 'pending' AND attempts = 0"),
            postgresql_where=text("status = 'pending' AND attempts = 0"),
        ),
    )


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"
    worker_id: Mapped[str] = mapped_column(NAME, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(SHORT, default="running")
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class PeriodicRun(Base):
    """The last period each periodic job ran in: claiming a period is one conditional UPDATE, so with
    several consumers on one queue each period runs once (whoever moves `period_start` first)."""

    __tablename__ = "periodic_runs"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_start: Mapped[datetime]
    runs: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(NAME)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text)
