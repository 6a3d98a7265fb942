"""Several adapters (ragqa.adapters): weighted combination through peft add_weighted_adapter, `:adapter NAME|off`
switching without reloading the base, and the one-line refusals of bad combinations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ragqa.errors import RagqaError

TEXT = "Scabies is treated with permethrin cream."
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def lora_adapter(folder: Path, seed: int, r: int, targets: tuple[str, ...], scale: float = 0.05) -> Path:
    """A real LoRA adapter for smollm2-135m, written as peft writes one (adapter_config.json + safetensors),
    with seeded random A and B so that it changes the logits (scale 0: a zero update), without loading a model."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ragqa.models import generator_dir

    base = generator_dir("smollm2-135m")
    config = json.loads((Path(base) / "config.json").read_text())
    hidden = config["hidden_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    out_dim = {"q_proj": hidden, "v_proj": kv}
    LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), base_model_name_or_path=base,
               task_type="CAUSAL_LM").save_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(config["num_hidden_layers"]):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}.lora_"
            weights[prefix + "A.weight"] = torch.randn(r, hidden, generator=generator) * scale
            weights[prefix + "B.weight"] = torch.randn(out_dim[target], r, generator=generator) * scale
    save_file(weights, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two adapters of different ranks and target modules (so `cat` must combine unequal ranks)."""
    root = tmp_path_factory.mktemp("adapters")
    return (str(lora_adapter(root / "first", 1, 2, ("q_proj", "v_proj"))),
            str(lora_adapter(root / "second", 2, 4, ("q_proj",))))


def _logits(model, tokenizer):
    import torch

    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def references(adapters):
    """Logits of the base model and of each adapter alone, through plain peft on a base of their own."""
    import gc

    from peft import PeftModel

    from ragqa.models import load_generator

    model, tokenizer = load_generator("smollm2-135m", device="cpu")
    refs = {"base": _logits(model, tokenizer)}
    for name, path in zip(("first", "second"), adapters, strict=True):
        wrapped = PeftModel.from_pretrained(model, path).eval()
        refs[name] = _logits(wrapped, tokenizer)
        model = wrapped.unload()
    del model
    gc.collect()
    return refs


@pytest.fixture(scope="module")
def pipe(adapters, references):
    from ragqa.adapters import adapter_spec
    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    return Pipeline(load_config(None, ["model.device=cpu", "ask.verify=false"]), adapter_spec(adapters, "1,0"))


def _close(a, b) -> bool:
    return (a - b).abs().max().item() < 1e-4


def test_weights_one_and_zero_give_the_first_adapters_logits(pipe, adapters, references):
    first, second = adapters
    assert pipe.adapter == f"1*{first} + 0*{second}"
    assert pipe.model.active_adapter == "combined"
    # The adapters do change the logits, each its own way: the comparison below could not pass by accident.
    assert not _close(references["first"], references["base"]) and not _close(references["first"],
                                                                               references["second"])
    assert _close(_logits(pipe.model, pipe.tokenizer), references["first"])


def test_adapter_off_gives_the_base_logits_and_names_switch_back(pipe, adapters, references, tmp_path):
    first, second = adapters
    try:
        assert pipe.switch_adapter("off") is None
        assert _close(_logits(pipe.model, pipe.tokenizer), references["base"])
        assert pipe.answer("What is acne?", retrieval="none", max_new_tokens=2).adapter is None
        assert pipe.switch_adapter("second") == second  # a loaded adapter by its folder name
        assert _close(_logits(pipe.model, pipe.tokenizer), references["second"])
        assert pipe.answer("What is acne?", retrieval="none", max_new_tokens=2).adapter == second
        assert pipe.switch_adapter(first) == first  # ... or by its directory
        assert _close(_logits(pipe.model, pipe.tokenizer), references["first"])
        assert pipe.switch_adapter("combined") == pipe.adapter == f"1*{first} + 0*{second}"
        assert _close(_logits(pipe.model, pipe.tokenizer), references["first"])
        # A directory not loaded yet is loaded onto the same base (a zero update: the base's logits).
        zero = str(lora_adapter(tmp_path / "zero", 3, 2, ("q_proj",), scale=0.0))
        assert pipe.switch_adapter(zero) == zero
        assert _close(_logits(pipe.model, pipe.tokenizer), references["base"])
        with pytest.raises(RagqaError, match=r":adapter nope: no such adapter directory, and not a loaded adapter"):
            pipe.switch_adapter("nope")
    finally:
        pipe.switch_adapter("combined")


@pytest.mark.slow
def test_interactive_adapter_command_switches_between_questions(adapters):
    first, _ = adapters
    session = f"What is acne?\n:adapter off\nWhat is acne?\n:adapter {first}\nWhat is acne?\n"
    res = subprocess.run([sys.executable, "-m", "ragqa", "ask", "--adapter", first, "--retrieval", "none", "--json",
                          "--max-new-tokens", "4", "--set", "model.device=cpu"], input=session,
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    answers = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [a["adapter"] for a in answers] == [first, None, first]
    assert answers[2]["answer"] == answers[0]["answer"]
    assert answers[2]["timings"]["load_s"] == 0  # switched, not reloaded
    assert res.stderr.strip().splitlines() == ["answering with the base model (adapter off)",
                                               f"answering with adapter {first}"]


def _one_error_line(res, *needles: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_combinations_are_one_line(adapters, tmp_path):
    first, second = adapters
    _one_error_line(run_cli("ask", "What is acne?", "--adapter", first, "--adapter", second,
                            "--adapter-weights", "0.7,0.2,0.1", "--retrieval", "none"),
                    "--adapter-weights gives 3 weight(s) for 2 adapter(s): give one per --adapter")
    _one_error_line(run_cli("eval", "--adapter", first, "--adapter", second, "--adapter-weights", "0.7,x"),
                    "--adapter-weights 0.7,x: 'x' is not a finite number")
    other = tmp_path / "other-base"
    shutil.copytree(second, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": QWEN}))
    _one_error_line(run_cli("ask", "What is acne?", "--adapter", first, "--adapter", str(other), "--retrieval",
                            "none"),
                    f"adapter {other} was trained on base model '{QWEN}' and adapter {first} on 'smollm2-135m': "
                    "only adapters of one base model can be combined")
    out = tmp_path / "merged"
    _one_error_line(run_cli("export", first, str(other), "--merge", "--output", str(out)),
                    f"adapter {other} was trained on base model '{QWEN}'", "only adapters of one base model")
    assert not out.exists()


@pytest.mark.slow
def test_merged_export_of_a_combination_is_the_weighted_sum(adapters, tmp_path):
    """`cat` is exact: the merged weight is W + 0.7 dW_first + 0.3 dW_second, and the card says how it was made."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ragqa.models import generator_dir

    first, second = adapters
    out = tmp_path / "merged"
    res = run_cli("export", first, second, "--merge", "--adapter-weights", "0.7,0.3", "--output", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    name = "model.layers.3.self_attn.q_proj.weight"
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        merged = fh.get_tensor(name)
    with safe_open(str(Path(generator_dir("smollm2-135m")) / "model.safetensors"), framework="pt") as fh:
        expected = fh.get_tensor(name).float()
    for weight, path in ((0.7, first), (0.3, second)):
        lora = load_file(str(Path(path) / "adapter_model.safetensors"))
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        prefix = "base_model.model." + name.removesuffix(".weight") + ".lora_"
        expected += weight * config["lora_alpha"] / config["r"] * lora[prefix + "B.weight"] @ lora[prefix + "A.weight"]
    assert (merged.float() - expected).abs().max().item() < 1e-5
    card = json.loads((out / "ragqa_merged.json").read_text())
    assert card["merged_from"] == [first, second] and card["weights"] == [0.7, 0.3] and card["combination"] == "cat"
