"""Issue #16: `ragqa eval` on questions without reference answers (real user questions).

The loader (ragqa.qa, need_answer=ALL_OR_NONE) takes a file whose rows all have an answer or none has, in every
format, and refuses a mixed file in one line; the report of an answerless run says so at the top, shows the
reference metrics as not applicable and keeps bootstrap CIs and paired p-values on the reference-free ones;
`ragqa train` still refuses the file. The end-to-end run with the real models is in test_eval_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import STARTER, run_cli
from ragqa.errors import RagqaError
from ragqa.evaluate.ablation import load_questions

QUESTIONS = [{"id": "u1", "question": "What actually causes acne?"},
             {"id": "u2", "question": "Is it okay to squeeze my pimples?", "gold_passage_ids": "starter:acne-1"},
             {"id": "u3", "question": "How do I treat athlete's foot?"}]


def _write_all_formats(folder: Path, records: list[dict]) -> list[Path]:
    import pandas as pd

    paths = [folder / f"questions.{ext}" for ext in ("jsonl", "json", "csv", "parquet")]
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    paths[1].write_text(json.dumps(records), encoding="utf-8")
    frame = pd.DataFrame(records)
    frame.to_csv(paths[2], index=False)
    frame.to_parquet(paths[3])
    return paths


def test_eval_loads_answerless_questions_in_every_format(tmp_path):
    for path in _write_all_formats(tmp_path, QUESTIONS):
        rows = load_questions(path)
        assert [(r["id"], r["question"], r["answer"]) for r in rows] == [
            (q["id"], q["question"], "") for q in QUESTIONS], path.name
        assert rows[1]["gold_passage_ids"] == ["starter:acne-1"], path.name  # gold passages still count
    # An `answer` column left empty in every row (a spreadsheet export) is a file without answers too.
    blank = tmp_path / "blank.csv"
    blank.write_text("id,question,answer\nu1,What causes acne?,\nu2,What is eczema?,  \n", encoding="utf-8")
    assert [r["answer"] for r in load_questions(blank)] == ["", ""]
    # A file with answers everywhere loads as before.
    assert all(r["answer"] for r in load_questions(STARTER / "qa.jsonl"))


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
def test_a_file_mixing_rows_with_and_without_answers_is_refused_in_one_line(tmp_path, ext):
    records = [{**QUESTIONS[0], "answer": "Clogged follicles."}, QUESTIONS[1], QUESTIONS[2]]
    path = _write_all_formats(tmp_path, records)[["jsonl", "json", "csv", "parquet"].index(ext)]
    with pytest.raises(RagqaError) as err:
        load_questions(path)
    unit = {"jsonl": "line", "json": "item", "csv": "line", "parquet": "row"}[ext]
    first_without = 3 if ext == "csv" else 2  # a CSV counts its header line
    text = str(err.value)
    assert text.startswith(f"Q&A file {path} {unit} {first_without}: no 'answer', but {path} {unit} ") and (
        "(2 of 3 rows have none)" in text and "leave 'answer' out of every row" in text and "\n" not in text), text


def test_mixed_file_and_train_on_an_answerless_file_fail_in_one_line(tmp_path):
    answerless = tmp_path / "user-questions.jsonl"
    answerless.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({**QUESTIONS[0], "answer": "A."}) + "\n" + json.dumps(QUESTIONS[1]) + "\n",
                     encoding="utf-8")
    for args, needles in [
        (["eval", "--configs", "base", "--questions", str(mixed), "--output", str(tmp_path / "r")],
         [f"Q&A file {mixed} line 2: no 'answer', but {mixed} line 1 has one"]),
        # Training learns the answers: it still needs one in every row, with the error it always gave.
        (["train", "--data", str(answerless), "--output", str(tmp_path / "adapter"), "--set", "model.device=cpu",
          "--set", "train.context_k=0"],
         [f"Q&A file {answerless} line 1: 'answer' must be non-empty text (missing); fix or remove the row"]),
    ]:
        res = run_cli(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
        assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "adapter").exists()


def _reference_free_records() -> list[dict]:
    """30 questions x rag / rag+lora, no references: rag+lora clearly more faithful, equally abstaining."""
    records = []
    for q in range(30):
        for c, config in enumerate(("rag", "rag+lora")):
            abstained = q % 10 == 0
            scores = {"abstained": float(abstained)}
            if not abstained:
                scores.update({"nli_faithfulness": 0.4 + 0.3 * c + 0.01 * (q % 4), "cites": float(q % 3 != 0),
                               "echo_or_short": 0.0, "repetition": 0.0})
            records.append({"qid": f"q{q:02d}", "config": config, "question": f"Question {q}?", "reference": "",
                            "answer": f"Answer {q} [1].", "gold_passage_ids": [], "error": None,
                            "passages": [{"doc_id": "d1", "title": "T", "text": "passage"}],
                            "timings": {"total_s": 1.0 + c, "generate_s": 1.0, "retrieve_s": 0.01},
                            "scores": scores, "failures": {}})
    return records


def test_report_without_references_says_so_and_keeps_cis_on_the_reference_free_metrics(tmp_path):
    from ragqa.evaluate.report import write_report

    meta = {"question file": "user.jsonl (no reference answers)", "judge": "none", "nli_judge": "NLI judge t"}
    write_report(tmp_path, _reference_free_records(), ["rag", "rag+lora"], meta, seed=0, n_resamples=300,
                 references=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference_answers"] is False
    assert {"token_f1", "rouge_l", "bertscore", "ref_support", "ref_contradiction"} <= set(summary["skipped_metrics"])
    assert not {"token_f1_raw", "llm_context_recall"} & set(summary["skipped_metrics"])  # not checked, no judge
    assert not set(summary["skipped_metrics"]) & set(summary["metrics"])
    faithful = summary["metrics"]["nli_faithfulness"]["rag+lora"]
    assert faithful["n"] == 27 and faithful["low"] < faithful["mean"] < faithful["high"]
    assert summary["metrics"]["abstained"]["rag"]["mean"] == pytest.approx(0.1)
    comparison = summary["comparisons"]["nli_faithfulness"]["rag"]
    assert comparison["diff"] == pytest.approx(0.3) and comparison["p"] < 0.01 and comparison["n"] == 27
    assert summary["failure_modes"]["cites"]["rag"]["rate"] == pytest.approx(18 / 27, abs=1e-6)
    md = (tmp_path / "report.md").read_text()
    head = md.split("## Matrix")[0]
    assert "**No reference answers:**" in head and "Skipped as not applicable: `token_f1`, `rouge_l`" in head
    assert "| token_f1 | n/a | n/a | - |" in md and "| ref_support | n/a | n/a | - |" in md
    assert "`token_f1`: SQuAD-style token F1 vs the reference answer — not applicable" in md
    assert "| nli_faithfulness | 0.4" in md and "## Worst 5 answers per configuration (lowest nli_faithfulness)" in md
    assert "  - reference:" not in md  # no empty reference lines under the worst answers
    page = (tmp_path / "report.html").read_text()
    assert "<b>No reference answers:</b>" in page.split("<h2>")[0]


def test_a_run_with_references_reports_as_before(tmp_path):
    from ragqa.evaluate.report import write_report

    records = _reference_free_records()
    for r in records:
        r["reference"] = "The reference."
        r["scores"]["token_f1"] = 0.5
    write_report(tmp_path, records, ["rag", "rag+lora"], {"judge": "none"}, seed=0, n_resamples=300)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference_answers"] is True and summary["skipped_metrics"] == []
    md = (tmp_path / "report.md").read_text()
    assert "No reference answers" not in md and "(lowest token_f1)" in md and "  - reference: The reference." in md
