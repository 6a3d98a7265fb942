"""The openvino engine (ask.engine, ragqa/engine.py): choice and fallback, cache keys, a damaged or stale cache
rebuilt, and the converted generator's greedy tokens against torch's.

The conversions here are of a tiny random model with SmolLM2-135M's configuration (conftest.tiny_smollm2): the
export, the stateful KV cache, the weight compression and the engine's generation loop are the same code for it as
for the real model, in seconds instead of minutes. The real SmolLM2's parity with torch is measured by
`python benchmarks/engine.py --quick` (fp32 and int8 rows, next_token_agreement)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest

from conftest import STARTER

from ragqa.engine import missing_packages

# Not importorskip: importing openvino here, outside ragqa.engine.no_telemetry, would send its usage telemetry.
pytestmark = pytest.mark.skipif(bool(missing_packages()),
                                reason="the openvino engine is not installed (pip install 'ragqa[fast]')")


@contextlib.contextmanager
def _engine_cache(path):
    """RAGQA_CACHE at `path` for converted models; the dequantized GGUF generator is shared with the usual cache
    (linked), so it is not converted again."""
    from ragqa.models import cache_dir

    before = os.environ.get("RAGQA_CACHE")
    real = cache_dir()
    (real / "models").mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(real / "models", target_is_directory=True)
    os.environ["RAGQA_CACHE"] = str(path)  # subprocesses (run_cli) inherit it
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("RAGQA_CACHE", None)
        else:
            os.environ["RAGQA_CACHE"] = before


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    with _engine_cache(tmp_path_factory.mktemp("ragqa-cache")) as path:
        yield path


def _cfg(*overrides, base=None):
    from ragqa.config import load_config

    return load_config(None, ["model.device=cpu", "ask.threads=2", "ask.verify=false",
                              *([f"model.base={base}"] if base else []), *overrides])


# ------------------------------------------------------------------------------------ choice and fallback


def test_auto_falls_back_to_torch_with_one_line_when_openvino_is_missing(tiny_smollm2, monkeypatch, capsys):
    from ragqa.answer import Pipeline
    from ragqa.engine import choose
    from ragqa.errors import RagqaError

    assert choose("auto", "cpu", "none") == ("openvino", None)
    assert choose("auto", "cuda", "none")[0] == "torch"
    monkeypatch.setitem(sys.modules, "openvino_genai", None)  # how Python marks a package as not importable
    engine, why = choose("auto", "cpu", "none")
    assert engine == "torch" and "openvino_genai not installed" in why and "pip install" in why
    with pytest.raises(RagqaError, match="ask.engine=openvino: openvino_genai not installed.*ask.engine=torch"):
        choose("openvino", "cpu", "none")
    pipe = Pipeline(_cfg("ask.engine=auto", "ask.max_new_tokens=4", base=tiny_smollm2))
    assert pipe.engine is None and pipe.engine_name == "torch"
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "ask.engine" in line] == [why]
    assert pipe.answer("What causes acne?", retrieval="none").engine == "torch"


def test_adapter_hash_changes_the_cache_key(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragqa.engine import adapter_digest, cache_folder, cache_key

    folders = []
    for seed in (0, 1):
        torch.manual_seed(0)  # the same base both times; the adapters differ
        base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2))
        torch.manual_seed(10 + seed)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="gaussian")
        get_peft_model(base, lora).save_pretrained(tmp_path / f"a{seed}")
        folders.append(tmp_path / f"a{seed}")
    first, second = (adapter_digest(f) for f in folders)
    assert first != second and adapter_digest(folders[0]) == first
    keys = [cache_key("b" * 64, None, "int8"), cache_key("b" * 64, first, "int8"), cache_key("b" * 64, second, "int8"),
            cache_key("b" * 64, first, "int4"), cache_key("c" * 64, first, "int8")]
    assert len({cache_folder(k) for k in keys}) == len(keys)
    assert cache_folder(cache_key("b" * 64, first, "int8")) == cache_folder(keys[1])


# ------------------------------------------------------------------------------------ greedy tokens against torch


def _rag_prompts(pipe, n=3):
    from ragqa.passage import Passage

    rows = [json.loads(line) for line in (STARTER / "passages.jsonl").read_text().splitlines() if line][:12]
    passages = [Passage(chunk_id=str(r.get("id", i)), doc_id=str(r.get("id", i)), title=r.get("title", ""),
                        text=r["text"], score=1.0) for i, r in enumerate(rows)]
    questions = ["How is scabies treated, and should my family be treated too?", "What causes acne?",
                 "Is psoriasis contagious?"]
    return [pipe.prompt_for(q, passages[3 * i:3 * i + 3], "hybrid") for i, q in enumerate(questions[:n])]


@pytest.fixture(scope="module")
def pipes(tiny_smollm2, engine_cache):
    """The tiny SmolLM2 on torch, and converted for the openvino engine with fp32 and int8 weights: each
    conversion done once for this module."""
    from ragqa.answer import Pipeline
    from ragqa.engine import OpenVINOGenerator

    common = ("ask.max_new_tokens=24", "ask.static_cache=false")
    pipes = {"torch": Pipeline(_cfg("ask.engine=torch", *common, base=tiny_smollm2))}
    for weights in ("fp32", "int8"):
        pipes[weights] = Pipeline(_cfg("ask.engine=openvino", f"ask.engine_weights={weights}", *common,
                                       base=tiny_smollm2))
        assert pipes[weights].engine.variant(False).conversion_s is not None  # converted here, not found cached
    # The fp32 conversion again, run by OpenVINO GenAI's stateful backend. On CPU, GenAI runs paged attention by
    # default, which replaces the exported KV cache and attention mask with its own; the stateful model (the
    # export's KV cache inputs and outputs, beam_idx and mask) is what it falls back to, and only this checks it.
    sdpa = Pipeline(_cfg("ask.engine=openvino", "ask.engine_weights=fp32", *common, base=tiny_smollm2))
    folder = sdpa.engine.variant(False).folder
    assert folder == pipes["fp32"].engine.variant(False).folder
    sdpa.engine.variants[False] = OpenVINOGenerator(folder, 2, "fp32", properties={"ATTENTION_BACKEND": "SDPA"})
    pipes["fp32-sdpa"] = sdpa
    return pipes


@pytest.fixture(scope="module")
def torch_answers(pipes):
    """Three RAG prompts of different lengths and torch's greedy answers to them: each alone, and as one batch."""
    ref = pipes["torch"]
    prompts = _rag_prompts(ref)
    assert len({len(ref.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}) == 3  # padded
    return prompts, [ref._generate([p], False, None)[0] for p in prompts], ref._generate(prompts, False, None)


@pytest.mark.parametrize("engine", ["fp32", "fp32-sdpa"])
def test_fp32_conversion_gives_torchs_greedy_tokens_alone_and_in_a_batch(pipes, torch_answers, engine):
    """fp32 weights: exactly torch's 24 greedy tokens (with the repetition penalty) on RAG prompts of different
    lengths, each alone and all three as one left-padded batch, on GenAI's default backend and on its stateful one:
    the export, its KV cache and the engine's decoding are faithful."""
    prompts, alone, batch = torch_answers
    for prompt, (want, want_timings) in zip(prompts, alone, strict=True):
        (text, timings), = pipes[engine]._generate([prompt], False, None)
        assert text == want and timings["new_tokens"] == want_timings["new_tokens"] == 24
    assert [text for text, _ in pipes[engine]._generate(prompts, False, None)] == [text for text, _ in batch]


def test_eval_generates_with_the_engine_and_records_it(pipes):
    from ragqa.evaluate.ablation import MatrixRow, answer_records

    records = answer_records(pipes["fp32"], [{"id": "q1", "question": "What causes acne?", "answer": "x"},
                                             {"id": "q2", "question": "Is psoriasis contagious?", "answer": "y"}],
                             MatrixRow("base", "none", False))
    assert [r["engine"] for r in records] == ["openvino", "openvino"] and all(r["answer"] for r in records)


def test_export_fuses_parallel_projections_and_int8_is_symmetric(pipes, tiny_smollm2):
    """Each layer's q/k/v projections are one MatMul and a split, and so are the MLP's gate and up (4 weighted
    MatMuls a layer instead of 7, plus the LM head; the fp32 test above checks the products are unchanged), and the
    int8 weights are signed with no zero point (symmetric: the CPU kernels skip the zero-point subtraction)."""
    from transformers import AutoConfig

    from ragqa.engine import no_telemetry

    with no_telemetry():
        import openvino as ov

    layers = AutoConfig.from_pretrained(tiny_smollm2).num_hidden_layers
    core = ov.Core()
    fp32 = core.read_model(str(pipes["fp32"].engine.variant(False).folder / "openvino_model.xml"))
    weighted = [op for op in fp32.get_ops() if op.get_type_name() == "MatMul"
                and op.input_value(1).get_node().get_type_name() == "Constant"]
    assert len(weighted) == 4 * layers + 1
    assert sorted(op.get_output_size() for op in fp32.get_ops() if op.get_type_name() == "VariadicSplit") \
        == [2] * layers + [3] * layers
    int8 = core.read_model(str(pipes["int8"].engine.variant(False).folder / "openvino_model.xml"))
    eight_bit = {op.get_output_element_type(0).get_type_name() for op in int8.get_ops()
                 if op.get_type_name() == "Constant" and op.get_output_element_type(0).bitwidth == 8}
    assert eight_bit == {"i8"}


def test_int8_conversion_picks_torchs_next_token(pipes):
    """int8 weights (nncf, symmetric per output channel): the weights are int8 (a quarter of fp32's bytes), and
    reading the same tokens, the int8 model's most likely next token is torch's at >= 85% of the ~2,500 positions
    of three RAG prompts (87.8% with openvino 2026.4 and nncf 3.4: this random model's top logits are close, so
    rounding flips more of them than on a trained model). Free-running greedy answers part within a few tokens
    under any weight rounding, so whole answers are not the measure. benchmarks/engine.py --quick measures the
    same on the real SmolLM2 (the old slow test asserted >= 90% there)."""
    import numpy as np
    import torch

    from ragqa.engine import no_telemetry

    with no_telemetry():
        import openvino as ov

    ref, int8 = pipes["torch"], pipes["int8"]
    folder, fp32 = int8.engine.variant(False).folder, pipes["fp32"].engine.variant(False).folder
    assert folder != fp32
    assert (folder / "openvino_model.bin").stat().st_size < 0.3 * (fp32 / "openvino_model.bin").stat().st_size
    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU",
                                       {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
    agree = total = 0
    for prompt in _rag_prompts(ref):
        ids = ref.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            want = ref.model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        logits = compiled.create_infer_request().infer({
            "input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32)})["logits"][0]
        agree += sum(a == b for a, b in zip(logits.argmax(-1).tolist(), want, strict=True))
        total += len(ids)
    assert total > 2000
    assert agree / total >= 0.85, f"int8 picked torch's token at {agree}/{total} positions"


# ------------------------------------------------------------------------------------ a damaged or stale cache


def _torch_greedy(model, ids, n):
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, repetition_penalty=1.1, pad_token_id=2,
                             temperature=None, top_p=None, top_k=None, eos_token_id=[2], min_new_tokens=n)
    return out[0, len(ids):].tolist()


def _ov_greedy(generator, ids, n):
    import numpy as np

    return generator.generate(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64),
                              max_new_tokens=n, eos={2}, repetition_penalty=1.1, temperature=0.0, seed=0)[0]


def test_damaged_or_stale_cache_is_detected_and_rebuilt(tiny_smollm2, tmp_path, capsys):
    from ragqa.engine import MANIFEST, OpenVINOEngine, check_cache, weights_digest
    from ragqa.models import load_generator

    model, tokenizer = load_generator(str(tiny_smollm2), "cpu")
    cfg = _cfg("ask.engine=openvino", "ask.engine_weights=fp32", base=tiny_smollm2)
    sha = weights_digest(model)
    with _engine_cache(tmp_path):  # a cache of its own: the module's conversions are not touched
        engine = OpenVINOEngine(cfg, model, tokenizer, sha, None)
        generator = engine.variant(False)
        folder = generator.folder
        assert folder.is_relative_to(tmp_path)
        assert generator.conversion_s is not None and check_cache(folder, engine.key(False)) is None
        assert "converted" in capsys.readouterr().err
        ids = tokenizer("Scabies is treated with permethrin cream.", add_special_tokens=False)["input_ids"]
        assert _ov_greedy(generator, ids, 12) == _torch_greedy(model, ids, 12)  # fp32: torch's greedy tokens

        again = OpenVINOEngine(cfg, model, tokenizer, sha, None).variant(False)  # cached: loaded, not converted
        assert again.folder == folder and again.conversion_s is None

        with open(folder / "openvino_model.bin", "r+b") as fh:  # damaged: same size, other bytes
            fh.seek(1000)
            fh.write(b"\xff" * 64)
        assert "damaged" in check_cache(folder, engine.key(False))
        rebuilt = OpenVINOEngine(cfg, model, tokenizer, sha, None).variant(False)
        assert rebuilt.conversion_s is not None and check_cache(folder, engine.key(False)) is None
        assert "not usable" in capsys.readouterr().err
        assert _ov_greedy(rebuilt, ids, 12) == _torch_greedy(model, ids, 12)

        manifest = json.loads((folder / MANIFEST).read_text())  # stale: made from other weights
        manifest["key"]["base_sha256"] = "0" * 64
        (folder / MANIFEST).write_text(json.dumps(manifest))
        assert "stale" in check_cache(folder, engine.key(False))
        assert OpenVINOEngine(cfg, model, tokenizer, sha, None).variant(False).conversion_s is not None
        (folder / "openvino_model.xml").unlink()  # a file missing
        assert "missing" in check_cache(folder, engine.key(False))
        assert OpenVINOEngine(cfg, model, tokenizer, sha, None).variant(False).conversion_s is not None
        assert check_cache(folder, engine.key(False)) is None
