"""The cross-encoder reranker ragqa trains itself: training improves a known ranking, ONNX matches torch, the
Retriever reranks with it (`retrieval.rerank=PATH|default`), `ragqa models` lists it, eval scores answer_relevance.

One tiny seeded training run (8 starter questions, gold passage + 2 hard negatives each, 10 steps of all 24 pairs)
is shared by the module: on loaded 2-core machines a MiniLM cross-encoder step takes seconds, and learning to rank
held-out questions needs hundreds of steps (measured: 8 steps of 16 pairs left held-out pairwise accuracy where
the untrained head had it), so the ranking test checks the questions it trained on, against the same head untrained.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import STARTER, run_cli
from ragqa.config import load_config
from ragqa.errors import RagqaError

SEED = 0
QUESTIONS = 8
OVERRIDES = ["train.data=[corpora/starter/qa.jsonl]", "train.val_fraction=0.3", "train.seed=0",
             f"rerank.max_questions={QUESTIONS}", "rerank.negatives=2", "rerank.batch_size=24", "rerank.max_steps=10",
             "rerank.lr=3e-4", "rerank.max_length=128", f"rerank.seed={SEED}", "rerank.eval_questions=4",
             "retrieval.rerank_candidates=5", "model.device=cpu"]


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder):
    from ragqa.index import ingest

    path = tmp_path_factory.mktemp("rerank") / "starter-index"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{STARTER / 'passages.jsonl'}]"]), embedder)
    return path


@pytest.fixture(scope="module")
def trained(index, tmp_path_factory):
    from ragqa.rerank.train import train_reranker

    out = tmp_path_factory.mktemp("rerankers") / "tiny"
    return train_reranker(load_config(None, [f"index.name={index}", f"rerank.output={out}", *OVERRIDES]))


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The same starting point as training: the packaged MiniLM with the head the training seed initialises."""
    from sentence_transformers import CrossEncoder
    from transformers import set_seed

    from ragqa.models import resolve

    set_seed(SEED)
    model = CrossEncoder(resolve("minilm").location, num_labels=1, max_length=128, device="cpu")
    out = tmp_path_factory.mktemp("rerankers") / "untrained"
    model.save(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def retriever(index, embedder):
    from ragqa.retrieve import Retriever

    return Retriever.load(index, embedder_model=embedder, rerank_candidates=5, rerank_backend="torch")


@pytest.mark.slow
def test_training_improves_a_known_ranking_and_keeps_validation_out(trained, untrained, retriever):
    import random

    from ragqa.train.data import load_qa, split_rows

    card = json.loads((trained / "reranker.json").read_text())
    assert card["kind"] == "reranker" and card["base"] == "minilm" and any(trained.glob("*.safetensors"))
    assert card["data"]["pairs"] == {"gold": QUESTIONS, "retrieved": 2 * QUESTIONS}
    rows, _ = load_qa(["corpora/starter/qa.jsonl"])
    train_rows, val_rows = split_rows(rows, 0.3, 0, by="auto")  # the train section's split, as the card says
    assert card["data"]["split"]["val_ids"] == sorted(r.id for r in val_rows)
    assert set(card["metrics"]["validation"]) == {"candidates", "mode", "first_stage", "reranked"}
    used = sorted(random.Random(SEED).sample(train_rows, QUESTIONS), key=lambda r: r.id)  # what max_questions took
    assert not {r.id for r in used} & set(card["data"]["split"]["val_ids"])

    def ranks(model) -> tuple[float, float]:
        """Mean reciprocal rank of the gold passage among the 5 reranked candidates, and share ranked first."""
        found = []
        for row in used:
            ids = [p.doc_id for p in retriever.retrieve(row.question, k=5, mode="hybrid", rerank=str(model))]
            found.append(next((1 / r for r, d in enumerate(ids, start=1) if d in row.gold_ids), 0.0))
        return float(np.mean(found)), float(np.mean([f == 1.0 for f in found]))

    mrr_trained, first_trained = ranks(trained)
    mrr_untrained, first_untrained = ranks(untrained)
    assert mrr_trained >= 0.9 and first_trained >= 0.75, (mrr_trained, first_trained)
    assert mrr_trained > mrr_untrained + 0.2, (mrr_trained, mrr_untrained, first_untrained)


@pytest.mark.slow
def test_onnx_scores_match_torch_and_a_damaged_export_is_rebuilt(trained, tmp_path, monkeypatch):
    from ragqa.rerank.model import load_reranker

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    pairs = [("What causes acne?", "Acne develops when oil and dead skin cells plug hair follicles."),
             ("How is scabies treated?", "Permethrin cream is applied to the whole body and repeated a week later."),
             ("Is psoriasis contagious?", " ".join(["Psoriasis is an immune condition, not an infection."] * 30)),
             ("x", "")]
    torch_scores = load_reranker(str(trained), "cpu", "torch").scores(pairs)
    onnx = load_reranker(str(trained), "cpu", "onnx")
    assert onnx.backend == "onnx"
    got = onnx.scores(pairs)
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    assert np.abs(got - torch_scores).max() < 1e-4
    [cached] = (tmp_path / "onnx").glob("*.onnx")
    cached.write_bytes(b"not an onnx graph")
    again = load_reranker(str(trained), "cpu", "auto")
    assert again.backend == "onnx" and cached.stat().st_size > 1_000_000
    assert np.abs(again.scores(pairs) - torch_scores).max() < 1e-4


@pytest.mark.slow
def test_rerank_default_is_the_trained_one_and_models_lists_it(trained, retriever, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RagqaError, match=r"no trained reranker .*ragqa rerank train --output rerankers/default"):
        retriever.retrieve("What causes acne?", k=2, rerank="default")
    shutil.copytree(trained, tmp_path / "rerankers" / "default")
    res = retriever.retrieve("What causes acne?", k=3, mode="hybrid", rerank="default")
    assert len(res) == 3 and all(p.score == p.scores["rerank"] and "rrf" in p.scores for p in res)
    assert [p.score for p in res] == sorted((p.score for p in res), reverse=True)
    listed = run_cli("models", cwd=tmp_path, env={"COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    assert "default" in listed.stdout and "reranker" in listed.stdout and "trained cross-encoder" in listed.stdout


def test_rerank_train_refuses_a_foreign_output_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    res = run_cli("rerank", "train", "--output", str(foreign), "--index", str(tmp_path / "none"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "not a ragqa reranker" in res.stderr and (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_answer_relevance_in_eval(index, trained, tmp_path):
    out = tmp_path / "report"
    res = run_cli("eval", "--index", str(index), "--limit", "2", "--configs", "base,rag", "--output", str(out),
                  # Unchecked: 12-token answers end mid-sentence, and a withdrawn answer gets no relevance score.
                  "--set", "ask.max_new_tokens=12", "--set", "ask.verify=false",
                  "--set", f"retrieval.rerank={trained}", "--nli-judge", "none",
                  "--bootstrap", "200", "--quiet")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert all(0.0 <= r["scores"]["answer_relevance"] <= 1.0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert "answer_relevance" in json.dumps(summary["metrics"])
    assert "answer_relevance" in (out / "report.md").read_text()
