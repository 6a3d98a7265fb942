"""The openvino engine (ask.engine, ragqa/engine.py): choice and fallback, cache keys, a damaged or stale cache
rebuilt, and the converted generator's greedy tokens against torch's."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import STARTER

from ragqa.engine import missing_packages

# Not importorskip: importing openvino here, outside ragqa.engine.no_telemetry, would send its usage telemetry.
pytestmark = pytest.mark.skipif(bool(missing_packages()),
                                reason="the openvino engine is not installed (pip install 'ragqa[fast]')")


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    """A RAGQA_CACHE of its own for converted models; the dequantized GGUF generator is shared with the usual
    cache (linked), so it is not converted again."""
    from ragqa.models import cache_dir

    before = os.environ.get("RAGQA_CACHE")
    real = cache_dir()
    path = tmp_path_factory.mktemp("ragqa-cache")
    (real / "models").mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(real / "models", target_is_directory=True)
    os.environ["RAGQA_CACHE"] = str(path)  # subprocesses (run_cli) inherit it
    yield path
    if before is None:
        os.environ.pop("RAGQA_CACHE", None)
    else:
        os.environ["RAGQA_CACHE"] = before


def _cfg(*overrides):
    from ragqa.config import load_config

    return load_config(None, ["model.device=cpu", "ask.threads=2", "ask.verify=false", *overrides])


# ------------------------------------------------------------------------------------ choice and fallback


def test_auto_falls_back_to_torch_with_one_line_when_openvino_is_missing(monkeypatch, capsys):
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
    pipe = Pipeline(_cfg("ask.engine=auto", "ask.max_new_tokens=4"))
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


# ------------------------------------------------------------------------------------ cache checks (tiny model)


@pytest.fixture(scope="module")
def tiny():
    """A real Llama with random weights, small enough to convert in seconds, on SmolLM2's vocabulary (so its
    tokenizer can feed it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragqa.models import load_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval(), load_tokenizer("smollm2-135m")


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


def test_damaged_or_stale_cache_is_detected_and_rebuilt(tiny, engine_cache, capsys):
    from ragqa.engine import MANIFEST, OpenVINOEngine, check_cache, weights_digest

    model, tokenizer = tiny
    cfg = _cfg("ask.engine=openvino", "ask.engine_weights=fp32")
    sha = weights_digest(model)
    engine = OpenVINOEngine(cfg, model, tokenizer, sha, None)
    generator = engine.variant(False)
    folder = generator.folder
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


# ------------------------------------------------------------------------------------ SmolLM2 against torch


def _rag_prompts(pipe, n=3):
    from ragqa.passage import Passage

    rows = [json.loads(line) for line in (STARTER / "passages.jsonl").read_text().splitlines() if line][:12]
    passages = [Passage(chunk_id=str(r.get("id", i)), doc_id=str(r.get("id", i)), title=r.get("title", ""),
                        text=r["text"], score=1.0) for i, r in enumerate(rows)]
    questions = ["How is scabies treated, and should my family be treated too?", "What causes acne?",
                 "Is psoriasis contagious?"]
    return [pipe.prompt_for(q, passages[3 * i:3 * i + 3], "hybrid") for i, q in enumerate(questions[:n])]


@pytest.mark.slow
def test_converted_smollm2_greedy_tokens_match_torch(engine_cache, capsys):
    """fp32 weights: exactly torch's greedy tokens, alone and in a left-padded batch (the export is faithful).
    int8 weights: given torch's own tokens so far, the int8 model picks torch's next token at >= 90% of the
    positions of 32-token RAG answers (free-running greedy answers part within a few tokens on this 135M model,
    as any weight rounding makes them: the eval matrix, not token identity, says whether answers got worse)."""
    import numpy as np
    import torch

    from ragqa.answer import Pipeline
    from ragqa.engine import no_telemetry
    from ragqa.evaluate.ablation import EvalConfig, answer_records

    with no_telemetry():
        import openvino as ov

    torch_pipe = Pipeline(_cfg("ask.engine=torch", "ask.max_new_tokens=24", "ask.static_cache=false"))
    ov_pipe = Pipeline(_cfg("ask.engine=openvino", "ask.engine_weights=fp32", "ask.max_new_tokens=24"))
    assert "converted smollm2-135m in" in capsys.readouterr().err
    prompts = _rag_prompts(torch_pipe)
    for prompt in prompts:
        assert ov_pipe._generate([prompt], False, None)[0][0] == torch_pipe._generate([prompt], False, None)[0][0]
    batch = ov_pipe._generate(prompts, False, None)
    assert [text for text, _ in batch] == [text for text, _ in torch_pipe._generate(prompts, False, None)]

    # eval's path generates with the engine (batched), and says so in its records
    records = answer_records(ov_pipe, [{"id": "q1", "question": "What causes acne?", "answer": "x"},
                                       {"id": "q2", "question": "Is psoriasis contagious?", "answer": "y"}],
                             EvalConfig("base", "none", False))
    assert [r["engine"] for r in records] == ["openvino", "openvino"] and all(r["answer"] for r in records)

    int8 = Pipeline(_cfg("ask.engine=openvino", "ask.engine_weights=int8"))
    folder = int8.engine.variant(False).folder
    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU",
                                       {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
    agree = total = 0
    for prompt in prompts:
        ids = torch_pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        enc = torch_pipe.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            # No repetition penalty here: each token is then the argmax of torch's logits, compared with int8's.
            out = torch_pipe.model.generate(**enc, max_new_tokens=32, do_sample=False, repetition_penalty=1.0,
                                            temperature=None, top_p=None, top_k=None,
                                            pad_token_id=torch_pipe.tokenizer.pad_token_id)
        seq = out[0].tolist()
        new = seq[len(ids):]
        request = compiled.create_infer_request()
        logits = request.infer({"input_ids": np.array([seq], dtype=np.int64),
                                "attention_mask": np.ones((1, len(seq)), dtype=np.int64),
                                "position_ids": np.arange(len(seq), dtype=np.int64)[None],
                                "beam_idx": np.zeros(1, dtype=np.int32)})["logits"][0]
        picked = logits[len(ids) - 1:len(seq) - 1].argmax(-1).tolist()
        agree += sum(a == b for a, b in zip(picked, new, strict=True))
        total += len(new)
    assert agree / total >= 0.9, f"int8 picked torch's token at {agree}/{total} positions"
