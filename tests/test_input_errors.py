"""Issue #22: bad input ends in one line naming the file or field and the fix, a non-zero exit, and no
library noise on stderr; Q&A files go through one loader (ragqa.qa) for train, eval and retrieval-only eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ragqa.config import load_config
from ragqa.errors import RagqaError
from ragqa.qa import load_qa

STARTER_QA = ROOT / "corpora" / "starter" / "qa.jsonl"
LIBRARY_NOISE = ("Failed to load CPU gemm_4bit_forward", "is_gradient_checkpointing", "FutureWarning")


def _one_error_line(res, *needles: str) -> str:
    """The run failed with exit 2 and exactly one stderr line, `error: ...`, containing every needle."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Error:" not in lines[0].split(":", 2)[1]  # no bare exception type name (JSONDecodeError: ...)
    return lines[0]


# ---------------------------------------------------------------- Q&A files


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_bad_qa_files_are_one_line_in_train_eval_and_retrieval_eval(tmp_path):
    bad_json = _write(tmp_path / "bad.json", "{bad")
    bad_parquet = _write(tmp_path / "bad.parquet", b"garbage, not parquet")
    _one_error_line(run_cli("eval", "--configs", "base", "--questions", str(bad_json), "--output",
                            str(tmp_path / "r1")), str(bad_json), "line 1 column 2 is not valid JSON")
    _one_error_line(run_cli("eval", "--configs", "base", "--questions", str(bad_parquet), "--output",
                            str(tmp_path / "r2")), str(bad_parquet), "not a readable Parquet file")
    _one_error_line(run_cli("eval", "--retrieval-only", "--questions", str(bad_json), "--output",
                            str(tmp_path / "r3")), str(bad_json), "not valid JSON")
    _one_error_line(run_cli("train", "--data", str(bad_json), "--output", str(tmp_path / "adapter"),
                            "--set", "model.device=cpu", "--set", "train.context_k=0"),
                    str(bad_json), "not valid JSON")
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3", "adapter"))


@pytest.mark.parametrize("name, body, message", [
    ("dict.json", '{"question": "Q?", "answer": "A."}', "the file holds a JSON dict; a .json Q&A file is one list"),
    ("items.json", '[{"question": "Q?", "answer": "A."}, "text"]', "item 2 of the list is a JSON str"),
    ("jsonl.json", '{"question": "Q?", "answer": "A."}\n{"question": "Q2?", "answer": "B."}\n',
     "line 2 column 1 is not valid JSON (Extra data); fix it (one object a line is JSONL"),
    ("list.jsonl", '{"question": "Q?", "answer": "A."}\n[1, 2]\n', "line 2 is a JSON list, expected an object"),
    ("noanswer.jsonl", '{"question": "Q?"}\n', "line 1: 'answer' must be non-empty text (missing)"),
    ("number.jsonl", '{"question": 7, "answer": "A."}\n', "line 1: 'question' must be non-empty text (a int)"),
    ("gold.jsonl", '{"question": "Q?", "answer": "A.", "gold_passage_ids": {"a": 1}}\n',
     "line 1 (id gold:1): 'gold_passage_ids' must be a list of document ids"),
    ("badid.jsonl", '{"id": [1], "question": "Q?", "answer": "A."}\n', "line 1: 'id' must be text or a whole number"),
    ("dup.jsonl", '{"id": "a", "question": "Q?", "answer": "A."}\n\n{"id": "a", "question": "Q2?", "answer": "B."}\n',
     "line 3: id 'a' is already used by"),
    ("long.jsonl", '{"id": "q7", "question": "' + "itch " * 500 + '", "answer": "A."}\n',
     "line 1 (id q7): the question is 2499 characters; the limit is 2000 (ask.max_question_chars)"),
    ("latin1.jsonl", b'{"question": "caf\xe9?", "answer": "A."}\n', "line 1 is not valid UTF-8"),
    ("nocol.csv", "query,answer\nQ?,A.\n", "no column 'question' (columns: query, answer); a Q&A table needs"),
    ("qa.txt", "Q? A.", "unsupported file type '.txt'"),
])
def test_qa_loader_names_file_place_field_and_fix(tmp_path, name, body, message):
    path = _write(tmp_path / name, body)
    with pytest.raises(RagqaError) as err:
        load_qa([path])
    text = str(err.value)
    assert text.startswith(f"Q&A file {path}") and message in text and "\n" not in text, text


def test_qa_loader_reads_every_format_alike(tmp_path):
    import pandas as pd

    records = [{"id": "a", "question": " Q one? ", "answer": "A one.", "gold_passage_ids": "doc1"},
               {"id": 2, "question": "Q two?", "answer": "A two."}]
    _write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in records))
    _write(tmp_path / "qa.json", json.dumps(records))
    pd.DataFrame(records).to_csv(tmp_path / "qa.csv", index=False)
    pd.DataFrame(records).astype({"id": str}).to_parquet(tmp_path / "qa.parquet")
    for name in ("qa.jsonl", "qa.json", "qa.csv", "qa.parquet"):
        rows, _ = load_qa([tmp_path / name])
        assert [(r.id, r.question, r.answer, r.gold_ids) for r in rows] == [
            ("a", "Q one?", "A one.", ["doc1"]), ("2", "Q two?", "A two.", [])], name


def test_retrieval_only_rows_need_no_answer_and_skip_rows_without_gold(tmp_path):
    from ragqa.evaluate.retrieval import load_gold_rows

    path = _write(tmp_path / "gold.jsonl", '{"question": "Q?", "gold_passage_ids": ["d1"]}\n{"question": "Q2?"}\n')
    assert load_gold_rows(path) == [{"id": "gold:1", "question": "Q?", "gold_passage_ids": ["d1"]}]
    with pytest.raises(RagqaError, match="'question' must be non-empty text"):
        load_gold_rows(_write(tmp_path / "bad.jsonl", '{"gold_passage_ids": ["d1"]}\n'))


def test_eval_refuses_an_over_long_question_naming_file_and_id(tmp_path):
    path = _write(tmp_path / "q.jsonl", '{"id": "short", "question": "Q?", "answer": "A."}\n'
                                        '{"id": "huge", "question": "' + "x" * 2001 + '", "answer": "A."}\n')
    _one_error_line(run_cli("eval", "--configs", "base", "--questions", str(path), "--output", str(tmp_path / "r")),
                    f"Q&A file {path} line 2 (id huge): the question is 2001 characters; the limit is 2000")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- config bounds and devices


@pytest.mark.parametrize("override, field", [
    ("retrieval.abstain_below=nan", "retrieval.abstain_below"),
    ("retrieval.abstain_below=.nan", "retrieval.abstain_below"),
    ("retrieval.abstain_below=-5", "retrieval.abstain_below"),
    ("retrieval.abstain_below=1.5", "retrieval.abstain_below"),
    ("ask.temperature=inf", "ask.temperature"),
    ("ask.temperature=.inf", "ask.temperature"),
    ("train.lr=inf", "train.lr"),
    ("train.lr=2", "train.lr"),
    ("train.epochs=inf", "train.epochs"),
    ("train.max_grad_norm=inf", "train.max_grad_norm"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("judge.lr=inf", "judge.lr"),
    ("judge.epochs=inf", "judge.epochs"),
    ("ask.max_question_chars=0", "ask.max_question_chars"),
    ("model.device=banana", "model.device"),
    ("model.device=cuda:x", "model.device"),
])
def test_unbounded_or_non_finite_values_are_refused(override, field):
    with pytest.raises(RagqaError) as err:
        load_config(None, [override])
    assert f": {field}: " in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_valid_devices_and_bounds_still_load():
    cfg = load_config(None, ["model.device=cuda:1", "retrieval.abstain_below=-1", "ask.temperature=0.7"])
    assert (cfg.model.device, cfg.retrieval.abstain_below, cfg.ask.temperature) == ("cuda:1", -1.0, 0.7)
    assert all(math.isfinite(v) for v in (cfg.train.lr, cfg.judge.lr))
    for device in ("auto", "cpu", "cuda", "mps"):
        assert load_config(None, [f"model.device={device}"]).model.device == device


def test_device_error_names_the_field_and_accepted_values():
    line = _one_error_line(run_cli("ask", "--set", "model.device=banana", "--retrieval", "none", "Hi?"),
                           "model.device", "expected auto, cpu, cuda, cuda:N")
    assert "banana" in line


def test_a_gpu_that_is_not_there_is_one_line():
    from ragqa.models import resolve_device

    with pytest.raises(RagqaError, match=r"^model.device=cuda:99: .*use --set model.device=auto or cpu$"):
        resolve_device("cuda:99")
    assert resolve_device("cpu") == "cpu"


# ---------------------------------------------------------------- ask: questions, note, adapters, noise


def test_over_long_one_shot_question_is_refused_before_the_model_loads():
    _one_error_line(run_cli("ask", "--retrieval", "none", "itch " * 1000),
                    "the question is 4999 characters; the limit is 2000 (ask.max_question_chars)")


def test_piped_session_reports_a_long_question_continues_and_says_closed_book_once():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "ragqa", "ask", "--retrieval", "none", "--max-new-tokens", "2",
                          "--set", "model.device=cpu"], input="x" * 2500 + "\nWhat is acne?\n",
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        "error: the question is 2500 characters; the limit is 2000 (ask.max_question_chars): shorten it"]
    assert res.stdout.count("Answered from the model alone") == 1, res.stdout
    assert "not medical advice" in res.stdout  # the second question was answered


def _zero_lora_adapter(folder: Path) -> Path:
    """A real, loadable LoRA adapter for smollm2-135m (q_proj, r=1, zero weights), without training one."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ragqa.models import generator_dir

    base = generator_dir("smollm2-135m")
    config = json.loads((Path(base) / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj"], base_model_name_or_path=base,
               task_type="CAUSAL_LM").save_pretrained(folder)
    prefix = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
    save_file({**{prefix.format(i, "A"): torch.zeros(1, hidden) for i in range(layers)},
               **{prefix.format(i, "B"): torch.zeros(hidden, 1) for i in range(layers)}},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_damaged_adapter_weights_are_one_line_naming_the_file(tmp_path):
    adapter = _zero_lora_adapter(tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    for damage in (b"garbage", weights.read_bytes()[:-100]):
        weights.write_bytes(damage)
        _one_error_line(run_cli("ask", "--adapter", str(adapter), "--retrieval", "none", "--json", "What is acne?"),
                        f"{weights} is damaged or not a safetensors file: re-train or re-download")


def test_adapter_answer_prints_no_library_noise(tmp_path):
    """bitsandbytes' kernel-hub note and transformers' FutureWarning (via peft) are gone; the answer is not."""
    adapter = _zero_lora_adapter(tmp_path / "adapter")
    res = run_cli("ask", "--adapter", str(adapter), "--retrieval", "none", "--json", "--max-new-tokens", "2",
                  "--set", "model.device=cpu", "What is acne?")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["adapter"] == str(adapter)
    assert not any(noise in res.stderr for noise in LIBRARY_NOISE), res.stderr[-3000:]
