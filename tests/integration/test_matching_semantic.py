"""Hybrid matching mechanics on both engines, with a small deterministic embedder standing in for the model:
vectors are made by the `embed` outbox job, keyed by text hash (never recomputed for an unchanged agent),
dropped for removed agents, cached per process; a missing extra falls back to lexical ranking.

The model's quality (a need that shares no word with the agent) is in test_matching_semantic_model.py.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import make_settings
from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect

from coord import status, sync
from coord.client import Coordinator
from coord.db.models import AgentEmbedding, OutboxJob
from coord.errors import SettingsError
from coord.jobs import HANDLERS, JobContext
from coord.matching import embedder as emb
from coord.matching import fusion, hybrid, index
from coord.matching.fusion import STOPWORDS
from coord.outbox import run_job
from coord.periodic import JOBS
from coord.settings import load_settings
from coord.states import JOB_EMBED

np = pytest.importorskip("numpy", reason="the fake model needs numpy (it comes with the 'semantic' extra)")
DIM = 64
# Words the fake model treats as one meaning, so "meaning without shared words" is testable without the model.
SYNONYMS = {"blind": "accessible", "screen": "accessible", "wcag": "accessible", "spam": "deliverability",
            "inbox": "deliverability", "dkim": "deliverability"}


class FakeEmbedder:
    """Bag of content words (synonyms folded) hashed into DIM buckets, L2-normalized; records every text."""

    model_id = "fake-bag-of-words"
    dim = DIM

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in STOPWORDS:
                    continue
                word = SYNONYMS.get(word, word)
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEmbedder:
    model = FakeEmbedder()
    monkeypatch.setattr(emb, "load_embedder", lambda: model)
    monkeypatch.setattr(emb, "installed_model_id", lambda: model.model_id)
    return model


@pytest.fixture
def c(coordinator: Coordinator, fake: FakeEmbedder) -> Coordinator:
    coordinator.register_agent("requester", "Asks others for help", expertise=["asking"])
    coordinator.register_agent("a11y-auditor", "Checks screen readers, WCAG and contrast", expertise=["wcag"])
    coordinator.register_agent("mail-doctor", "Fixes DKIM records and inbox placement", expertise=["dkim"])
    coordinator.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])
    return coordinator


def ids(candidates) -> list[str]:
    return [x.agent_id for x in candidates]


def vectors(c: Coordinator) -> dict[str, str]:
    with c.db.reader() as s:
        return dict(s.execute(select(AgentEmbedding.agent_id, AgentEmbedding.text_hash)).all())


def segments(c: Coordinator, name: str) -> list[str]:
    agent = c.get_agent(name)
    return emb.agent_segments(name, agent.description, sorted(agent.expertise))


def pending_embed_jobs(c: Coordinator) -> list[str]:
    with c.db.reader() as s:
        return list(s.scalars(select(OutboxJob.id).where(OutboxJob.job == JOB_EMBED, OutboxJob.status == "pending")))


def run_embed_jobs(c: Coordinator) -> int:
    jobs = pending_embed_jobs(c)
    for job_id in jobs:
        outcome, _ = run_job(c.db, job_id, HANDLERS, JobContext(c.settings, c.db))
        assert outcome.status == "done", outcome
    return len(jobs)


def test_registration_embeds_through_the_outbox_and_ranking_uses_meaning(c: Coordinator, fake: FakeEmbedder):
    assert set(vectors(c)) == {"requester", "a11y-auditor", "mail-doctor", "k8s-operator"}
    assert pending_embed_jobs(c) == []  # the inline bell ran them after each commit
    need = "make our site usable for blind people"
    assert c.find_experts(need)[0].agent_id == "a11y-auditor"
    lexical = hybrid.rank_agents
    with c.db.reader() as s:
        assert "a11y-auditor" not in ids(lexical(s, c.db.backend, need, matching="lexical"))
    top = c.request_collaboration("requester", "our emails keep landing in spam").candidates[0]
    assert top.agent_id == "mail-doctor" and any(w.startswith("semantic:") for w in top.why)


def test_unchanged_agents_are_never_embedded_again(c: Coordinator, fake: FakeEmbedder):
    before, texts = vectors(c), len(fake.texts)
    c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])  # same text
    c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"],
                     tools=["Bash"])  # the row changes, the embedded text does not
    assert pending_embed_jobs(c) == [] and len(fake.texts) == texts and vectors(c) == before
    c.register_agent("k8s-operator", "Deploys services to clusters and tunes autoscaling", expertise=["kubernetes"])
    after = vectors(c)
    assert after["k8s-operator"] != before["k8s-operator"]
    assert {a: h for a, h in after.items() if a != "k8s-operator"} == {
        a: h for a, h in before.items() if a != "k8s-operator"}
    assert fake.texts[texts:] == segments(c, "k8s-operator")  # that agent's text, and nothing else


def test_folder_sync_embeds_once_and_only_changed_files(tmp_path: Path, db_url: str, fake: FakeEmbedder):
    folder = tmp_path / "agents"
    folder.mkdir()
    for i in range(12):
        (folder / f"agent-{i}.md").write_text(
            f"---\nname: agent-{i}\ndescription: Handles topic {i} and its chores.\n---\nBody {i}\n")
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(folder)], log_level="warning")
    c = Coordinator(settings)
    try:
        sync.reconcile(settings, c.db)
        assert len(pending_embed_jobs(c)) == 1  # one job for the whole sync, whatever its batches
        assert run_embed_jobs(c) == 1 and len(vectors(c)) == 12
        calls = len(fake.texts)
        sync.reconcile(settings, c.db)  # nothing changed on disk
        (folder / "agent-3.md").write_text(  # bytes change, nothing that is embedded does
            "---\nname: agent-3\ndescription: Handles topic 3 and its chores.\ntools: Read\n---\nBody 3\n")
        sync.reconcile(settings, c.db)
        assert pending_embed_jobs(c) == [] and len(fake.texts) == calls
        (folder / "agent-5.md").write_text("---\nname: agent-5\ndescription: Now does billing.\n---\nBody\n")
        sync.reconcile(settings, c.db)
        assert run_embed_jobs(c) == 1
        assert fake.texts[calls:] == segments(c, "agent-5")
        (folder / "agent-7.md").unlink()
        sync.reconcile(settings, c.db)
        assert "agent-7" not in vectors(c) and pending_embed_jobs(c) == []
    finally:
        c.close()


def test_a_removed_agent_never_matches(c: Coordinator, fake: FakeEmbedder):
    need = "screen readers for blind visitors"
    assert c.find_experts(need)[0].agent_id == "a11y-auditor"  # the matrix is now cached in this process
    assert c.remove_agent("a11y-auditor")
    assert "a11y-auditor" not in vectors(c)
    assert "a11y-auditor" not in ids(c.find_experts(need))
    assert "a11y-auditor" not in ids(c.request_collaboration("requester", need).candidates)
    fallback = c.delegate("requester", "wcag-wizard", {"title": need}).fallback
    assert "a11y-auditor" not in ids(fallback)
    # Even a vector left behind (a cache a moment old, a row written by a late job) cannot bring it back.
    with c.db.session() as s:
        s.add(AgentEmbedding(agent_id="a11y-auditor", model_id=fake.model_id, text_hash="x", dim=DIM,
                             vector=emb.to_bytes(fake.embed([need])[0])))
    assert "a11y-auditor" not in ids(c.find_experts(need))
    c.register_agent("a11y-auditor", "Checks screen readers, WCAG and contrast", expertise=["wcag"])
    assert c.find_experts(need)[0].agent_id == "a11y-auditor"


def test_agents_without_a_vector_yet_rank_lexically(c: Coordinator, fake: FakeEmbedder, monkeypatch):
    monkeypatch.setattr(c, "_ring", lambda ids: None)  # the worker has not run the embed job yet
    c.register_agent("helm-smith", "Writes Helm charts for kubernetes", expertise=["helm"])
    assert "helm-smith" not in vectors(c)
    assert "helm-smith" in ids(c.find_experts("helm charts"))
    run_embed_jobs(c)
    assert "helm-smith" in vectors(c)
    assert c.find_experts("helm charts")[0].agent_id == "helm-smith"


def test_needs_without_content_words_behave(c: Coordinator, fake: FakeEmbedder):
    before = len(fake.texts)
    for need in ["%", "the", "' OR '1'='1", "?!", "42"]:
        assert c.find_experts(need) == [], need
    # Only stopwords: not embedded, and the full-text search keeps them rather than searching for nothing.
    assert ids(c.find_experts("who can help")) == ["requester"]
    assert len(fake.texts) == before  # none of these needs was embedded


def test_the_cache_reloads_when_vectors_change(c: Coordinator, fake: FakeEmbedder):
    index.VECTORS.clear()
    with c.db.reader() as s:
        first = index.VECTORS.get(s, fake.model_id, DIM)
        assert index.VECTORS.get(s, fake.model_id, DIM) is first  # unchanged: no reload
    c.register_agent("dns-keeper", "Keeps DKIM and SPF records right", expertise=["dns"])
    with c.db.reader() as s:
        second = index.VECTORS.get(s, fake.model_id, DIM)
    assert second is not first and "dns-keeper" in second.ids
    c.remove_agent("dns-keeper")
    with c.db.reader() as s:
        third = index.VECTORS.get(s, fake.model_id, DIM)
    assert "dns-keeper" not in third.ids and len(third.ids) == third.matrix.shape[0] == 4


def test_the_cache_sees_other_processes_within_its_check_interval(c: Coordinator, fake: FakeEmbedder, monkeypatch):
    monkeypatch.setattr(index, "CHECK_INTERVAL_S", 3600.0)
    with c.db.reader() as s:
        before = index.VECTORS.get(s, fake.model_id, DIM)
    new_vec = fake.embed(["kubernetes operators everywhere"])[0]
    with c.db.session() as s:  # another process re-embeds one agent: no expire() in this one
        s.execute(AgentEmbedding.__table__.update().where(AgentEmbedding.agent_id == "k8s-operator")
                  .values(vector=emb.to_bytes(new_vec), updated_at=c.now()))
    with c.db.reader() as s:
        assert index.VECTORS.get(s, fake.model_id, DIM) is before  # inside the interval: no query
    monkeypatch.setattr(index, "CHECK_INTERVAL_S", 0.0)
    with c.db.reader() as s:
        after = index.VECTORS.get(s, fake.model_id, DIM)
    assert after.ids == before.ids  # read incrementally: the one changed row replaced in place
    assert np.allclose(after.matrix[after.row_of["k8s-operator"]], new_vec)
    others = [i for a, i in before.row_of.items() if a != "k8s-operator"]
    assert np.array_equal(after.matrix[others], before.matrix[others])


def test_backfill_enqueues_once_for_agents_without_vectors(c: Coordinator, fake: FakeEmbedder):
    with c.db.session() as s:
        s.execute(AgentEmbedding.__table__.delete())  # e.g. the extra was installed after the agents came
    job = JOBS["embed_backfill"]
    with c.db.session() as s:
        first = job.run(s, c.db.backend, c.settings, c.now())
    assert first["missing"] == 4 and len(first["ring"]) == 1
    with c.db.session() as s:
        again = job.run(s, c.db.backend, c.settings, c.now())
    assert "ring" not in again and again["pending_job"] == first["ring"][0]
    c.bell.ring(first["ring"])
    assert len(vectors(c)) == 4
    with c.db.session() as s:
        assert job.run(s, c.db.backend, c.settings, c.now()) == {"missing": 0}


@pytest.mark.parametrize("column", ["vector", "body_vector"])
def test_a_damaged_vector_is_skipped_by_ranking_and_made_again(c: Coordinator, fake: FakeEmbedder, column: str):
    need = "screen readers for blind visitors"
    assert c.find_experts(need)[0].agent_id == "a11y-auditor"
    with c.db.session() as s:  # a torn write, a restore from a broken dump: 5 bytes where 256 belong
        s.execute(AgentEmbedding.__table__.update().where(AgentEmbedding.agent_id == "mail-doctor")
                  .values({column: b"\x00" * 5, "updated_at": c.now()}))
    index.VECTORS.clear()
    # Ranking goes on: the damaged agent by its words only, the others by meaning too.
    assert c.find_experts(need)[0].agent_id == "a11y-auditor"
    assert ids(c.find_experts("DKIM records"))[0] == "mail-doctor"
    assert "semantic" not in " ".join(c.find_experts("DKIM records")[0].why)
    assert status.collect(c.settings, c.db)["matching"].endswith("3/4 agents embedded)")
    with c.db.session() as s:  # the backfill counts it as missing and the embed job replaces it
        found = JOBS["embed_backfill"].run(s, c.db.backend, c.settings, c.now())
    assert found["missing"] == 1
    c.bell.ring(found["ring"])
    assert len(vectors(c)) == 4
    assert "semantic" in " ".join(c.find_experts("DKIM records")[0].why)
    assert c.find_experts("mail landing in spam")[0].agent_id == "mail-doctor"  # by meaning again


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("change", ["description", "instructions"])
def test_an_edit_committing_while_the_embed_job_writes_is_not_lost(db_url: str, c: Coordinator,
                                                                   fake: FakeEmbedder, change: str):
    """PostgreSQL: a registry upsert holds the agent's row while the embed job stores that agent's vector.
    The job must not store the text it read before that edit (the edit's own embed job would find the
    agent embedded and leave the stale vector or word bag for good)."""
    import dataclasses
    import threading

    from coord.registry import AgentSpec, upsert_agent

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(c, "_ring", lambda ids: None)  # jobs run here, by hand
    try:
        c.register_agent("stream-keeper", "Runs the event pipelines", expertise=["pipelines"],
                         instructions="You operate message queues.")
        edit = {"description": "Runs the event pipelines and Kafka brokers", "instructions": "You rebalance Kafka."}
        spec = AgentSpec(name="stream-keeper", description="Runs the event pipelines", expertise=["pipelines"],
                         instructions="You operate message queues.")
        spec = dataclasses.replace(spec, **{change: edit[change]})
        reports = []
        with c.db.session() as s:
            upsert_agent(s, c.db.backend, spec, now=c.now())
            s.flush()  # the edit holds the row, not committed yet
            job = threading.Thread(target=lambda: reports.append(index.embed_pending(c.db, fake)))
            job.start()
            job.join(timeout=30)
            assert not job.is_alive(), "the embed job waited for the open edit"
        assert reports[0].skipped == 1 and "stream-keeper" not in vectors(c)
        run_embed_jobs(c)  # the job the edit queued
    finally:
        monkeypatch.undo()
    with c.db.reader() as s:
        text_hash, terms = s.execute(select(AgentEmbedding.text_hash, AgentEmbedding.terms)
                                     .where(AgentEmbedding.agent_id == "stream-keeper")).one()
    assert text_hash == index.text_hash("stream-keeper", spec.description, c.get_agent("stream-keeper").expertise,
                                        spec.instructions)
    assert bytes(terms) == index.terms_blob(spec.instructions)


def test_warm_up_loads_the_model_and_vectors_before_the_first_request(c: Coordinator, fake: FakeEmbedder,
                                                                       monkeypatch, capsys):
    index.VECTORS.clear()
    thread = hybrid.warm_up(c.db, c.settings)
    thread.join(timeout=30)
    with c.db.reader() as s:
        key = (s.get_bind().engine.url.render_as_string(hide_password=True), fake.model_id)
    assert len(index.VECTORS._entries[key].ids) == 4  # the first request finds them loaded
    assert hybrid.warm_up(c.db, c.settings.model_copy(update={"matching": "lexical"})) is None
    # A failure is logged and leaves the process as it was: the first request loads what it needs.
    index.VECTORS.clear()
    with monkeypatch.context() as m:
        m.setattr(index.VECTORS, "get", lambda *a: (_ for _ in ()).throw(OSError("disk I/O error")))
        hybrid.warm_up(c.db, c.settings).join(timeout=30)
    out = capsys.readouterr()
    assert "matching.warm_up_failed" in out.out + out.err and "disk I/O error" in out.out + out.err
    assert c.find_experts("DKIM records")[0].agent_id == "mail-doctor"


def test_status_names_the_mode(c: Coordinator, fake: FakeEmbedder, monkeypatch):
    report = status.collect(c.settings, c.db)
    assert report["matching"] == f"hybrid (model {fake.model_id}, 4/4 agents embedded)"
    lexical = c.settings.model_copy(update={"matching": "lexical"})
    assert status.collect(lexical, c.db)["matching"] == "lexical (setting matching='lexical')"
    monkeypatch.setattr(emb, "installed_model_id", lambda: None)
    assert status.collect(c.settings, c.db)["matching"].startswith("lexical (semantic extra not installed")


def test_without_the_extra_everything_is_lexical(tmp_path: Path, db_url: str, monkeypatch):
    emb.reset_embedder()
    monkeypatch.setattr(emb, "load_embedder", lambda: None)  # what it returns when the extra is missing
    monkeypatch.setattr(emb, "installed_model_id", lambda: None)
    c = Coordinator(make_settings(tmp_path, db_url))
    try:
        c.register_agent("requester", "Asks others for help", expertise=["asking"])
        c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])
        assert run_embed_jobs(c) == 0 and vectors(c) == {}  # the job ran (inline) and stored nothing
        found = c.find_experts("kubernetes clusters")
        assert ids(found) == ["k8s-operator"] and not any(w.startswith("semantic") for w in found[0].why)
        assert c.request_collaboration("requester", "make our site usable for blind people").status == \
            "no_expert_available"
        assert status.collect(c.settings, c.db)["matching"].startswith("lexical (semantic extra not installed")
    finally:
        c.close()
    with pytest.raises(SettingsError, match="hybrid matching needs the 'semantic' extra"):
        load_settings(overrides={"state_dir": str(tmp_path), "matching": "hybrid"}, env={})
    with pytest.raises(SettingsError, match="semantic"):  # and if the model breaks after start
        hybrid.semantic_embedder("hybrid")


def test_lexical_setting_never_loads_the_model(tmp_path: Path, db_url: str, monkeypatch):
    def boom():
        raise AssertionError("matching='lexical' must not load the model")

    monkeypatch.setattr(emb, "load_embedder", boom)
    c = Coordinator(make_settings(tmp_path, db_url, matching="lexical"))
    try:
        c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])
        assert ids(c.find_experts("kubernetes")) == ["k8s-operator"]
        assert c.delegate("k8s-operator", "helm-wizard", {"title": "kubernetes charts"}).status == "agent_not_found"
        with c.db.reader() as s:
            assert s.scalar(select(func.count()).select_from(AgentEmbedding)) == 0
    finally:
        c.close()


def test_a_long_embed_job_hands_the_rest_to_a_successor(c: Coordinator, fake: FakeEmbedder, monkeypatch):
    monkeypatch.setattr(c, "_ring", lambda ids: None)
    for i in range(5):
        c.register_agent(f"bulk-{i}", f"Handles bulk chore number {i}", expertise=["bulk"])
    monkeypatch.setattr(index, "EMBED_BATCH", 2)
    monkeypatch.setattr(index, "JOB_LEASE_SHARE", 0.0)  # the budget is spent after the first batch
    [job] = pending_embed_jobs(c)
    ran = []
    queue = [job]
    while queue:  # what the worker does with a job's follow-ups
        outcome, follow_ups = run_job(c.db, queue.pop(0), HANDLERS, JobContext(c.settings, c.db))
        assert outcome.status == "done"
        ran.append(outcome.outbox_id)
        queue += follow_ups
    assert len(ran) == 3 and all(f"bulk-{i}" in vectors(c) for i in range(5))  # 2 + 2 + 1 agents


def test_a_sentences_common_words_are_not_searched(coordinator: Coordinator, fake: FakeEmbedder, monkeypatch):
    """Words most agents hold cost the full-text search the most and tell nothing apart
    (lexical.informative_words): a sentence is searched by its rarer words, a keyword need by all of them."""
    from coord.matching import lexical

    monkeypatch.setattr(lexical, "_counts", {})
    helpers = lexical.COMMON_MIN_AGENTS + 10
    for i in range(helpers):
        coordinator.register_agent(f"helper-{i}", f"Handles chores for project {i}.")
    coordinator.register_agent("board-maker", "Writes firmware for sensor boards.")
    total = helpers + 1
    backend = coordinator.db.backend
    with coordinator.db.reader() as s:
        assert backend.document_counts(s, ["chores", "firmware", "zebra", "chores"]) == {
            "chores": helpers, "firmware": 1, "zebra": 0}
        assert lexical.informative_words(s, backend, ["chores", "firmware", "sensor"], total) == ["firmware", "sensor"]
        # only common words: all are kept (a need is never emptied); a small registry: nothing is dropped
        assert lexical.informative_words(s, backend, ["chores", "project"], total) == ["chores", "project"]
        small = lexical.COMMON_MIN_AGENTS - 1
        assert lexical.informative_words(s, backend, ["chores", "firmware"], small) == ["chores", "firmware"]

    searched: list[list[str]] = []
    search = type(backend).search
    monkeypatch.setattr(type(backend), "search", lambda self, s, words, limit: searched.append(words) or search(
        self, s, words, limit))
    assert "board-maker" in ids(coordinator.find_experts("our project chores need firmware for the sensor boards"))
    assert searched[-1] == ["firmware", "sensor", "boards"]
    coordinator.find_experts("project chores")  # a keyword need: every word is searched
    assert searched[-1] == ["project", "chores"]


def _write_agent(folder: Path, name: str, description: str, body: str) -> None:
    (folder / f"{name}.md").write_text(f"---\nname: {name}\ndescription: {description}\n---\n{body}\n")


def test_words_of_the_instructions_rank_candidates_and_follow_edits(tmp_path: Path, db_url: str,
                                                                    fake: FakeEmbedder):
    # Two agents alike by their descriptions (the packager's a little less close to the need); only the
    # packager's instructions speak of the need's other words.
    folder = tmp_path / "agents"
    folder.mkdir()
    rich = "You sign code and ship installers with automatic updates for Windows and macOS releases."
    _write_agent(folder, "desktop-builder", "Builds desktop installers for teams.", "You write menus.")
    _write_agent(folder, "desktop-packager", "Builds desktop installers for large teams.", rich)
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(folder)], log_level="warning")
    c = Coordinator(settings)
    need = "ship signed installers with automatic updates"

    def ranked() -> list:
        with c.db.reader() as s:
            return hybrid.rank_agents(s, c.db.backend, need, matching="auto")

    try:
        sync.reconcile(settings, c.db)
        assert run_embed_jobs(c) == 1
        with c.db.reader() as s:
            assert ids(hybrid.rank_semantic(s, need))[0] == "desktop-builder"  # by meaning alone
        first = ranked()[0]
        assert first.agent_id == "desktop-packager" and any(w.startswith("instructions:") for w in first.why)

        # Only the instructions change: both agents are embedded again, and the ranking follows.
        calls = len(fake.texts)
        _write_agent(folder, "desktop-builder", "Builds desktop installers for teams.", rich)
        _write_agent(folder, "desktop-packager", "Builds desktop installers for large teams.", "You write menus.")
        sync.reconcile(settings, c.db)
        assert run_embed_jobs(c) == 1
        assert rich in fake.texts[calls:]  # the builder's new instructions; "You write menus." is too short
        assert ids(ranked())[:2] == ["desktop-builder", "desktop-packager"]
        assert not any(w.startswith("instructions") for w in ranked()[1].why)

        # A removed agent's instructions never bring it back.
        (folder / "desktop-builder.md").unlink()
        sync.reconcile(settings, c.db)
        assert "desktop-builder" not in ids(ranked())
    finally:
        c.close()


def test_a_need_said_only_in_other_words_in_the_instructions_ranks_by_their_vector(coordinator: Coordinator,
                                                                                   fake: FakeEmbedder):
    # Alike by name and description; only one's instructions are about the need, and in other words
    # (the fake model folds dkim / inbox / spam into one meaning), so neither the full-text search nor the
    # instructions' word bag can tell them apart: their vector does.
    for name, body in (("z-mailer", "You fix DKIM records and inbox placement for every sender."), ("a-mailer", "")):
        coordinator.register_agent(name, "Helps teams with their messaging", expertise=["messaging"], instructions=body)
    need = "messages from our teams end up as spam"
    top = coordinator.find_experts(need)[:2]
    assert ids(top) == ["z-mailer", "a-mailer"]
    assert any(w.startswith("instructions-semantic:") for w in top[0].why)
    assert not any(w.startswith("instructions:") for w in top[0].why)  # no word of the need is in its body
    with coordinator.db.reader() as s:
        vectors_now = index.VECTORS.get(s, fake.model_id, DIM)
    assert np.linalg.norm(vectors_now.meanings[vectors_now.row_of["a-mailer"]]) == 0  # no instructions
    with pytest.MonkeyPatch.context() as m:  # the same ranking without that vector: a tie, broken by name
        m.setattr(fusion, "SENTENCE_WEIGHTS", fusion.SENTENCE_WEIGHTS._replace(body_semantic=0.0))
        assert ids(coordinator.find_experts(need)[:2]) == ["a-mailer", "z-mailer"]
    # A keyword need does not use it (weights measured in coord.matching.fusion).
    keyword = coordinator.find_experts("messaging spam")
    assert len(keyword) == 2 and not any(w.startswith("instructions-semantic:") for x in keyword for w in x.why)


def test_upgrade_from_0003_reads_every_file_again_and_embeds_its_instructions(tmp_path: Path, db_url: str,
                                                                               fake: FakeEmbedder):
    from alembic import command

    from coord.db.migrate import alembic_config
    from coord.db.models import Agent

    folder = tmp_path / "agents"
    folder.mkdir()
    for i in range(3):
        _write_agent(folder, f"agent-{i}", f"Handles topic {i}.", f"You know the quarry{i} procedure well.")
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(folder)], log_level="warning")
    c = Coordinator(settings)
    try:
        sync.reconcile(settings, c.db)
        assert run_embed_jobs(c) == 1
        # What a database synced before revision 0004 holds: no instructions, no word bags.
        command.downgrade(alembic_config(c.db), "0003")
        with c.db.engine.begin() as conn:
            assert "instructions" not in {col["name"] for col in sa_inspect(conn).get_columns("agents")}
            assert conn.exec_driver_sql("SELECT count(*) FROM agent_expertise").scalar() > 0  # nothing lost
        command.upgrade(alembic_config(c.db), "head")
        report = sync.reconcile(settings, c.db)
        assert report.events == {"updated": 3} and report.read == 3
        with c.db.reader() as s:
            bodies = dict(s.execute(select(Agent.id, Agent.instructions)).all())
        assert bodies == {f"agent-{i}": f"You know the quarry{i} procedure well.\n" for i in range(3)}
        assert "semantic:" in " ".join(c.find_experts("quarry1 topic")[0].why)  # the old vectors still rank
        calls = len(fake.texts)
        with c.db.session() as s:  # rows from before 0005 hold no instruction vector: embedded again
            found = JOBS["embed_backfill"].run(s, c.db.backend, c.settings, c.now())
        assert found["missing"] == 3
        c.bell.ring(found["ring"])
        assert "You know the quarry1 procedure well." in fake.texts[calls:]
        with c.db.reader() as s:
            rows = s.execute(select(AgentEmbedding.terms, AgentEmbedding.body_vector)).all()
        assert len(rows) == 3 and all(terms and len(vec) == 4 * DIM for terms, vec in rows)
        assert "instructions:" in " ".join(c.find_experts("quarry1 topic")[0].why)
    finally:
        c.close()


def test_agents_registered_through_the_api_or_cli_carry_instructions(c: Coordinator, fake: FakeEmbedder,
                                                                     tmp_path: Path):
    from click.testing import CliRunner

    from coord.cli.main import cli
    from coord.db.models import Agent, AgentHistory

    need = "keep the kafka brokers balanced"
    c.register_agent("stream-keeper", "Runs the event pipelines", expertise=["pipelines"],
                     instructions="You operate Kafka brokers: partitions, rebalancing and consumer lag.")
    c.register_agent("stream-helper", "Runs the event pipelines", expertise=["pipelines"])
    run_embed_jobs(c)
    assert "instructions:" in " ".join(c.find_experts(need)[0].why)
    assert c.find_experts(need)[0].agent_id == "stream-keeper"

    # Only the instructions change: a history event, and the agents are embedded again with them.
    calls = len(fake.texts)
    c.register_agent("stream-keeper", "Runs the event pipelines", expertise=["pipelines"], instructions="")
    c.register_agent("stream-helper", "Runs the event pipelines", expertise=["pipelines"],
                     instructions="You rebalance Kafka brokers every night.")
    assert pending_embed_jobs(c) == [] and "You rebalance Kafka brokers every night." in fake.texts[calls:]
    assert c.find_experts(need)[0].agent_id == "stream-helper"
    with c.db.reader() as s:
        events = s.scalars(select(AgentHistory.event).where(AgentHistory.agent_id == "stream-helper")
                           .order_by(AgentHistory.id)).all()
    assert events == ["registered", "updated"]

    # The CLI reads them from a file.
    body = tmp_path / "body.md"
    body.write_text("You shard Kafka topics.\n", encoding="utf-8")
    env = {"COORD_STATE_DIR": str(c.settings.state_dir), "COORD_DISPATCH": "inline",
           "COORD_DATABASE_URL": c.db.engine.url.render_as_string(hide_password=False)}
    out = CliRunner().invoke(cli, ["agents", "add", "topic-sharder", "--description", "Shards topics",
                                   "--instructions-file", str(body)], env=env)
    assert out.exit_code == 0, out.output
    with c.db.reader() as s:
        assert s.scalar(select(Agent.instructions).where(Agent.id == "topic-sharder")) == "You shard Kafka topics.\n"
