"""The tuned query encoder (`ragqa query-encoder train`, retrieval.query_encoder_weights): training on a tiny index
puts questions nearer their gold passages than the base embedder does, the ONNX path reproduces the tuned torch
vectors, the Retriever embeds questions with the tuned weights (passages stay as indexed), an encoder tuned from
other weights is refused in one line, and `ragqa models` lists it.

One seeded training run on the shipped starter corpus (51 passages, 123 questions) is shared by the module.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import STARTER, run_cli
from ragqa.config import load_config
from ragqa.errors import RagqaError

OVERRIDES = ["train.data=[corpora/starter/qa.jsonl]", "train.val_fraction=0.3", "train.seed=0",
             "query_encoder.epochs=4", "query_encoder.lr=1e-4", "query_encoder.batch_size=16",
             "query_encoder.seed=0", "query_encoder.eval_questions=8", "model.device=cpu"]


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder):
    from ragqa.index import ingest

    path = tmp_path_factory.mktemp("qtune") / "starter-index"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{STARTER / 'passages.jsonl'}]"]), embedder)
    return path


@pytest.fixture(scope="module")
def tuned(index, tmp_path_factory):
    from ragqa.query_tuning.train import train_query_encoder

    out = tmp_path_factory.mktemp("query_encoders") / "tiny"
    return train_query_encoder(load_config(None, [f"index.name={index}", f"query_encoder.output={out}", *OVERRIDES]))


def _split():
    from ragqa.train.data import load_qa, split_rows

    rows, _ = load_qa(["corpora/starter/qa.jsonl"])
    return split_rows(rows, 0.3, 0, by="auto")


def _known_ranking(retriever, rows) -> tuple[float, float]:
    """Over `rows`: the mean log-probability of the gold chunks in a softmax (temperature 0.05) over all chunk
    vectors of the index, and the dense MRR@10 of the gold documents."""
    vectors = retriever.store.vectors()
    logp, found = [], []
    for row in rows:
        scores = vectors @ retriever.embed_query(row.question) / 0.05
        gold = [j for d in row.gold_ids for j in retriever.rows_of(d)]
        top = scores.max()
        logp.append(np.log(np.exp(scores[gold] - top).sum()) - np.log(np.exp(scores - top).sum()))
        ids = [p.doc_id for p in retriever.retrieve(row.question, k=10, mode="dense")]
        found.append(next((1 / r for r, d in enumerate(ids, start=1) if d in row.gold_ids), 0.0))
    return float(np.mean(logp)), float(np.mean(found))


@pytest.mark.slow
def test_training_brings_questions_to_their_gold_passages_and_keeps_validation_out(tuned, index, embedder):
    from ragqa.query_tuning.model import weights_digest
    from ragqa.retrieve import Retriever

    card = json.loads((tuned / "query_encoder.json").read_text())
    assert card["kind"] == "query_encoder" and any(tuned.glob("*.safetensors"))
    assert (tuned / "tokenizer.json").is_file() or (tuned / "vocab.txt").is_file()
    assert card["base"] == {"embedder": "minilm", "dim": 384, "weights_sha256": weights_digest(embedder)}
    assert card["weights_sha256"] != card["base"]["weights_sha256"]
    assert card["index"]["chunks"] > 0 and len(card["index"]["vectors_sha256"]) == 64
    train_rows, val_rows = _split()
    assert card["data"]["split"]["val_ids"] == sorted(r.id for r in val_rows)
    assert card["data"]["questions"] == len([r for r in train_rows if r.gold_ids])
    assert card["recipe"]["temperature"] == 0.05 and card["train"]["steps"] == 4 * -(-card["data"]["questions"] // 16)
    losses = card["train"]["epoch_loss"]
    assert losses[-1] < losses[0], losses
    val = card["metrics"]["validation"]
    assert val["n"] == 8 and set(val) == {"candidates", "n", "dense", "hybrid"}
    assert set(val["dense"]["tuned"]) == {"n", "recall@1", "recall@3", "recall@5", "mrr@10"}

    base = Retriever.load(index, embedder_model=embedder, query_encoder="torch")
    adapted = Retriever.load(index, embedder_model=embedder, query_encoder="torch", query_encoder_weights=str(tuned))
    trained_on = [r for r in train_rows if r.gold_ids]
    logp_base, mrr_base = _known_ranking(base, trained_on)
    logp_tuned, mrr_tuned = _known_ranking(adapted, trained_on)
    # measured: log p(gold) -0.46 -> -0.02, MRR@10 0.946 -> 1.0 (the base already ranks most first)
    assert logp_tuned > logp_base + 0.2 and mrr_tuned >= 0.98 > mrr_base, (logp_base, logp_tuned, mrr_base, mrr_tuned)
    held = [r for r in val_rows if r.gold_ids]
    (_, val_base), (_, val_tuned) = _known_ranking(base, held), _known_ranking(adapted, held)
    assert val_tuned >= val_base - 0.02, (val_base, val_tuned)  # not bought by forgetting the held-out questions


@pytest.mark.slow
def test_retriever_embeds_questions_with_the_tuned_weights_and_keeps_passages(tuned, index, embedder):
    from sentence_transformers import SentenceTransformer

    from ragqa.retrieve import Retriever

    cfg = load_config(None, [f"index.name={index}", f"retrieval.query_encoder_weights={tuned}",
                             "retrieval.query_encoder=torch", "model.device=cpu"])
    adapted = Retriever.from_config(cfg)
    base = Retriever.load(index, embedder_model=embedder, query_encoder="torch")
    question = "My teenager has spots on his forehead, what causes them?"
    reference = SentenceTransformer(str(tuned), device="cpu").encode([question], normalize_embeddings=True)[0]
    assert np.abs(adapted.embed_query(question) - reference).max() < 1e-5
    assert float(adapted.embed_query(question) @ base.embed_query(question)) < 0.999  # not the base vector
    got = {p.chunk_id: p.scores["dense"] for p in adapted.retrieve(question, k=5, mode="dense")}
    want = {p.chunk_id: p.scores["dense"] for p in base.retrieve(question, k=5, mode="dense")}
    assert got != want
    assert np.array_equal(adapted.store.vectors(), base.store.vectors())  # passages as indexed
    for mode in ("bm25", "hybrid"):  # the other modes keep working on top
        assert len(adapted.retrieve(question, k=3, mode=mode)) == 3
    off = Retriever.from_config(load_config(None, [f"index.name={index}", "retrieval.query_encoder=torch",
                                                   "model.device=cpu"]))
    assert off.query_model is None and np.abs(off.embed_query(question) - base.embed_query(question)).max() < 1e-6


@pytest.mark.slow
def test_onnx_matches_torch_for_the_tuned_weights(tuned, index, embedder, tmp_path, monkeypatch):
    from ragqa.retrieve import Retriever

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    onnx = Retriever.load(index, embedder_model=embedder, query_encoder="onnx", query_encoder_weights=str(tuned))
    torch_ = Retriever.load(index, embedder_model=embedder, query_encoder="torch", query_encoder_weights=str(tuned))
    base = Retriever.load(index, embedder_model=embedder, query_encoder="onnx")
    assert onnx.query_encoder.backend == "onnx"
    for question in ("What causes acne?", "is eczema catching", "x" * 3000):
        assert np.abs(onnx.embed_query(question) - torch_.embed_query(question)).max() < 1e-5
        assert float(onnx.embed_query(question) @ base.embed_query(question)) < 0.9999
    # The tuned weights got an export of their own in this cache. (The base encoder's export may have been made
    # by an earlier test in another cache: the shared embedder keeps its ONNX session, so count only >= 1.)
    assert list((tmp_path / "onnx").glob("*.onnx"))


@pytest.mark.slow
def test_an_encoder_tuned_from_other_weights_is_refused(tuned, index, embedder, tmp_path):
    from ragqa.retrieve import Retriever

    card = json.loads((tuned / "query_encoder.json").read_text())
    other = tmp_path / "other"
    shutil.copytree(tuned, other)
    card["base"]["weights_sha256"] = "0" * 64
    (other / "query_encoder.json").write_text(json.dumps(card))
    with pytest.raises(RagqaError, match=r"was tuned from embedder 'minilm' \(weights 000000000000\), not from the "
                                         r"'minilm' weights .*retrieval.query_encoder_weights=none") as exc:
        Retriever.load(index, embedder_model=embedder, query_encoder_weights=str(other))
    assert "\n" not in str(exc.value)
    card["base"]["dim"] = 768
    (other / "query_encoder.json").write_text(json.dumps(card))
    with pytest.raises(RagqaError, match=r"gives 768-d vectors but index .* holds 384-d"):
        Retriever.load(index, embedder_model=embedder, query_encoder_weights=str(other))
    res = run_cli("eval", "--retrieval-only", "--index", str(index), "--questions", str(STARTER / "qa.jsonl"),
                  "--limit", "2", "--output", str(tmp_path / "report"), "--quiet",
                  "--set", f"retrieval.query_encoder_weights={other}")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "768-d" in res.stderr


@pytest.mark.slow
def test_default_name_and_models_listing(tuned, index, embedder, tmp_path, monkeypatch):
    from ragqa.retrieve import Retriever

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RagqaError, match=r"no tuned query encoder .*ragqa query-encoder train --output "
                                         r"query_encoders/default"):
        Retriever.load(index, embedder_model=embedder, query_encoder_weights="default")
    shutil.copytree(tuned, tmp_path / "query_encoders" / "default")
    adapted = Retriever.load(index, embedder_model=embedder, query_encoder_weights="default", query_encoder="torch")
    assert adapted.query_model is not None
    listed = run_cli("models", cwd=tmp_path, env={"COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    assert "query encoder" in listed.stdout and "tuned query encoder from minilm" in listed.stdout


def test_train_refuses_a_foreign_output_folder_and_bad_weights_setting(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    res = run_cli("query-encoder", "train", "--output", str(foreign), "--index", str(tmp_path / "none"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "not a ragqa query encoder" in res.stderr and (foreign / "notes.txt").read_text() == "keep me"
    assert load_config(None, ["retrieval.query_encoder_weights=null"]).retrieval.query_encoder_weights == "none"
    assert load_config(None, []).retrieval.query_encoder_weights == "none"
