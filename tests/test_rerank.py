"""The cross-encoder reranker ragqa trains itself: training improves a known ranking, ONNX matches torch, the
Retriever reranks with it (`retrieval.rerank=PATH|default`), `ragqa models` lists it, eval scores answer_relevance.

One tiny seeded training run (8 starter questions, gold passage + 2 hard negatives each, 10 steps of all 8 lists
with the default listwise softmax loss and head learning rate) is shared by the module: on loaded 2-core machines
a MiniLM cross-encoder step takes seconds, and learning to rank held-out questions needs hundreds of steps, so the
ranking test checks the questions it trained on, against the same head untrained, with the cross-encoder alone
(first_stage_temperature null: added to the dense cosine, which already ranks these questions' gold passages
first, the ranking would not show what training did); ranking on top of the first stage is checked on its own.
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
             "rerank.first_stage_temperature=null", "retrieval.rerank_candidates=5", "model.device=cpu"]


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
    assert card["recipe"]["loss"] == "softmax" and card["first_stage_temperature"] is None
    validation = card["metrics"]["validation"]
    assert set(validation) == {"candidates", "mode", "first_stage_temperature", "first_stage", "reranked"}
    assert {"recall@1", "recall@3", "recall@5", "mrr@10"} <= set(validation["reranked"])
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
    assert onnx.backend == "onnx" and onnx.direct  # the tokenizer called directly gives preprocess's ids
    got = onnx.scores(pairs)
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    assert np.abs(got - torch_scores).max() < 1e-4
    [cached] = (tmp_path / "onnx").glob("*.onnx")
    cached.write_bytes(b"not an onnx graph")
    again = load_reranker(str(trained), "cpu", "auto")
    assert again.backend == "onnx" and cached.stat().st_size > 1_000_000
    assert np.abs(again.scores(pairs) - torch_scores).max() < 1e-4


@pytest.mark.slow
def test_the_int8_backend_runs_a_quantized_twin_close_to_torch_and_rebuilds_a_damaged_one(trained, tmp_path,
                                                                                          monkeypatch):
    from ragqa.rerank.model import MAX_DIFF_INT8, load_reranker

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    pairs = [("What causes acne?", "Acne develops when oil and dead skin cells plug hair follicles."),
             ("How is scabies treated?", "Permethrin cream is applied to the whole body and repeated a week later."),
             ("Is psoriasis contagious?", "Psoriasis is an immune condition, not an infection.")]
    want = load_reranker(str(trained), "cpu", "torch").scores(pairs)
    int8 = load_reranker(str(trained), "cpu", "onnx-int8")
    assert int8.backend == "onnx-int8"
    got = int8.scores(pairs)
    assert np.abs(got - want).max() <= MAX_DIFF_INT8
    quantized = list((tmp_path / "onnx").glob("*.int8-*.onnx"))
    [exported] = [p for p in (tmp_path / "onnx").glob("*.onnx") if p not in quantized]
    assert len(quantized) == 1 and quantized[0].stat().st_size < exported.stat().st_size / 2  # int8 weights
    quantized[0].write_bytes(b"not an onnx graph")
    again = load_reranker(str(trained), "cpu", "onnx-int8")
    assert again.backend == "onnx-int8" and quantized[0].stat().st_size > 1_000_000
    assert np.abs(again.scores(pairs) - got).max() < 1e-6
    cfg = load_config(None, ["retrieval.rerank_backend=onnx-int8"])
    assert cfg.retrieval.rerank_backend == "onnx-int8"


@pytest.mark.slow
def test_the_openvino_int8_backend_matches_torch_reuses_its_cache_and_rebuilds_a_damaged_one(trained, tmp_path,
                                                                                             monkeypatch, capfd):
    from ragqa.rerank.model import MAX_DIFF_INT8, load_reranker

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    pairs = [("What causes acne?", "Acne develops when oil and dead skin cells plug hair follicles."),
             ("How is scabies treated?", "Permethrin cream is applied to the whole body and repeated a week later."),
             ("Is psoriasis contagious?", " ".join(["Psoriasis is an immune condition, not an infection."] * 30)),
             ("How do I bake bread?", "Impetigo is a contagious bacterial skin infection common in children.")]
    want = load_reranker(str(trained), "cpu", "torch").scores(pairs)
    capfd.readouterr()
    int8 = load_reranker(str(trained), "cpu", "openvino-int8")
    assert int8.backend == "openvino-int8"
    assert capfd.readouterr().out == ""  # nncf's progress bars stay off stdout (ragqa ask --json answers there)
    got = int8.scores(pairs)
    assert got.dtype == np.float32 and np.abs(got - want).max() <= MAX_DIFF_INT8
    [folder] = (tmp_path / "rerankers").glob("openvino-int8-*")
    weights = folder / "openvino_model.bin"
    made = weights.stat().st_mtime_ns
    assert load_reranker(str(trained), "cpu", "openvino-int8").backend == "openvino-int8"
    assert weights.stat().st_mtime_ns == made  # the cached conversion is reused
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong sha256
    weights.write_bytes(bytes(data))
    again = load_reranker(str(trained), "cpu", "openvino-int8")
    assert again.backend == "openvino-int8" and weights.read_bytes() != bytes(data)
    assert np.abs(again.scores(pairs) - got).max() < 1e-4


def test_the_openvino_int8_backend_names_what_is_missing(untrained, tmp_path, monkeypatch):
    import ragqa.rerank.openvino as ov_rerank
    from ragqa.rerank.model import load_reranker

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    monkeypatch.setattr(ov_rerank, "missing_packages", lambda: ["nncf"])
    with pytest.raises(RagqaError, match=r"rerank_backend=openvino-int8: nncf not installed \(pip install "
                                         r"'ragqa\[fast\]'\); use retrieval.rerank_backend=torch"):
        load_reranker(str(untrained), "cpu", "openvino-int8")
    assert load_reranker(str(untrained), "cpu", "auto").backend == "onnx"  # auto never needs openvino


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


def test_rerank_train_clears_what_a_killed_run_left_and_checks_the_teacher_before_any_work(tmp_path):
    from test_outputs import dead_pid

    left = tmp_path / f".tiny.tmp-{dead_pid()}-abc"  # a SIGTERM-killed run's trainer scratch
    (left / "checkpoint-5").mkdir(parents=True)
    res = run_cli("rerank", "train", "--output", str(tmp_path / "tiny"), "--index", str(tmp_path / "none"),
                  "--set", "rerank.teacher=no-such-reranker")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "reranker 'no-such-reranker' not found" in res.stderr  # before the missing index is even looked at
    assert not left.exists() and not (tmp_path / "tiny").exists()


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


@pytest.mark.slow
def test_a_first_stage_temperature_ranks_by_the_logit_plus_the_dense_cosine(trained, retriever, tmp_path):
    """A card's first_stage_temperature T makes the reranker rank by sigmoid(logit + dense cosine / T), in float64;
    passages are read as title line + text."""
    from ragqa.rerank.model import load_reranker, passage_text

    residual = tmp_path / "residual"
    shutil.copytree(trained, residual)
    card = json.loads((residual / "reranker.json").read_text())
    (residual / "reranker.json").write_text(json.dumps({**card, "first_stage_temperature": 0.05}))
    plain, on_top = load_reranker(str(trained), "cpu", "torch"), load_reranker(str(residual), "cpu", "torch")
    assert plain.first_stage_temperature is None and on_top.first_stage_temperature == 0.05
    passages = retriever.retrieve("What causes acne?", k=5, mode="hybrid")
    pairs = [("What causes acne?", passage_text(p)) for p in passages]
    assert all(text.startswith(p.title + "\n") for (_, text), p in zip(pairs, passages, strict=True))
    logits = plain.logits(pairs)
    cosines = np.array([p.scores["dense"] for p in passages])
    assert np.allclose(plain.rank_scores("What causes acne?", passages), 1 / (1 + np.exp(-logits)), atol=1e-6)
    want = 1 / (1 + np.exp(-(logits + cosines / 0.05)))
    assert np.allclose(on_top.rank_scores("What causes acne?", passages), want, atol=1e-6)
    reranked = retriever.retrieve("What causes acne?", k=5, mode="hybrid", rerank=str(residual))
    assert [p.chunk_id for p in reranked] == [passages[i].chunk_id for i in np.argsort(-want, kind="stable")]
    (residual / "reranker.json").write_text(json.dumps({**card, "first_stage_temperature": -1}))
    with pytest.raises(RagqaError, match="first_stage_temperature -1 is not a positive number"):
        load_reranker(str(residual), "cpu", "torch")


def test_rerank_calibrate_refuses_folders_it_cannot_calibrate(tmp_path):
    """Only a ragqa reranker trained on the config's own split is calibrated: another split's training questions
    could be its validation ones."""
    folder = tmp_path / "other-split"
    folder.mkdir()
    (folder / "reranker.json").write_text(json.dumps({"kind": "reranker", "data": {"split": {"val_ids": ["x"]}}}))
    res = run_cli("rerank", "calibrate", "--reranker", str(folder), "--data", "corpora/starter/qa.jsonl")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "another train/validation split" in res.stderr
    (folder / "reranker.json").unlink()
    res = run_cli("rerank", "calibrate", "--reranker", str(folder), "--data", "corpora/starter/qa.jsonl")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a ragqa-trained reranker" in res.stderr


@pytest.mark.slow
def test_calibration_separates_in_domain_from_off_topic_and_decides_abstention(trained, index, tmp_path, caplog):
    """`ragqa rerank calibrate` fits the relevance cut on training questions vs half the off-topic set; with
    retrieval.rerank and abstain_below auto the pipeline abstains on the calibrated probability of the best passage:
    validation questions are answered and the held-out off-topic half declined. Without a calibration, or with a
    number for abstain_below, the cosine cut decides."""
    from ragqa import abstain
    from ragqa.answer import Pipeline
    from ragqa.rerank.calibrate import off_topic_halves
    from ragqa.train.data import load_qa, split_rows

    card = json.loads((trained / "reranker.json").read_text())
    assert card["abstention"]["n_in_domain"] == QUESTIONS  # rerank train calibrates on the questions it trained on
    calibrated = tmp_path / "calibrated"
    shutil.copytree(trained, calibrated)
    # as trained by default: ranked by the logit + the dense cosine / 0.05
    (calibrated / "reranker.json").write_text(json.dumps({**card, "first_stage_temperature": 0.05, "abstention": None}))
    sets = [x for o in OVERRIDES for x in ("--set", o)]
    res = run_cli("rerank", "calibrate", "--reranker", str(calibrated), "--index", str(index), "--questions", "40",
                  *sets)
    assert res.returncode == 0, res.stderr
    calibration = json.loads((calibrated / "reranker.json").read_text())["abstention"]
    rows, _ = load_qa(["corpora/starter/qa.jsonl"])
    train_rows, val_rows = split_rows(rows, 0.3, 0, by="auto")
    assert calibration["n_in_domain"] == 40 and set(calibration["in_domain_ids"]) <= {r.id for r in train_rows}
    assert calibration["n_off_topic"] == 60 and calibration["held_out_off_topic"]["n"] == 60
    assert 0 < calibration["threshold"] < 1 and calibration["scale"] > 0
    assert calibration["answered_in_domain"] >= 0.9 and calibration["declined_off_topic"] >= 0.9, calibration
    assert calibration["held_out_off_topic"]["declined"] >= 0.9, calibration

    cfg = load_config(None, [f"index.name={index}", f"retrieval.rerank={calibrated}", "retrieval.rerank_candidates=5",
                             "retrieval.rerank_backend=torch", "model.device=cpu"])
    pipeline = Pipeline(cfg)
    assert pipeline.relevance_calibration() == calibration

    def answered(questions) -> float:
        decisions = []
        for q in questions:
            passages = pipeline.retrieve(q, "hybrid", 3)
            best = max(p.scores["rerank_logit"] for p in passages)
            decline = pipeline.should_abstain(passages)
            assert decline == (abstain.relevance(calibration, best) < calibration["threshold"])
            decisions.append(not decline)
        return float(np.mean(decisions))

    assert answered([r.question for r in val_rows]) >= 0.85
    assert answered(off_topic_halves(SEED)[1]) <= 0.1
    pipeline.cfg = load_config(None, [f"index.name={index}", f"retrieval.rerank={calibrated}",
                                      "retrieval.abstain_below=0.3"])
    assert pipeline.relevance_calibration() is None  # a number is a cosine cut
    older = tmp_path / "older"  # trained before calibration existed
    shutil.copytree(trained, older)
    (older / "reranker.json").write_text(json.dumps({k: v for k, v in card.items() if k != "abstention"}))
    pipeline.cfg = load_config(None, [f"index.name={index}", f"retrieval.rerank={older}"])
    with caplog.at_level("WARNING"):
        assert pipeline.relevance_calibration() is None and pipeline.relevance_calibration() is None
    assert caplog.text.count("has no relevance calibration") == 1


def table_scorer(logits: list[float]):
    """A stand-in cross-encoder for the loss tests: one learnable logit per passage text ("d0" -> logits[0])."""
    import torch

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.tensor(logits))
            self.device = torch.device("cpu")

        def preprocess(self, pairs, prompt=None, task=None):
            return {"ids": torch.tensor([int(doc[-1]) for _, doc in pairs])}

        def forward(self, features):
            return {"scores": self.table[features["ids"]].unsqueeze(1)}

    return Scorer()


def test_softmax_loss_is_the_gold_passages_cross_entropy_and_learns_the_gold_first():
    """The listwise loss: the cross-entropy of the gold passage in a softmax over each question's list."""
    import torch

    from ragqa.rerank.train import softmax_loss

    model = table_scorer([0.0, 2.0, -1.0, 0.0])
    inputs = (["q1", "q2"], [["d0", "d1", "d2"], ["d3", "d1"]])
    labels = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0])]
    loss = softmax_loss(model)(inputs, labels)
    first = torch.log_softmax(torch.tensor([0.0, 2.0, -1.0]), 0)[0]
    second = torch.log_softmax(torch.tensor([0.0, 2.0]), 0)[0]
    assert torch.isclose(loss, -(first + second) / 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(50):
        optimizer.zero_grad()
        softmax_loss(model)(inputs, labels).backward()
        optimizer.step()
    table = model.table.detach()
    assert table[0] > table[1] and table[3] > table[1] and softmax_loss(model)(inputs, labels) < 0.2 * loss


def test_the_distillation_term_is_the_kl_from_the_teachers_list_softmax_and_pulls_the_model_to_it():
    import torch

    from ragqa.rerank.train import softmax_loss

    model = table_scorer([0.0, 0.0, 0.0])
    inputs, labels = (["q"], [["d0", "d1", "d2"]]), [torch.tensor([1.0, 0.0, 0.0])]
    teacher = {("q", "d0"): 2.0, ("q", "d1"): 1.0, ("q", "d2"): -1.0}
    wanted = torch.softmax(torch.tensor([2.0, 1.0, -1.0]), 0)
    kl = (wanted * (wanted.log() - torch.log_softmax(torch.zeros(3), 0))).sum()
    assert torch.isclose(softmax_loss(model, teacher, 1.0)(inputs, labels), kl)
    mixed = softmax_loss(model, teacher, 0.25)(inputs, labels)
    assert torch.isclose(mixed, 0.75 * softmax_loss(model)(inputs, labels) + 0.25 * kl)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        softmax_loss(model, teacher, 1.0)(inputs, labels).backward()
        optimizer.step()
    # the teacher's distribution, not the one-hot label: d1 keeps its share, above d2
    assert torch.allclose(torch.softmax(model.table.detach(), 0), wanted, atol=1e-3)


def test_a_teacher_with_the_pointwise_loss_is_refused_when_the_config_loads():
    with pytest.raises(RagqaError, match="teacher needs loss: softmax"):
        load_config(None, ["rerank.teacher=default", "rerank.loss=bce"])
    assert load_config(None, ["rerank.teacher=default"]).rerank.loss == "softmax"


def test_shrinking_keeps_the_bottom_layers():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ragqa.rerank.train import kept_layers, shrink

    assert kept_layers(6, 3) == [0, 1, 2] and kept_layers(6, 1) == [0]
    assert kept_layers(6, 6) == kept_layers(6, 9) == list(range(6))
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1))
    layers = list(model.bert.encoder.layer)
    assert shrink(model, 3) == [0, 1, 2]
    assert list(model.bert.encoder.layer) == layers[:3]
    assert model.config.num_hidden_layers == 3
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 1)


@pytest.mark.slow
def test_a_shrunk_reranker_distilled_from_a_trained_one_loads_with_its_layers_and_ranks_like_it(
        trained, index, retriever, tmp_path):
    import random

    from ragqa.rerank.model import load_reranker
    from ragqa.rerank.train import train_reranker
    from ragqa.train.data import load_qa, split_rows

    out = tmp_path / "small"
    train_reranker(load_config(None, [f"index.name={index}", f"rerank.output={out}", *OVERRIDES,
                                      f"rerank.base={trained}", "rerank.layers=2", f"rerank.teacher={trained}",
                                      "rerank.distill_weight=0.5", "rerank.head_lr=3e-4"]))
    card = json.loads((out / "reranker.json").read_text())
    assert card["layers"] == {"kept": [0, 1], "of": 6} and card["teacher"] == str(trained)
    small = load_reranker(str(out), "cpu", "onnx")
    assert small.backend == "onnx" and small.model.model.config.num_hidden_layers == 2
    rows, _ = load_qa(["corpora/starter/qa.jsonl"])
    train_rows, _ = split_rows(rows, 0.3, 0, by="auto")
    used = sorted(random.Random(SEED).sample(train_rows, QUESTIONS), key=lambda r: r.id)
    firsts = [retriever.retrieve(row.question, k=5, mode="hybrid", rerank=str(out))[0].doc_id in row.gold_ids
              for row in used]
    assert np.mean(firsts) >= 0.75, firsts
