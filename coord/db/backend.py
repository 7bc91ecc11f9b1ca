"""What differs between SQLite and PostgreSQL, behind one small interface (one class per engine).

The services never ask which engine they run on: claiming, full-text search and insert-or-ignore
live here, and nowhere else.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, exists, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from coord.db.models import Agent, Task

_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(query: str) -> list[str]:
    """Words of a free-text query, lowercased. Only \\w runs survive, so nothing the user types
    (`%`, `_` as a lone char, quotes, FTS operators) can act as syntax or as a wildcard."""
    return [w for w in (m.group(0).lower().strip("_") for m in _WORD.finditer(query)) if w][:32]


class Backend:
    dialect = "?"

    def insert(self, table: Any) -> Any:
        raise NotImplementedError

    def claim_statement(self, agent_id: str, claimer: str, now: datetime, lease_until: datetime) -> Any:
        """One atomic UPDATE ... RETURNING that moves the best pending task of `agent_id` to claimed, if
        the agent is active. The same statement as coord/db/sqlite_queue.py's, which SQLite runs instead.
        """
        t = Task.__table__.c
        a = Agent.__table__.c
        pick = (
            select(t.id)
            .where(t.to_agent == agent_id, t.status == "pending")
            .order_by(t.priority.desc(), t.created_at, t.id)
            .limit(1)
        )
        pick = self._lock_pick(pick)
        return (
            update(Task.__table__)
            .where(t.id == pick.scalar_subquery(), exists().where(a.id == agent_id, a.status == "active"))
            .values(
                status="claimed",
                claimed_by=claimer,
                claimed_at=now,
                lease_expires_at=lease_until,
                lease_token=t.lease_token + 1,
                attempts=t.attempts + 1,
                updated_at=now,
            )
            .returning(t.id, t.lease_token, t.from_agent, t.task_type, t.priority, t.payload, t.attempts)
        )

    def _lock_pick(self, pick: Any) -> Any:
        return pick

    def index_agent(self, session: Session, agent_id: str, description: str, tags: list[str]) -> None:
        self.index_agents(session, [(agent_id, description, tags)], replace=[agent_id])

    def unindex_agent(self, session: Session, agent_id: str) -> None:
        self.unindex_agents(session, [agent_id])

    def index_agents(self, session: Session, docs: list[tuple[str, str, list[str]]], *, replace: list[str]) -> None:
        """Index (agent_id, description, tags) docs; `replace` names those that may already be indexed."""
        raise NotImplementedError

    def unindex_agents(self, session: Session, agent_ids: list[str]) -> None:
        raise NotImplementedError

    def lock_agent_sync(self, session: Session) -> None:
        """Serialize folder-sync transactions (watcher, `coord agents sync`, agent creation) until commit."""
        raise NotImplementedError

    def insert_plain(self, session: Session, table: Table | Any, rows: list[dict[str, Any]]) -> None:
        """Insert rows of plain values (str, int, bool, None) through the driver's executemany.

        A Core insert spends ~10 us of Python per row on parameter processing; folder sync inserts one row
        per expertise tag, hundreds of thousands on a first sync. No JSON or datetime columns here.
        """
        if not rows:
            return
        columns = list(rows[0])
        mark = "?" if session.get_bind().dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
        session.connection().exec_driver_sql(sql, [tuple(row[c] for c in columns) for row in rows])

    def search(self, session: Session, words: list[str], limit: int) -> list[tuple[str, float]]:
        """(agent_id, score) best first; score > 0 and larger is better (same contract on both engines)."""
        raise NotImplementedError

    def document_counts(self, session: Session, words: list[str]) -> dict[str, int]:
        """How many indexed agents each word matches (as `search` matches it), in one statement."""
        raise NotImplementedError

    # --- the engine itself: `coord status` and bulk copies (`coord migrate-data`) ---------------------------
    def server_info(self, session: Session) -> dict[str, Any]:
        """Version and the capacity figures of the engine that matter when it is shared by many processes."""
        raise NotImplementedError

    def lock_tables(self, session: Session, tables: list[Table]) -> None:
        """Keep every other writer out of `tables` until this transaction ends (readers may go on)."""
        raise NotImplementedError

    def reset_sequences(self, session: Session, tables: list[Table]) -> None:
        """After rows came in with explicit integer keys: the next generated key follows the largest one."""
        raise NotImplementedError

    def clear_search_index(self, session: Session) -> None:
        raise NotImplementedError

    def snapshot_options(self) -> dict[str, Any]:
        """Connection options for a read transaction that sees one consistent state across many queries."""
        return {}


class SqliteBackend(Backend):
    dialect = "sqlite"

    def insert(self, table: Any) -> Any:
        return sqlite.insert(table)

    def index_agents(self, session: Session, docs: list[tuple[str, str, list[str]]], *, replace: list[str]) -> None:
        self.unindex_agents(session, replace)
        if docs:
            session.execute(
                text("INSERT INTO agents_fts(agent_id, name, description, tags) VALUES (:a, :n, :d, :t)"),
                [{"a": a, "n": a.replace("-", " "), "d": d, "t": " ".join(t)} for a, d, t in docs],
            )

    def unindex_agents(self, session: Session, agent_ids: list[str]) -> None:
        # agent_id is an UNINDEXED FTS5 column: each DELETE scans the table, so delete many per statement.
        for i in range(0, len(agent_ids), 500):
            session.execute(text("DELETE FROM agents_fts WHERE agent_id IN :ids").bindparams(
                bindparam("ids", expanding=True)), {"ids": agent_ids[i:i + 500]})

    def lock_agent_sync(self, session: Session) -> None:
        pass  # every write transaction already holds SQLite's write lock from BEGIN IMMEDIATE

    def server_info(self, session: Session) -> dict[str, Any]:
        pragma = {k: session.execute(text(f"PRAGMA {k}")).scalar() for k in ("journal_mode", "page_count", "page_size")}
        return {
            "version": session.execute(text("SELECT sqlite_version()")).scalar(),
            "journal_mode": pragma["journal_mode"],
            "size_bytes": int(pragma["page_count"] or 0) * int(pragma["page_size"] or 0),
        }

    def lock_tables(self, session: Session, tables: list[Table]) -> None:
        pass  # a write transaction holds the whole file's write lock from BEGIN IMMEDIATE

    def reset_sequences(self, session: Session, tables: list[Table]) -> None:
        pass  # an INTEGER PRIMARY KEY without AUTOINCREMENT always continues from the largest key

    def clear_search_index(self, session: Session) -> None:
        session.execute(text("DELETE FROM agents_fts"))

    def search(self, session: Session, words: list[str], limit: int) -> list[tuple[str, float]]:
        if not words:
            return []
        # Every word is a quoted FTS5 string (quotes doubled), OR-ed: no operator can be injected.
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = session.execute(
            text(
                "SELECT agent_id, -bm25(agents_fts, 0.0, 4.0, 1.0, 3.0) AS score FROM agents_fts "
                "WHERE agents_fts MATCH :m ORDER BY score DESC LIMIT :lim"
            ),
            {"m": match, "lim": limit},
        ).all()
        return [(r[0], float(r[1])) for r in rows if r[1] > 0]

    def document_counts(self, session: Session, words: list[str]) -> dict[str, int]:
        words = list(dict.fromkeys(words))
        if not words:
            return {}
        counts = ", ".join(f"(SELECT count(*) FROM agents_fts WHERE agents_fts MATCH :w{i})" for i in range(len(words)))
        row = session.execute(text(f"SELECT {counts}"),
                              {f"w{i}": '"' + w.replace('"', '""') + '"' for i, w in enumerate(words)}).one()
        return {w: int(n) for w, n in zip(words, row, strict=True)}


class PostgresBackend(Backend):
    dialect = "postgresql"

    def insert(self, table: Any) -> Any:
        return postgresql.insert(table)

    def _lock_pick(self, pick: Any) -> Any:
        # Concurrent claimers skip rows another transaction is claiming instead of queueing behind it.
        return pick.with_for_update(skip_locked=True)

    def index_agents(self, session: Session, docs: list[tuple[str, str, list[str]]], *, replace: list[str]) -> None:
        if not docs:
            return
        session.execute(
            text(
                "INSERT INTO agent_search(agent_id, doc) VALUES (:a, "
                "setweight(to_tsvector('english', :n), 'A') || setweight(to_tsvector('english', :t), 'A')"
                " || setweight(to_tsvector('english', :d), 'C')) "
                "ON CONFLICT (agent_id) DO UPDATE SET doc = EXCLUDED.doc"
            ),
            [{"a": a, "n": a.replace("-", " "), "d": d, "t": " ".join(t)} for a, d, t in docs],
        )

    def unindex_agents(self, session: Session, agent_ids: list[str]) -> None:
        if agent_ids:
            session.execute(text("DELETE FROM agent_search WHERE agent_id = ANY(:ids)"), {"ids": list(agent_ids)})

    def lock_agent_sync(self, session: Session) -> None:
        # READ COMMITTED lets two syncers insert the same file row; one transaction-scoped lock orders them.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('coord.agent_sync'))"))

    def insert_plain(self, session: Session, table: Table | Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        # COPY, on the session's own connection (so inside its transaction): ~10x less client CPU per row
        # than executemany.
        columns = list(rows[0])
        cursor = session.connection().connection.driver_connection.cursor()
        try:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(tuple(row[c] for c in columns))
        finally:
            cursor.close()

    def server_info(self, session: Session) -> dict[str, Any]:
        # Connections are the resource several worker hosts share: show them next to the server's limit.
        row = session.execute(
            text(
                "SELECT current_setting('server_version'), current_setting('max_connections')::int, "
                "count(*), count(*) FILTER (WHERE application_name = 'coord') "
                "FROM pg_stat_activity WHERE datname = current_database()"
            )
        ).one()
        return {"version": row[0], "max_connections": row[1], "connections": row[2], "coord_connections": row[3]}

    def lock_tables(self, session: Session, tables: list[Table]) -> None:
        if tables:
            prep = session.get_bind().dialect.identifier_preparer
            session.execute(text(f"LOCK TABLE {', '.join(prep.format_table(t) for t in tables)} IN EXCLUSIVE MODE"))

    def reset_sequences(self, session: Session, tables: list[Table]) -> None:
        for table in tables:
            col = table.autoincrement_column
            if col is None:
                continue
            session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence(:t, :c), COALESCE(MAX({col.name}), 0) + 1, false) "
                    f"FROM {table.name}"
                ),
                {"t": table.name, "c": col.name},
            )

    def clear_search_index(self, session: Session) -> None:
        session.execute(text("DELETE FROM agent_search"))

    def snapshot_options(self) -> dict[str, Any]:
        # READ COMMITTED (the default) takes a new snapshot per statement; a copy needs one for all of them.
        return {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}

    def search(self, session: Session, words: list[str], limit: int) -> list[tuple[str, float]]:
        if not words:
            return []
        # Words are \w runs: safe as tsquery lexemes. OR them, like the SQLite side.
        query = " | ".join(words)
        rows = session.execute(
            text(
                "SELECT agent_id, ts_rank_cd(doc, q) * 10 AS score FROM agent_search, "
                "to_tsquery('english', :q) q WHERE doc @@ q ORDER BY score DESC LIMIT :lim"
            ),
            {"q": query, "lim": limit},
        ).all()
        return [(r[0], float(r[1])) for r in rows if r[1] > 0]

    def document_counts(self, session: Session, words: list[str]) -> dict[str, int]:
        words = list(dict.fromkeys(words))
        if not words:
            return {}
        counts = ", ".join(f"(SELECT count(*) FROM agent_search WHERE doc @@ to_tsquery('english', :w{i}))"
                           for i in range(len(words)))
        row = session.execute(text(f"SELECT {counts}"), {f"w{i}": w for i, w in enumerate(words)}).one()
        return {w: int(n) for w, n in zip(words, row, strict=True)}


def backend_for(dialect: str) -> Backend:
    if dialect == "sqlite":
        return SqliteBackend()
    if dialect == "postgresql":
        return PostgresBackend()
    raise ValueError(f"unsupported database engine {dialect!r}: use sqlite or postgresql")


def insert_ignore(session: Session, backend: Backend, table: Table | Any, values: dict[str, Any]) -> bool:
    """Insert unless a unique key already holds the row; True when this call inserted it."""
    stmt = backend.insert(table).values(**values).on_conflict_do_nothing()
    # preserve_rowcount: SQLAlchemy does not keep an INSERT's rowcount by default, and psycopg then reports
    # -1 (truthy), which made every insert-or-ignore look like an insert on PostgreSQL.
    return session.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount > 0
