"""The ablation's bookkeeping: configurations, training-split refusal, resume without duplicates, report files."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import STARTER, run_cli
from ragqa.errors import RagqaError
from ragqa.evaluate.ablation import (
    MatrixRow,
    ResultsLog,
    describe_retrieval,
    load_questions,
    parse_configs,
    prepare_output,
    run_matrix,
    select_questions,
)
from ragqa.evaluate.report import summarize, worst_answers, write_report
from ragqa.passage import Passage

QA = STARTER / "qa.jsonl"
CONFIGS = ["base", "lora", "rag", "rag+lora"]


def test_parse_configs():
    plan = parse_configs("base, lora,rag,rag+lora,dense,bm25+lora", "hybrid")
    assert [(c.name, c.retrieval, c.use_adapter) for c in plan] == [
        ("base", "none", False), ("lora", "none", True), ("rag", "hybrid", False), ("rag+lora", "hybrid", True),
        ("dense", "dense", False), ("bm25+lora", "bm25", True)]
    for bad in ("rag+qlora", "base+lora", "", "foo"):
        with pytest.raises(RagqaError, match="--configs"):
            parse_configs(bad, "hybrid")


def test_the_report_says_when_passages_were_reranked():
    from ragqa.config import load_config

    plain = load_config(None, ["retrieval.mode=dense", "retrieval.k=3"]).retrieval
    assert describe_retrieval(plain) == "dense, k=3"
    reranked = load_config(None, ["retrieval.mode=dense", "retrieval.k=3", "retrieval.rerank=default"]).retrieval
    assert describe_retrieval(reranked) == f"dense, k=3, top {reranked.rerank_candidates} reranked by default"


def _adapter(tmp_path: Path, train: list[str], val: list[str], name: str = "adapter") -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "ragqa_card.json").write_text(json.dumps({"split": {"train": train, "val": val}}))
    return str(folder)


def test_training_questions_are_refused_or_dropped(tmp_path):
    rows = load_questions(QA)
    ids = [r["id"] for r in rows]
    adapter = _adapter(tmp_path, train=ids[:100], val=ids[100:])
    with pytest.raises(RagqaError, match="training split of adapter"):
        select_questions(rows, adapter, default_set=False, exclude_trained=False, limit=None)
    kept, notes = select_questions(rows, adapter, default_set=False, exclude_trained=True, limit=None)
    assert [r["id"] for r in kept] == ids[100:] and notes["excluded_trained"] == 100
    held_out, _ = select_questions(rows, adapter, default_set=True, exclude_trained=False, limit=5)
    assert [r["id"] for r in held_out] == ids[100:105]
    everything, _ = select_questions(rows, None, default_set=True, exclude_trained=False, limit=None)
    assert len(everything) == len(rows) == 123


def test_a_combinations_guard_covers_every_adapter_and_its_default_is_held_out_by_all(tmp_path):
    from ragqa.adapters import adapter_spec

    rows = load_questions(QA)
    ids = [r["id"] for r in rows]
    first = _adapter(tmp_path, train=ids[:60], val=ids[60:], name="first")
    second = _adapter(tmp_path, train=ids[60:100], val=ids[:60] + ids[100:], name="second")
    both = adapter_spec([first, second], "0.7,0.3")
    with pytest.raises(RagqaError, match=f"{ids[60]}\\) are in the training split of adapter {second}"):
        select_questions(rows[60:], both, default_set=False, exclude_trained=False, limit=None)
    kept, notes = select_questions(rows, both, default_set=False, exclude_trained=True, limit=None)
    assert [r["id"] for r in kept] == ids[100:] and notes["excluded_trained"] == 100
    held_out, _ = select_questions(rows, both, default_set=True, exclude_trained=False, limit=None)
    assert [r["id"] for r in held_out] == ids[100:]


def test_sample_is_seeded_in_file_order_and_spread_over_the_file():
    rows = load_questions(QA)
    ids = [r["id"] for r in rows]

    def pick(seed):
        return [r["id"] for r in select_questions(rows, None, default_set=False, exclude_trained=False, limit=None,
                                                  sample=20, seed=seed)[0]]

    first, again, other = pick(0), pick(0), pick(1)
    assert len(first) == 20 and first == again and first != other
    assert first == sorted(first, key=ids.index)  # file order kept
    assert first != ids[:20] and ids.index(first[-1]) > 60  # drawn from the whole file, not its head
    everything, _ = select_questions(rows, None, default_set=False, exclude_trained=False, limit=None, sample=500)
    assert everything == rows  # a sample larger than the set is the set


def test_cli_refuses_trained_questions_before_loading_models(tmp_path):
    rows = load_questions(QA)
    adapter = _adapter(tmp_path, train=[rows[0]["id"]], val=[r["id"] for r in rows[1:]])
    result = run_cli("eval", "--questions", str(QA), "--adapter", adapter, "--output", str(tmp_path / "out"),
                     timeout=120)
    assert result.returncode == 2
    assert "training split" in result.stderr and rows[0]["id"] in result.stderr
    assert "Traceback" not in result.stderr


class ExtractivePipeline:
    """A deterministic stand-in answerer: quotes the reference's first sentence (rag) or a fixed reply."""

    def __init__(self, cfg, adapter=None):
        self.calls: list[tuple[str, str]] = []
        self.by_question = {r["question"]: r for r in load_questions(QA)}

    def answer_batch(self, questions, retrieval, use_adapter, disclaimer):
        return [self.answer(q, retrieval) for q in questions]

    def answer(self, question, retrieval):
        from types import SimpleNamespace

        row = self.by_question[question]
        self.calls.append((row["id"], retrieval))
        passages = [] if retrieval == "none" else [
            Passage(chunk_id=f"{g}#0", doc_id=g, text=row["answer"], title=g) for g in row["gold_passage_ids"]]
        text = row["answer"].split(".")[0] + "." if passages else "I am not sure."
        return SimpleNamespace(answer=text, passages=passages, citations=[1] if passages else [], abstained=False,
                               timings={"total_s": 0.1, "generate_s": 0.1, "retrieve_s": 0.0})


def _run(tmp_path, rows, plan, scorer, factory_log):
    log = prepare_output(tmp_path / "out", {"questions": "x"}, fresh=False)

    def factory(cfg, adapter=None):
        pipe = ExtractivePipeline(cfg, adapter)
        factory_log.append(pipe)
        return pipe

    from ragqa.config import Config

    return log, run_matrix(Config(), rows, plan, log, adapter="a", scorer=scorer, pipeline_factory=factory,
                           progress=False)


@pytest.fixture(scope="module")
def scorer(embedder):
    from ragqa.evaluate.metrics import Scorer

    return Scorer(embedder)


def test_resume_skips_done_pairs_and_never_duplicates(tmp_path, scorer):
    rows = load_questions(QA)[:4]
    plan = [MatrixRow("base", "none", False), MatrixRow("rag", "hybrid", False)]
    pipes: list = []
    log, ran = _run(tmp_path, rows[:2], plan, scorer, pipes)
    assert ran == 4 and len(log.records) == 4
    # Simulate a kill in the middle of writing the next line: a partial JSON line at the end.
    results = tmp_path / "out" / "results.jsonl"
    with open(results, "a") as fh:
        fh.write('{"qid": "starter-qa:3", "config": "ba')
    log, ran = _run(tmp_path, rows, plan, scorer, pipes)
    assert ran == 4  # only the 2 new questions x 2 configurations
    assert sorted(pipes[-1].calls) == sorted((r["id"], m) for r in rows[2:] for m in ("none", "hybrid"))
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    keys = [(r["qid"], r["config"]) for r in lines]
    assert len(keys) == len(set(keys)) == 8
    assert ResultsLog(results).done == set(keys)
    # A complete run resumes to nothing: no pipeline is even built.
    _, ran = _run(tmp_path, rows, plan, scorer, pipes)
    assert ran == 0 and len(pipes) == 2
    rag = next(r for r in lines if r["config"] == "rag")
    assert rag["scores"]["context_recall"] == 1.0 and rag["passages"][0]["doc_id"] in rag["gold_passage_ids"]


def test_resume_refuses_results_of_another_setup(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, {"questions": "a", "adapter": None}, fresh=False).append({"qid": "1", "config": "base"})
    with pytest.raises(RagqaError, match="adapter changed"):
        prepare_output(out, {"questions": "a", "adapter": "x"}, fresh=False)
    assert prepare_output(out, {"questions": "a", "adapter": "x"}, fresh=True).records == []
    (tmp_path / "file").write_text("")
    with pytest.raises(RagqaError, match="is a file"):
        prepare_output(tmp_path / "file", {}, fresh=False)


def _synthetic_records() -> list[dict]:
    """48 questions x 4 configs with fixed scores: rag+lora clearly best on token_f1, tied elsewhere."""
    records = []
    for q in range(48):
        for c, config in enumerate(CONFIGS):
            f1 = 0.2 + 0.15 * c + 0.01 * (q % 7)
            scores = {"abstained": 0.0, "token_f1": f1, "rouge_l": 0.3 + 0.001 * q}
            failures = {}
            if config.startswith("rag"):
                scores["nli_faithfulness"] = None if q % 12 == 0 else 0.5 + 0.01 * (q % 5)
                if q % 12 == 0:
                    failures["nli_faithfulness"] = "nan"
                scores["llm_faithfulness"] = None if q % 8 == 0 else 0.4 + 0.012 * (q % 5)
                if q % 8 == 0:
                    failures["llm_faithfulness"] = "parse"
            records.append({
                "qid": f"q{q:02d}", "config": config, "question": f"Question {q} | pipes?", "reference": "ref",
                "answer": f"answer <b>{q}</b>", "gold_passage_ids": ["d1"], "error": None,
                "passages": [{"doc_id": "d1", "title": "T", "text": "passage text & more"}] if c >= 2 else [],
                "timings": {"total_s": 1.0 + c, "generate_s": 1.0, "retrieve_s": 0.01 * c}, "scores": scores,
                "failures": failures})
    return records


def test_summary_numbers_winners_failures_and_pvalues():
    records = _synthetic_records()
    s = summarize(records, CONFIGS, seed=0, n_resamples=500)
    assert s == summarize(records, CONFIGS, seed=0, n_resamples=500)  # same seed, same numbers
    f1 = s["metrics"]["token_f1"]
    assert f1["rag+lora"]["low"] < f1["rag+lora"]["mean"] < f1["rag+lora"]["high"]
    assert f1["rag+lora"]["mean"] == pytest.approx(0.65 + 0.01 * sum(q % 7 for q in range(48)) / 48)
    assert s["winners"]["token_f1"] == ["rag+lora"] and s["winners"]["abstained"] == CONFIGS
    assert s["comparisons"]["token_f1"]["base"]["diff"] == pytest.approx(0.45)
    assert s["comparisons"]["token_f1"]["base"]["p"] < 0.01
    assert s["comparisons"]["rouge_l"]["rag"]["p"] == 1.0
    assert s["metrics"]["nli_faithfulness"]["rag"]["failures"] == {"nan": 4}
    assert s["metrics"]["llm_faithfulness"]["rag+lora"]["failures"] == {"parse": 6}
    assert s["metrics"]["nli_faithfulness"]["base"]["n"] == 0
    assert s["agreement"]["n"] == 2 * 48 - 2 * len({q for q in range(48) if q % 12 == 0 or q % 8 == 0})
    assert s["latency"]["rag+lora"]["total_s"] == 4.0
    worst = worst_answers(records, "rag", n=5)
    assert [r["qid"] for r in worst] == ["q00", "q07", "q14", "q21", "q28"]


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def test_report_files_are_written_and_well_formed(tmp_path):
    records = _synthetic_records()
    meta = {"questions": "synthetic", "adapter": "none", "judge": "local:test", "nli_judge": "NLI judge test"}
    write_report(tmp_path, records, CONFIGS, meta, seed=1, n_resamples=300)
    md = (tmp_path / "report.md").read_text()
    assert "| token_f1 |" in md and "rag+lora" in md and "parse 6" in md and "nan 4" in md
    assert "## Worst 5 answers per configuration" in md and md.count("### ") == 4
    assert "judge: local:test" in md and "passage text & more" in md
    png = (tmp_path / "matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    page = (tmp_path / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and {"table", "h1", "img", "li"} <= checker.tags
    assert checker.images and checker.images[0].startswith("data:image/png;base64,")
    assert "answer <b>" not in page and "answer &lt;b&gt;" in page  # answers are escaped, not rendered
    assert "http" not in page  # self-contained: nothing fetched from elsewhere
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["token_f1"]["base"]["n"] == 48
    assert not list(tmp_path.glob(".*.tmp*"))  # no temp files left behind


def test_checked_rows_failure_modes_and_correctness_reach_summary_and_report(tmp_path):
    records = _synthetic_records()
    for r in records:
        q, checked = int(r["qid"][1:]), bool(r["passages"])
        r["scores"].update({"echo_or_short": float(q == 0), "repetition": 0.0, "ref_support": 0.5 + 0.01 * (q % 3)})
        if checked:
            r.update(raw_answer=r["answer"] + " Extra.", checked_by="lexical",
                     sentences=[{"text": "a", "supported": True}, {"text": "b", "supported": q % 2 == 0}])
            r["scores"].update({"cites": float(q % 12 != 0), "token_f1_raw": r["scores"]["token_f1"] + 0.01,
                                "check_removed": 0.5 * (q % 2), "withdrawn": 0.0})
            r["timings"]["verify_s"] = 0.02
    s = summarize(records, CONFIGS, seed=0, n_resamples=300)
    modes = s["failure_modes"]
    assert modes["echo_or_short"]["base"] == {"rate": pytest.approx(1 / 48, abs=1e-6), "n": 48, "target": "<= 0.02",
                                              "ok": False}
    assert modes["repetition"]["rag"]["ok"] is True
    assert modes["cites"]["rag"]["rate"] == pytest.approx(44 / 48, abs=1e-6) and modes["cites"]["rag"]["ok"] is False
    assert modes["cites"]["base"]["rate"] is None and modes["cites"]["base"]["ok"] is None
    assert s["checked_by"] == {"base": [], "lora": [], "rag": ["lexical"], "rag+lora": ["lexical"]}
    assert s["metrics"]["ref_support"]["base"]["n"] == 48 and s["latency"]["rag"]["verify_s"] == 0.02
    meta = {"questions": "synthetic", "nli_judge": "not run", "ref_scorer": "lexical"}
    write_report(tmp_path, records, CONFIGS, meta, seed=0, n_resamples=300)
    md = (tmp_path / "report.md").read_text()
    assert "## Answer check" in md and "| rag | lexical |" in md and "(-0.010)" in md
    assert "## Failure modes" in md and "| echo_or_short | <= 0.02 | 2.1% of 48 ✗" in md
    assert "| ref_contradiction | n/a | n/a | n/a | n/a | - |" in md  # the lexical scorer cannot say it
    assert "`ref_support`: " in md and "scorer: lexical" in md
    assert "before the check (lexical)" in md  # the worst answers show what the check removed
