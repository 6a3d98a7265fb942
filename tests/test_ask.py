"""`ragqa ask` end to end on a starter index with the packaged model."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import STARTER, run_cli
from ragqa.errors import RagqaError


@pytest.fixture(scope="module")
def starter_index(tmp_path_factory):
    from ragqa.config import load_config
    from ragqa.index import ingest

    path = tmp_path_factory.mktemp("idx") / "starter"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{STARTER / 'passages.jsonl'}]"]))
    return path


@pytest.fixture(scope="module")
def pipeline(starter_index):
    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    # Retrieval, abstention and generation as such: unchecked, so a withdrawn answer cannot hide them (the check,
    # ask.verify, is tested in test_check.py).
    cfg = load_config(None, [f"index.name={starter_index}", "ask.max_new_tokens=48", "retrieval.k=3",
                             "ask.verify=false"])
    return Pipeline(cfg)


def test_one_shot_json(starter_index):
    # Asked to cite, the base model's greedy answer cites passage 1 (a plain "How is scabies treated?" gets an
    # answer without any citation, and the citation fields would go unchecked). Unchecked here: the check drops
    # that citing sentence ("The correct answer is: [1].") as unsupported; the checked run follows.
    question = "How is scabies treated? Cite the passage number in brackets, like [1]."
    res = run_cli("ask", question, "--index", str(starter_index), "--json", "--max-new-tokens", "40",
                  "--set", "ask.verify=false")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["answer"].strip() and data["checked_by"] is None
    assert len(data["passages"]) == 3
    assert any("scabies" in p["title"].lower() for p in data["passages"])
    assert all("dense" in p["scores"] for p in data["passages"])
    assert "[1]" in data["answer"] and [c["n"] for c in data["citations"]][:1] == [1], data
    for c in data["citations"]:  # each citation names the passage its number points at
        assert 1 <= c["n"] <= 3 and c["chunk_id"] == data["passages"][c["n"] - 1]["chunk_id"], c
    assert {"retrieve_s", "ttft_s", "tokens_per_s", "generate_s", "load_s"} <= set(data["timings"])
    assert data["disclaimer"] and "not medical advice" in data["disclaimer"]

    # Checked by default: every generated sentence with its verdict; the answer keeps the supported ones,
    # and is withdrawn when none is supported.
    res = run_cli("ask", question, "--index", str(starter_index), "--json", "--max-new-tokens", "40")
    assert res.returncode == 0, res.stderr
    checked = json.loads(res.stdout.strip().splitlines()[-1])
    assert checked["raw_answer"] == data["answer"]  # the same greedy answer, before the check
    assert checked["checked_by"] and checked["sentences"] and "verify_s" in checked["timings"]
    assert checked["abstained"] is not any(s["supported"] for s in checked["sentences"])
    if not checked["abstained"]:
        assert all(s["text"] in checked["answer"] for s in checked["sentences"] if s["supported"])
        assert not any(s["text"] in checked["answer"] for s in checked["sentences"] if not s["supported"])


def test_streaming_terminal_output_has_sources_and_disclaimer(starter_index):
    res = run_cli("ask", "What are the warning signs of melanoma?", "--index", str(starter_index),
                  "--max-new-tokens", "40")
    assert res.returncode == 0, res.stderr
    # The streamed answer comes first (the source titles also say "melanoma": it must be in the answer itself),
    # then the sources, then the disclaimer.
    answer, sources, rest = res.stdout.partition("Sources")
    assert sources and "not medical advice" in rest and "Melanoma: warning signs" in rest
    assert len(answer.split()) >= 10 and "melanoma" in answer.lower(), res.stdout


def test_off_topic_question_abstains(pipeline):
    ans = pipeline.answer("What is the capital of France?")
    assert ans.abstained and ans.citations == []
    assert ans.passages  # the nearest sources are still shown
    assert "generate_s" not in ans.timings  # the model was not asked to improvise


def test_in_domain_question_does_not_abstain(pipeline):
    ans = pipeline.answer("What causes cold sores?")
    assert not ans.abstained and ans.answer


def test_empty_retrieval_abstains(pipeline):
    assert pipeline.should_abstain([])


def test_closed_book_mode(pipeline):
    ans = pipeline.answer("What is psoriasis?", retrieval="none")
    assert ans.passages == [] and not ans.abstained and ans.answer


def test_second_question_has_no_load_cost(starter_index):
    from conftest import ROOT
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "ragqa", "ask", "--index", str(starter_index), "--json", "--max-new-tokens", "8"],
        input="What is rosacea?\n:k 2\nWhat is vitiligo?\n", capture_output=True, text=True, cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(line) for line in res.stdout.strip().splitlines())
    assert first["timings"]["load_s"] > 0.2
    assert second["timings"]["load_s"] == 0.0
    assert len(second["passages"]) == 2  # the :k command applied
    assert second["timings"]["total_s"] < first["timings"]["load_s"] + first["timings"]["total_s"]


def test_missing_index_says_what_to_run(tmp_path):
    res = run_cli("ask", "What is acne?", "--index", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert f"run `ragqa ingest --index {tmp_path / 'nope'}` first" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_an_index_left_in_its_crash_backup_is_accepted_as_the_retriever_reads_it(starter_index, tmp_path, embedder):
    """A writer killed between the two renames of its swap (files.atomic_dir) leaves the index only as
    `.NAME.old-PID`. The retriever reads that backup, so the early check of `ragqa ask` / `serve` must not refuse
    it (it once looked for NAME/manifest.json alone)."""
    from ragqa.ask import _check_index
    from ragqa.config import load_config
    from ragqa.retrieve import Retriever

    killed = subprocess.Popen([sys.executable, "-c", ""])
    killed.wait()  # a writer's PID that no longer runs
    path = tmp_path / "crashed"
    backup = tmp_path / f".crashed.old-{killed.pid}"
    shutil.copytree(starter_index, backup)
    assert not path.exists()

    _check_index(load_config(None, [f"index.name={path}"]))
    assert Retriever.load(path, embedder_model=embedder).path == backup

    (backup / "manifest.json").write_text("{", encoding="utf-8")  # damaged: refused before any model loads
    with pytest.raises(RagqaError, match="manifest.json is corrupted"):
        _check_index(load_config(None, [f"index.name={path}"]))


@pytest.mark.parametrize("question", ["", "   \n\t ", "\x01\x02\x1b"])
def test_empty_questions_are_refused(question):
    res = run_cli("ask", question, "--retrieval", "none")
    assert res.returncode == 2 and "question is empty" in res.stderr


def test_static_cache_gives_the_same_greedy_answer(pipeline, starter_index):
    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    assert pipeline.cfg.ask.static_cache  # the default
    plain = Pipeline(load_config(None, [f"index.name={starter_index}", "ask.max_new_tokens=48", "retrieval.k=3",
                                        "ask.static_cache=false", "ask.verify=false"]))
    question = "How is scabies treated?"
    static, dynamic = pipeline.answer(question), plain.answer(question)
    assert static.answer and static.answer == dynamic.answer
    assert static.timings["new_tokens"] == dynamic.timings["new_tokens"]


def test_int8_quantization_answers_with_int8_layers(starter_index):
    import torch

    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    pipe = Pipeline(load_config(None, [f"index.name={starter_index}", "ask.max_new_tokens=16", "retrieval.k=3",
                                       "ask.quantize=int8", "ask.verify=false"]))
    layer = pipe.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, torch.ao.nn.quantized.dynamic.Linear)
    ans = pipe.answer("What causes cold sores?")
    assert not ans.abstained and ans.answer and ans.timings["new_tokens"] > 0


def test_batch_answers_keep_order_abstain_and_match_single_answers(pipeline):
    questions = ["How is scabies treated?", "What is the capital of France?", "What causes cold sores?"]
    batch = pipeline.answer_batch(questions)
    assert [a.question for a in batch] == questions
    assert [a.abstained for a in batch] == [False, True, False]
    assert "generate_s" not in batch[1].timings  # the off-topic question never reached the model
    for ans in (batch[0], batch[2]):
        assert ans.timings["batch_size"] == 2 and 0 < ans.timings["new_tokens"] <= 48
    # Left padding and the attention mask keep each row's greedy answer the one it gets alone (fp32 here; other
    # float setups may round differently and drift late in an answer).
    assert batch[0].answer == pipeline.answer(questions[0]).answer
    assert batch[2].answer == pipeline.answer(questions[2]).answer
    with pytest.raises(ValueError, match="single question"):
        pipeline.answer_batch(questions, on_token=print)


def test_batch_streams_each_row_with_its_own_budget_and_stop(pipeline):
    """One generate call: row 0 streams with budget 6, row 1 is answered in one piece with budget 12, row 2's
    stop event is set once it has streamed two pieces (a client leaving); each row's tokens are its own."""
    import threading

    questions = ["How is scabies treated?", "What causes cold sores?", "How is psoriasis treated?"]
    streamed: list[list[str]] = [[], [], []]
    stop = threading.Event()

    def leave_after_two(piece: str) -> None:
        streamed[2].append(piece)
        if len(streamed[2]) == 2:
            stop.set()

    batch = pipeline.answer_batch(questions, on_token=[streamed[0].append, None, leave_after_two],
                                  max_new_tokens=[6, 12, 48], stops=[None, None, stop])
    assert [a.timings["batch_size"] for a in batch] == [3, 3, 3]
    assert batch[0].timings["new_tokens"] <= 6 and batch[1].timings["new_tokens"] <= 12
    assert 2 <= batch[2].timings["new_tokens"] <= 4, "stopped at the token after the event, not at 48"
    assert "".join(streamed[0]).strip() == batch[0].answer and streamed[1] == []
    assert batch[0].answer == pipeline.answer(questions[0], max_new_tokens=6).answer
    assert batch[1].answer == pipeline.answer(questions[1], max_new_tokens=12).answer
