"""`ragqa eval` end to end on a tmp starter index with the real models, and a SIGKILL mid-eval."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, STARTER, run_cli
from ragqa.evaluate.ablation import ResultsLog

pytestmark = pytest.mark.slow

# Short answers keep the real generator fast; the NLI judge is exercised in test_eval_metrics.
FAST = ["--set", "ask.max_new_tokens=12", "--nli-judge", "none", "--bootstrap", "300", "--quiet"]


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder):
    from ragqa.config import load_config
    from ragqa.index import ingest

    path = tmp_path_factory.mktemp("eval") / "starter-index"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{STARTER / 'passages.jsonl'}]"]), embedder)
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_end_to_end_and_rerun_is_identical(index, tmp_path):
    out = tmp_path / "report"
    args = ["eval", "--index", str(index), "--limit", "2", "--configs", "base,rag", "--output", str(out), *FAST]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "2 questions x 2 configurations" in first.stdout
    records = _lines(out / "results.jsonl")
    assert sorted((r["qid"], r["config"]) for r in records) == [
        ("starter-qa:1", "base"), ("starter-qa:1", "rag"), ("starter-qa:2", "base"), ("starter-qa:2", "rag")]
    for r in records:
        assert r["answer"] and r["timings"]["total_s"] > 0 and r["scores"]["token_f1"] is not None
        assert (r["passages"] == []) == (r["config"] == "base")
    rag = [r for r in records if r["config"] == "rag"]
    assert all(r["scores"]["context_recall"] == 1.0 for r in rag)  # starter gold passages are retrieved
    md = (out / "report.md").read_text()
    assert "| token_f1 |" in md and "| base | rag | winner |" in md
    assert "nli_judge: disabled" in md
    assert (out / "matrix.png").stat().st_size > 5000 and (out / "report.html").stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    # Checked answers (ask.verify, on by default) on the rag rows; correctness and failure modes on every row.
    for r in records:
        rag_row = r["config"] == "rag"
        assert (r["checked_by"] is not None) == rag_row and (r["raw_answer"] is not None) == rag_row
        assert ("token_f1_raw" in r["scores"]) == rag_row and ("withdrawn" in r["scores"]) == rag_row
        if not r["abstained"]:
            assert {"ref_support", "echo_or_short", "repetition"} <= set(r["scores"]) | set(r["failures"])
    assert set(summary["failure_modes"]) >= {"echo_or_short", "repetition"} or all(r["abstained"] for r in records)
    assert summary["checked_by"]["base"] == [] and summary["checked_by"]["rag"]
    assert "verify_s" in summary["latency"]["rag"] and "abstained" in summary["metrics"]
    assert "## Answer check" in md and "ref_scorer: " in md

    again = run_cli(*args)  # everything done: resumes to nothing, same seed gives the same numbers
    assert again.returncode == 0, again.stderr
    assert _lines(out / "results.jsonl") == records
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]


def test_rescore_judges_the_stored_answers_again_and_generates_nothing(index, tmp_path, tiny_judge):
    out = tmp_path / "report"
    args = ["eval", "--index", str(index), "--limit", "2", "--configs", "base,rag", "--output", str(out),
            "--set", "ask.max_new_tokens=12", "--bootstrap", "300", "--quiet"]
    refused = run_cli(*args, "--rescore")
    assert refused.returncode != 0 and "holds no eval results" in refused.stderr and not out.exists()
    assert run_cli(*args, "--nli-judge", "none").returncode == 0
    before = _lines(out / "results.jsonl")
    assert not any("nli_faithfulness_raw" in r["scores"] for r in before)

    res = run_cli(*args, "--nli-judge", str(tiny_judge), "--rescore")
    assert res.returncode == 0, res.stderr
    assert "2 questions x 2 configurations rescored" in res.stdout
    after = _lines(out / "results.jsonl")
    answers = lambda rows: [{k: v for k, v in r.items() if k not in ("scores", "failures")} for r in rows]  # noqa: E731
    assert answers(after) == answers(before)  # same answers, passages, checks and timings: nothing regenerated
    for r in after:
        judged = {*r["scores"], *r["failures"]}
        assert ("nli_faithfulness_raw" in judged) == (r["config"] == "rag")
        assert "lexical_faithfulness" not in judged and r["scores"]["token_f1"] is not None
    md = (out / "report.md").read_text()
    assert "nli_judge: disabled" not in md and "- scores: rescored" in md
    assert json.loads((out / "run.json").read_text())["nli_judge"] != "disabled (--nli-judge none)"

    more = run_cli(*[a if a != "2" else "3" for a in args], "--rescore")  # a question never answered
    assert more.returncode != 0 and "lacks 2 answers" in more.stderr
    other = run_cli(*args, "--set", "retrieval.k=2", "--rescore")
    assert other.returncode != 0 and "retrieval changed" in other.stderr
    assert _lines(out / "results.jsonl") == after  # refusals leave the report as it was


def test_recheck_equals_a_fresh_run_with_the_new_checker_and_generates_nothing(index, tmp_path, tiny_judge):
    out, fresh = tmp_path / "report", tmp_path / "fresh"
    args = ["eval", "--index", str(index), "--limit", "2", "--configs", "rag,base", "--set", "ask.max_new_tokens=12",
            "--bootstrap", "300", "--quiet", "--nli-judge", "none"]
    assert run_cli(*args, "--output", str(out), "--set", "judge.name=lexical").returncode == 0
    before = _lines(out / "results.jsonl")
    assert {r["checked_by"] for r in before if r["config"] == "rag"} == {"lexical"}

    judged = ["--set", f"judge.name={tiny_judge}"]
    res = run_cli(*args, "--output", str(out), *judged, "--recheck")
    assert res.returncode == 0, res.stderr
    assert "2 questions x 2 configurations rechecked and rescored" in res.stdout
    assert run_cli(*args, "--output", str(fresh), *judged).returncode == 0  # generated again, checked by the judge
    kept = ("qid", "config", "answer", "raw_answer", "sentences", "checked_by", "citations", "abstained", "passages")
    same = lambda rows: sorted([{k: r.get(k) for k in kept} for r in rows], key=lambda r: (r["qid"], r["config"]))  # noqa: E731
    rechecked = _lines(out / "results.jsonl")
    assert same(rechecked) == same(_lines(fresh / "results.jsonl"))
    assert {r["checked_by"] for r in rechecked if r["config"] == "rag"} == {Path(tiny_judge).name}
    assert [r["raw_answer"] for r in rechecked] == [r["raw_answer"] for r in before]  # nothing generated
    assert "- scores: rechecked by" in (out / "report.md").read_text()

    unchecked = tmp_path / "unchecked"
    assert run_cli(*args, "--output", str(unchecked), "--set", "ask.verify=false").returncode == 0
    refused = run_cli(*args, "--output", str(unchecked), "--set", "ask.verify=false", "--recheck")
    assert refused.returncode != 0 and "never checked" in refused.stderr


def test_eval_without_adapter_refuses_lora_rows(index, tmp_path):
    res = run_cli("eval", "--index", str(index), "--limit", "1", "--output", str(tmp_path / "o"), *FAST)
    assert res.returncode == 2 and "lora, rag+lora need an adapter" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_mid_eval_keeps_results_and_resume_completes(index, tmp_path, seed):
    out = tmp_path / "killed"
    results = out / "results.jsonl"
    # One answer per batch: a batch's records land together, so a larger batch would leave no gap to kill in.
    args = [sys.executable, "-m", "ragqa", "eval", "--index", str(index), "--limit", "2", "--configs",
            "base,rag", "--output", str(out), "--set", "eval.batch_size=1", *FAST]
    target = 1 + seed % 3  # seeds 0, 1, 2 kill after 1, 2, 3 of the 4 answers: every point between records
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= target:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = ResultsLog(results).records  # whole records kept; a line cut by the kill is dropped
    assert target - 1 <= len(kept) < 4
    assert not (out / "report.md").exists()  # the report is only written once the matrix is complete
    done = run_cli(*args[3:])
    assert done.returncode == 0, done.stderr
    keys = [(r["qid"], r["config"]) for r in _lines(results)]
    assert len(keys) == len(set(keys)) == 4
    assert json.loads((out / "summary.json").read_text())["answers"] == {"base": 2, "rag": 2}


def test_retrieval_only(index, tmp_path):
    out = tmp_path / "retrieval"
    res = run_cli("eval", "--retrieval-only", "--index", str(index), "--limit", "5", "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "retrieval.json").read_text())
    assert set(results) == {"dense", "bm25", "hybrid"}
    for metrics in results.values():
        assert metrics["n"] == 5 and 0.4 <= metrics["recall@1"] <= metrics["recall@3"] <= metrics["recall@10"]
    assert "| hybrid |" in (out / "retrieval.md").read_text()


def test_eval_without_reference_answers_scores_the_reference_free_metrics(index, tmp_path):
    """Issue #16: real user questions come without answers; eval scores them on what needs no reference."""
    questions = tmp_path / "user-questions.jsonl"
    starter = _lines(STARTER / "qa.jsonl")[:2]
    questions.write_text("".join(json.dumps({"id": q["id"], "question": q["question"]}) + "\n" for q in starter))
    out = tmp_path / "report"
    # No answer check (ask.verify): a withdrawn answer would leave nothing to score faithfulness on.
    res = run_cli("eval", "--index", str(index), "--questions", str(questions), "--configs", "base,rag",
                  "--output", str(out), "--set", "ask.verify=false", *FAST)
    assert res.returncode == 0, res.stderr
    assert "no reference answers: reference-free metrics only" in res.stdout
    records = _lines(out / "results.jsonl")
    assert len(records) == 4 and all(r["reference"] == "" for r in records)
    reference_metrics = {"token_f1", "rouge_l", "bertscore", "semantic_similarity", "string_similarity",
                         "contains_answer", "ref_support"}
    for r in records:
        assert not reference_metrics & (set(r["scores"]) | set(r["failures"])), r["scores"]
        assert "abstained" in r["scores"] and r["timings"]["total_s"] > 0
        if r["config"] == "rag" and not r["abstained"]:  # no NLI judge (--nli-judge none): the lexical scorer
            assert r["scores"]["lexical_faithfulness"] is not None and "cites" in r["scores"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference_answers"] is False and reference_metrics <= set(summary["skipped_metrics"])
    assert not reference_metrics & set(summary["metrics"])
    assert {"abstained", "lexical_faithfulness", "echo_or_short"} <= set(summary["metrics"])
    assert summary["metrics"]["lexical_faithfulness"]["rag"]["n"] >= 1
    assert summary["metrics"]["lexical_faithfulness"]["base"]["n"] == 0  # no passages, nothing to be faithful to
    assert summary["latency"]["rag"]["total_s"] > 0
    md = (out / "report.md").read_text()
    assert "**No reference answers:**" in md.split("## Matrix")[0] and "(no reference answers)" in md
    assert "| token_f1 | n/a | n/a | - |" in md and "| lexical_faithfulness |" in md and "| abstained |" in md
    assert "No reference answers" in (out / "report.html").read_text()
