"""Copy one coordination database into another (`coord migrate-data`): SQLite into PostgreSQL when a
team outgrows the embedded default. Any engine pair coord supports works the same way.

- The target gets its schema from the migrations (upgrade to head), never from `create_all`; the source
  must already be at the same head (every coord process upgrades its database on start).
- One read transaction on the source (a consistent snapshot: in WAL mode writers may go on, what they
  write after the snapshot is not copied) and one write transaction on the target, with the target's tables
  locked against other writers. The copy lands whole or not at all: a failed run leaves the target as it
  was, and a rerun with `force` replaces a previous copy with the same content (idempotent).
- Tables go in foreign-key order, `batch_size` rows per INSERT, in primary-key order.
- The agent search index is engine-specific (FTS5 / tsvector): it is rebuilt through the target's backend
  from the agents and their tags, as registering them would, instead of being copied.
- Before commit every table is counted on both sides; any difference aborts the copy.

Pending outbox rows travel with the rest: the workers started on the target ring them (the reconciler),
so the jobs the old daemon had not run yet are not lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlalchemy import JSON, Column, MetaData, Table, delete, func, insert, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from coord.db.engine import Database, hide_password
from coord.db.migrate import current_revision, head_revision, upgrade
from coord.db.models import Agent, AgentExpertise, Base
from coord.errors import Conflict, InvalidInput

DEFAULT_BATCH = 1000
INDEX_BATCH = 500


class Progress(Protocol):
    """Where the copy reports how far it got (the CLI draws a bar; tests pass nothing)."""

    def start(self, total_rows: int) -> None: ...

    def table(self, name: str, rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


class _Quiet:
    def start(self, total_rows: int) -> None:
        pass

    def table(self, name: str, rows: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


@dataclass
class TableCount:
    table: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@dataclass
class CopyReport:
    source: str
    target: str
    schema: str
    replaced: bool
    tables: list[TableCount] = field(default_factory=list)
    indexed_agents: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.target for t in self.tables)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tables"] = [{**asdict(t), "ok": t.ok} for t in self.tables]
        out.update(rows=self.rows, ok=self.ok, seconds=round(self.seconds, 2))
        return out


def tables() -> list[Table]:
    """Every coordination table, parents before children."""
    return list(Base.metadata.sorted_tables)


def _count(session: Session, table: Table) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


def _json_null_safe(table: Table) -> Table:
    """`table` for inserting copied rows: JSON columns keep SQL NULL and JSON null apart.

    The models' JSON type writes Python None as JSON `null`; a copied SQL NULL must stay SQL NULL, so the
    insert side uses none_as_null and a JSON `null` is passed as the JSON.NULL sentinel (see `_rows`).
    """
    columns = []
    for col in table.columns:
        kind = col.type
        if isinstance(kind, JSON):
            kind = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
        columns.append(Column(col.name, kind))
    return Table(table.name, MetaData(), *columns)


def _source_select(table: Table) -> Any:
    """All columns in primary-key order, plus an IS NULL flag per JSON column (see `_json_null_safe`)."""
    json_cols = [c for c in table.columns if isinstance(c.type, JSON)]
    flags = [c.is_(None).label(f"__null__{c.name}") for c in json_cols]
    return select(*table.columns, *flags).order_by(*table.primary_key.columns), [c.name for c in json_cols]


def _rows(batch: list[Any], names: list[str], json_cols: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in batch:
        values = {name: row._mapping[name] for name in names}
        for name in json_cols:
            if values[name] is None and not row._mapping[f"__null__{name}"]:
                values[name] = JSON.NULL
        out.append(values)
    return out


def _copy_table(src: Session, dst: Session, table: Table, batch_size: int, progress: Progress) -> None:
    stmt, json_cols = _source_select(table)
    target = insert(_json_null_safe(table))
    names = [c.name for c in table.columns]
    result = src.execute(stmt, execution_options={"yield_per": batch_size})
    for batch in result.partitions(batch_size):
        dst.execute(target, _rows(list(batch), names, json_cols))
        progress.advance(len(batch))


def _rebuild_search_index(db: Database, session: Session) -> int:
    """Index every active agent through the target's backend, as registering it would."""
    db.backend.clear_search_index(session)
    tags: dict[str, list[str]] = {}
    for agent_id, tag in session.execute(
        select(AgentExpertise.agent_id, AgentExpertise.tag).order_by(AgentExpertise.agent_id, AgentExpertise.tag)
    ):
        tags.setdefault(agent_id, []).append(tag)
    agents = session.execute(select(Agent.id, Agent.description).where(Agent.status == "active").order_by(Agent.id))
    docs = [(agent_id, description, tags.get(agent_id, [])) for agent_id, description in agents]
    for i in range(0, len(docs), INDEX_BATCH):
        db.backend.index_agents(session, docs[i : i + INDEX_BATCH], replace=[])
    return len(docs)


@contextmanager
def _snapshot(db: Database) -> Iterator[Session]:
    """One read transaction that sees a single state of the source for the whole copy."""
    with db.read_engine.connect() as conn:
        conn.execution_options(**db.backend.snapshot_options())
        with Session(bind=conn) as session:
            yield session
            session.rollback()


def _check_schema(src: Database) -> str:
    head, have = head_revision(), current_revision(src)
    if have is None:
        raise InvalidInput(f"source {src.safe_url} holds no coord schema: is it a coord database?")
    if have != head:
        raise InvalidInput(
            f"source {src.safe_url} has schema {have}, this coord writes {head}: run any coord command against "
            "the source first (coord upgrades its database on start), then copy"
        )
    return head


def migrate_data(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every coordination table from `source_url` into `target_url`; see the module docstring."""
    if source_url == target_url:
        raise InvalidInput(f"source and target are the same database ({hide_password(source_url)})")
    if batch_size < 1:
        raise InvalidInput("batch size must be at least 1")
    progress = progress or _Quiet()
    started = time.monotonic()
    src, dst = Database(source_url), Database(target_url, pool_size=1, max_overflow=1)
    try:
        src.ping()
        dst.ping()
        schema = _check_schema(src)
        upgrade(dst)
        report = CopyReport(src.safe_url, dst.safe_url, schema, replaced=False)
        all_tables = tables()
        with _snapshot(src) as rs, dst.session() as ws:
            dst.backend.lock_tables(ws, all_tables)
            held = {t.name: n for t in all_tables if (n := _count(ws, t))}
            if held and not force:
                summary = ", ".join(f"{name} {n}" for name, n in list(held.items())[:5])
                raise Conflict(
                    f"target {dst.safe_url} is not empty ({summary}{', ...' if len(held) > 5 else ''}); "
                    "pass --force to replace its contents"
                )
            if held:
                dst.backend.clear_search_index(ws)
                for table in reversed(all_tables):
                    ws.execute(delete(table))
                report.replaced = True
            counts = {t.name: _count(rs, t) for t in all_tables}
            progress.start(sum(counts.values()))
            for table in all_tables:
                progress.table(table.name, counts[table.name])
                if counts[table.name]:
                    _copy_table(rs, ws, table, batch_size, progress)
            dst.backend.reset_sequences(ws, all_tables)
            report.indexed_agents = _rebuild_search_index(dst, ws)
            ws.flush()
            report.tables = [TableCount(t.name, counts[t.name], _count(ws, t)) for t in all_tables]
            if not report.ok:  # raising here rolls the whole copy back
                bad = ", ".join(f"{t.table} {t.source}->{t.target}" for t in report.tables if not t.ok)
                raise Conflict(f"verification failed, nothing was written: row counts differ ({bad})")
        report.seconds = time.monotonic() - started
        return report
    finally:
        src.dispose()
        dst.dispose()


__all__ = ["CopyReport", "Progress", "TableCount", "migrate_data", "tables"]
