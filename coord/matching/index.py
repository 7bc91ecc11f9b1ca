"""Agent vectors in the coordination DB: which agents need one, the `embed` job that makes them, and the
process-level matrix the ranker multiplies with.

The life of a vector:
1. `on_agents_changed` runs inside every registry upsert (API, folder sync, agent creation). It hashes
   what would be embedded (`text_hash`: the agent's text and its instructions); an agent whose stored
   vector has another hash loses it (a stale vector must not rank), and if any agent is left without a
   current vector, one `embed` outbox row is written in the same transaction (invariant 1). An unchanged
   agent keeps its vector: nothing is recomputed.
2. The `embed` job (`run_embed_job`) embeds every active agent that has no vector for the loaded model,
   in batches: reads and model calls outside any transaction, one short write transaction per batch
   that stores a row only if the agent still has the hash that was embedded. A row holds the agent's
   vector, its instructions' vector and their word bag (coord.matching.bodyterms). So sync and
   requests never wait for the model, and one job covers whatever piled up (a first sync of thousands
   of files is one job, whichever upsert enqueued it).
3. The `embed_backfill` periodic job enqueues an `embed` row when active agents lack a vector and none
   is pending: after the extra is installed, after a model change, or if a job failed for good.
4. `VectorCache` keeps the two (agents x dim) matrices and the bags' BM25 index per database and model
   in memory; at most once a second a request checks (row count, latest updated_at) of the model's rows,
   an index-only query, and reads what changed.
A job that runs out of its time budget (a share of the outbox lease) queues its successor, so a first
sync of 10,000 agents is a chain of short jobs, none of them mistaken for a dead one.
Removed agents lose their vectors (`on_agents_removed`); the ranker also filters by status, so a
removed agent never matches even while a cache is a moment old.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, select
from sqlalchemy.orm import Session

from coord.clock import utcnow
from coord.db.models import Agent, AgentEmbedding, AgentExpertise, OutboxJob
from coord.ids import new_id
from coord.logs import get_logger
from coord.matching import bodyterms
from coord.matching import embedder as emb
from coord.outbox import add_job
from coord.states import JOB_EMBED

log = get_logger(__name__)

EMBED_BATCH = 32  # agents per model call and per write transaction (~1-2 s of CPU)
# One job stops after this share of its outbox lease and queues its successor: a first sync of 10,000
# agents is minutes of CPU, and a job still running when its lease ends would be started again.
JOB_LEASE_SHARE = 0.3
IN_CHUNK = 500  # ids per IN (...) list
_RING = "coord.embed_jobs"  # session.info key: embed jobs to ring once the transaction commits


def text_hash(name: str, description: str, tags: Iterable[str], instructions: str = "") -> str:
    """What a stored row is keyed by: the sha256 of the agent's embedded text (tags sorted, as the job
    reads them back, so the order a parser derived them in does not count as a change) and of its
    instructions as stored (their vector and word bag are made from them)."""
    h = hashlib.sha256(emb.agent_text(name, description, sorted(tags)).encode("utf-8"))
    h.update(b"\0")
    h.update((instructions or "").encode("utf-8"))
    return h.hexdigest()


def terms_blob(instructions: str) -> bytes | None:
    """The stored word bag of an agent's instructions (None without any)."""
    return bodyterms.to_bytes(instructions) if instructions else None


def _chunks(items: list[str], n: int = IN_CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# --------------------------------------------------------------------------------------------------
# 1. The registry hook
# --------------------------------------------------------------------------------------------------


def on_agents_changed(session: Session, backend: Any, docs: list[tuple[str, str, list[str]]], *,
                      now: datetime, instructions: dict[str, str] | None = None) -> str | None:
    """Registry hook for agents whose row changed: drop stale vectors, enqueue embedding when needed.

    `docs` are (name, description, tags) as just stored, `instructions` their bodies by name. Returns the
    outbox id of the `embed` job that will embed them (new, or one already waiting), or None when every
    agent still has its vector.
    """
    if not docs:
        return None
    bodies = instructions or {}
    wanted = {name: text_hash(name, description, tags, bodies.get(name, "")) for name, description, tags in docs}
    stored: dict[str, set[str]] = {}
    for chunk in _chunks(list(wanted)):
        for agent_id, digest in session.execute(
                select(AgentEmbedding.agent_id, AgentEmbedding.text_hash).where(AgentEmbedding.agent_id.in_(chunk))):
            stored.setdefault(agent_id, set()).add(digest)
    stale = [a for a, hashes in stored.items() if hashes != {wanted[a]}]
    for chunk in _chunks(stale):
        # One statement per chunk; a vector of the wanted text (made by another model) is kept.
        wanted_hash = case({a: wanted[a] for a in chunk}, value=AgentEmbedding.agent_id, else_="")
        session.execute(delete(AgentEmbedding).where(AgentEmbedding.agent_id.in_(chunk),
                                                     AgentEmbedding.text_hash != wanted_hash))
    if stale:
        VECTORS.expire()
    if all(wanted[a] in stored.get(a, ()) for a in wanted):
        return None
    job_id = enqueue_embed(session, backend, now=now)
    session.info.setdefault(_RING, []).append(job_id)
    return job_id


def embedding_jobs(session: Session) -> list[str]:
    """The `embed` outbox ids this session's upserts wrote or joined: ring them after commit."""
    return list(dict.fromkeys(session.info.pop(_RING, [])))


def on_agents_removed(session: Session, agent_ids: list[str]) -> None:
    """Removed agents keep no vectors: the matrix holds active agents only (re-embedded if restored)."""
    for chunk in _chunks(list(agent_ids)):
        session.execute(delete(AgentEmbedding).where(AgentEmbedding.agent_id.in_(chunk)))
    VECTORS.expire()


def enqueue_embed(session: Session, backend: Any, *, now: datetime) -> str:
    """One `embed` row, unless one that has not started yet is waiting (it will see these agents too).

    The waiting row is read FOR UPDATE: on PostgreSQL a worker taking it at this moment either committed
    its take first (then the row no longer qualifies and a new one is written) or waits for this
    transaction, and then reads the agents written here. SQLite serializes writers anyway.
    """
    waiting = session.scalar(
        select(OutboxJob.id)
        .where(OutboxJob.job == JOB_EMBED, OutboxJob.status == "pending", OutboxJob.attempts == 0)
        .limit(1)
        .with_for_update()
    )
    if waiting is not None:
        return waiting
    # ref_id: every enqueue is its own row (the (job, ref_id) pair is unique, and a finished row must
    # not swallow a later change).
    return add_job(session, backend, JOB_EMBED, new_id(), now=now)


# --------------------------------------------------------------------------------------------------
# 2. The embed job
# --------------------------------------------------------------------------------------------------


def _has_vector(model_id: str) -> Any:
    """EXISTS a readable row of `model_id` for the agent: a blob of the wrong length (damaged, or written
    by a broken build) counts as none, so the embed job replaces it instead of every cache skipping it;
    so does a row from before revision 0005, which has no instruction vector yet (NULL)."""
    return exists().where(AgentEmbedding.agent_id == Agent.id, AgentEmbedding.model_id == model_id,
                          func.length(AgentEmbedding.vector) == 4 * AgentEmbedding.dim,
                          func.length(AgentEmbedding.body_vector).in_([0, 4 * AgentEmbedding.dim]))


def _missing(session: Session, model_id: str, limit: int, after: str | None) -> list[str]:
    """Active agents without a vector for `model_id`, in id order, from just after `after`."""
    has_vector = _has_vector(model_id)
    stmt = select(Agent.id).where(Agent.status == "active", ~has_vector).order_by(Agent.id)
    if after is not None:
        stmt = stmt.where(Agent.id > after)
    return list(session.scalars(stmt.limit(limit)))


def _texts(session: Session, agent_ids: list[str], *, lock: bool = False) -> dict[str, tuple[str, list[str], str]]:
    """(description, tags, instructions) of the active agents among `agent_ids`.

    `lock` (the embed job's write transaction): the rows are locked, and rows an uncommitted registry
    upsert holds are left out. On PostgreSQL that upsert could otherwise commit a new text between this
    read and the job's commit; its own hook, having seen no vector yet, queued a job that would then find
    the agent embedded, and the stale vector or word bag would stay. Left out, the agent is embedded by
    that queued job; locked first, the upsert waits and its hook sees the job's vector. SQLite serializes
    writers, and ignores the clause.
    """
    stmt = select(Agent.id, Agent.description, Agent.instructions).where(Agent.id.in_(agent_ids),
                                                                         Agent.status == "active")
    if lock:
        stmt = stmt.order_by(Agent.id).with_for_update(skip_locked=True)
    out = {a: (d or "", [], i or "") for a, d, i in session.execute(stmt)}
    for agent_id, tag in session.execute(select(AgentExpertise.agent_id, AgentExpertise.tag)
                                         .where(AgentExpertise.agent_id.in_(list(out)))
                                         .order_by(AgentExpertise.agent_id, AgentExpertise.tag)):
        out[agent_id][1].append(tag)
    return out


@dataclass
class EmbedReport:
    embedded: int = 0
    skipped: int = 0  # changed or removed while their vector was computed (a later job takes them)
    more: bool = False  # stopped at its time budget with agents left
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def embed_pending(db: Any, embedder: emb.Embedder, *, batch: int | None = None, budget_s: float | None = None,
                  now: Any = utcnow) -> EmbedReport:
    """Embed every active agent without a vector for `embedder.model_id` (or as many as `budget_s` seconds
    allow: `more` then says agents are left); returns what was done.

    Never holds a transaction while the model runs. Agents are walked in id order and each is tried at
    most once per call, so an agent that keeps changing cannot keep the job busy.
    """
    report = EmbedReport()
    batch = batch or EMBED_BATCH
    t0, c0 = time.perf_counter(), time.process_time()
    after: str | None = None
    upsert = db.backend.insert(AgentEmbedding.__table__)
    upsert = upsert.on_conflict_do_update(
        index_elements=["agent_id", "model_id"],
        set_={c: upsert.excluded[c] for c in ("text_hash", "dim", "vector", "body_vector", "terms", "updated_at")},
    )
    batches = 0
    while True:
        # At least one batch per call, so a successor job always makes progress.
        if batches and budget_s is not None and time.perf_counter() - t0 > budget_s:
            with db.reader() as s:
                report.more = bool(_missing(s, embedder.model_id, 1, after))
            break
        with db.reader() as s:
            ids = _missing(s, embedder.model_id, batch, after)
            texts = _texts(s, ids) if ids else {}
        if not ids:
            break
        batches += 1
        after = ids[-1]
        names = list(texts)
        if not names:
            continue
        hashes = {n: text_hash(n, *texts[n]) for n in names}
        vectors = emb.embed_agents(embedder, [(n, texts[n][0], sorted(texts[n][1])) for n in names])
        meanings = emb.embed_instructions(embedder, [texts[n][2] for n in names])
        bags = {n: terms_blob(texts[n][2]) for n in names}  # made before the write transaction, like the vectors
        with db.session() as s:
            current = _texts(s, names, lock=True)  # re-read, locked: store only what is still true
            rows = []
            stamp = now()
            for name, vec, meaning in zip(names, vectors, meanings, strict=True):
                if name not in current or text_hash(name, *current[name]) != hashes[name]:
                    report.skipped += 1
                    continue
                rows.append({"agent_id": name, "model_id": embedder.model_id, "text_hash": hashes[name],
                             "dim": embedder.dim, "vector": emb.to_bytes(vec), "updated_at": stamp,
                             "body_vector": b"" if meaning is None else emb.to_bytes(meaning),
                             "terms": bags[name]})
            if rows:  # an upsert: two workers embedding the same agent both succeed
                s.execute(upsert, rows)
            report.embedded += len(rows)
        VECTORS.expire()  # committed: this process's next ranking reads the new rows
    report.seconds = time.perf_counter() - t0
    report.cpu_seconds = time.process_time() - c0
    return report


def run_embed_job(db: Any, outbox_id: str, ctx: Any) -> list[str]:
    """The `embed` outbox handler (runs outside a transaction: see coord.outbox.OwnTransactions)."""
    from coord.matching.hybrid import semantic_embedder

    embedder = semantic_embedder(ctx.settings)
    if embedder is None:
        log.info("embed.skipped", reason="lexical matching (setting, or the semantic extra is not installed)")
        return []
    lease = float(getattr(ctx.settings, "outbox_lease_seconds", 60.0))
    report = embed_pending(db, embedder, budget_s=lease * JOB_LEASE_SHARE)
    log.info("embed.done", embedded=report.embedded, skipped=report.skipped, seconds=round(report.seconds, 2),
             cpu_seconds=round(report.cpu_seconds, 2), model_id=embedder.model_id, more=report.more)
    if not report.more:
        return []
    with db.session() as s:  # the rest in a successor job, rung by whoever ran this one
        return [enqueue_embed(s, db.backend, now=utcnow())]


# --------------------------------------------------------------------------------------------------
# 3. Backfill (periodic)
# --------------------------------------------------------------------------------------------------


def backfill(session: Session, backend: Any, settings: Any, now: datetime) -> dict[str, Any]:
    """Periodic: an `embed` row when active agents lack a vector and no embed job is pending.

    Cheap and model-free: the model id comes from the installed packages (`installed_model_id`).
    """
    from coord.matching.hybrid import semantic_wanted

    model_id = installed_model_id_for(settings) if semantic_wanted(settings) else None
    if model_id is None:
        return {"skipped": "lexical matching"}
    has_vector = _has_vector(model_id)
    missing = session.scalar(select(func.count()).select_from(Agent).where(Agent.status == "active", ~has_vector))
    if not missing:
        return {"missing": 0}
    pending = session.scalar(select(OutboxJob.id).where(OutboxJob.job == JOB_EMBED, OutboxJob.status == "pending")
                             .limit(1))
    if pending is not None:
        return {"missing": int(missing), "pending_job": pending}
    return {"missing": int(missing), "ring": [enqueue_embed(session, backend, now=now)]}


def installed_model_id_for(settings: Any) -> str | None:
    return None if settings.matching == "lexical" else emb.installed_model_id()


# --------------------------------------------------------------------------------------------------
# 4. Coverage (status) and the matrix cache
# --------------------------------------------------------------------------------------------------


def coverage(session: Session, model_id: str) -> tuple[int, int]:
    """(active agents with a vector for `model_id`, active agents)."""
    active = session.scalar(select(func.count()).select_from(Agent).where(Agent.status == "active")) or 0
    embedded = session.scalar(
        select(func.count()).select_from(Agent).where(Agent.status == "active", _has_vector(model_id))) or 0
    return int(embedded), int(active)


@dataclass(frozen=True)
class Vectors:
    version: tuple[int, Any]  # (row count, latest updated_at) of the model's rows when loaded
    ids: list[str]
    row_of: dict[str, int]
    matrix: Any  # np.ndarray (n, dim), L2-normalized rows
    meanings: Any  # np.ndarray (n, dim): the instructions' vectors, same row order; a zero row where none
    bodies: bodyterms.BodyIndex  # the rows' instruction word bags, same row order
    checked: float = 0.0  # time.monotonic() of the last version check


# How often a process asks the database whether vectors changed (the check costs ~1-3 ms at 10,000
# agents). Within this window a request uses the matrix it has: a vector another process made a moment
# ago ranks a moment later (the agent ranks lexically meanwhile), and a removed agent is still dropped by
# the status check of every ranking. Changes made by this process are seen at once (`expire`).
CHECK_INTERVAL_S = 1.0


class VectorCache:
    """The model's vectors of one database, kept in memory and refreshed when (count, max(updated_at))
    of the model's rows changes.

    Every change of the rows is a delete or an insert with a fresh `updated_at`, so the pair moves on
    every change: a delete lowers the count, a (re-)insert raises the latest timestamp. The check is one
    query on the (model_id, updated_at) index, made at most every CHECK_INTERVAL_S. New and re-embedded
    rows are read incrementally (those newer than the cached latest); when the counts then disagree
    (a row was deleted) the whole matrix is read again. Shared by the threads of a process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Vectors] = {}

    def get(self, session: Session, model_id: str, dim: int) -> Vectors:
        key = (session.get_bind().engine.url.render_as_string(hide_password=True), model_id)
        cached = self._entries.get(key)
        now = time.monotonic()
        if cached is not None and now - cached.checked < CHECK_INTERVAL_S:
            return cached
        count, latest = session.execute(
            select(func.count(), func.max(AgentEmbedding.updated_at)).where(AgentEmbedding.model_id == model_id)
        ).one()
        version = (int(count or 0), latest)
        fresh = None
        if cached is not None and cached.version == version:
            fresh = replace(cached, checked=now)
        elif cached is not None and cached.version[1] is not None and latest is not None:
            fresh = self._merged(session, cached, model_id, dim, version, now)
        if fresh is None:
            rows = _readable(session.execute(
                _ROWS.where(AgentEmbedding.model_id == model_id, AgentEmbedding.dim == dim)
                .order_by(AgentEmbedding.agent_id)
            ).all(), dim)
            ids = [r[0] for r in rows]
            fresh = Vectors(version, ids, {a: i for i, a in enumerate(ids)},
                            emb.stack_from_bytes([bytes(r[1]) for r in rows], dim), _meanings(rows, dim),
                            bodyterms.BodyIndex.build([bodyterms.from_bytes(r[2]) for r in rows]), now)
        with self._lock:
            self._entries[key] = fresh
        return fresh

    @staticmethod
    def _merged(session: Session, cached: Vectors, model_id: str, dim: int, version: tuple[int, Any],
                now: float) -> Vectors | None:
        """`cached` plus the rows written since it was read, or None when that does not add up."""
        rows = session.execute(
            _ROWS.where(AgentEmbedding.model_id == model_id, AgentEmbedding.dim == dim,
                        AgentEmbedding.updated_at > cached.version[1])
        ).all()
        if any(not _is_readable(r, dim) for r in rows):
            return None  # a damaged blob: the full read leaves it out (and says so)
        ids, row_of = list(cached.ids), dict(cached.row_of)
        replaced, added = [], []
        replaced_bags, added_bags = {}, []
        for row in rows:
            agent_id, terms = row[0], row[2]
            if agent_id in row_of:
                replaced.append((row_of[agent_id], row))
                replaced_bags[row_of[agent_id]] = bodyterms.from_bytes(terms)
            else:
                row_of[agent_id] = len(ids)
                ids.append(agent_id)
                added.append(row)
                added_bags.append(bodyterms.from_bytes(terms))
        if len(ids) != version[0]:
            return None  # rows were deleted too: read everything
        matrix, meanings = cached.matrix, cached.meanings
        if replaced:
            at = [i for i, _ in replaced]
            matrix, meanings = matrix.copy(), meanings.copy()
            matrix[at] = emb.stack_from_bytes([bytes(row[1]) for _, row in replaced], dim)
            meanings[at] = _meanings([row for _, row in replaced], dim)
        if added:
            import numpy as np

            matrix = np.concatenate([matrix, emb.stack_from_bytes([bytes(r[1]) for r in added], dim)])
            meanings = np.concatenate([meanings, _meanings(added, dim)])
        return Vectors(version, ids, row_of, matrix, meanings, cached.bodies.updated(replaced_bags, added_bags), now)

    def expire(self) -> None:
        """Check the database at the next request: this process just changed vectors (tests, inline jobs)."""
        with self._lock:
            self._entries = {k: replace(v, checked=0.0) for k, v in self._entries.items()}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_ROWS = select(AgentEmbedding.agent_id, AgentEmbedding.vector, AgentEmbedding.terms, AgentEmbedding.body_vector)


def _is_readable(row: Any, dim: int) -> bool:
    """The vector holds `dim` floats, and the instruction vector too unless there is none (b"", or NULL
    from before revision 0005: the agent ranks without it until the embed job replaces the row)."""
    return len(row[1]) == 4 * dim and (row[3] is None or len(row[3]) in (0, 4 * dim))


def _readable(rows: list[Any], dim: int) -> list[Any]:
    """The readable rows. A damaged one is left out (its agent ranks by words until the embed job, which
    counts it as missing, replaces it): one bad row must not stop all ranking."""
    good = [r for r in rows if _is_readable(r, dim)]
    if len(good) != len(rows):
        log.warning("matching.vectors_unreadable", dim=dim,
                    agents=[r[0] for r in rows if not _is_readable(r, dim)][:10], count=len(rows) - len(good))
    return good


def _meanings(rows: list[Any], dim: int) -> Any:
    """The rows' instruction vectors as one (n, dim) matrix, a zero row where there is none."""
    import numpy as np

    out = np.zeros((len(rows), dim), dtype=np.float32)
    have = [i for i, row in enumerate(rows) if row[3]]
    if have:
        out[have] = emb.stack_from_bytes([bytes(rows[i][3]) for i in have], dim)
    return out


VECTORS = VectorCache()
