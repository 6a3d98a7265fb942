"""`ragqa train`: data (split, masking, batching, cache), the loop (resume, checkpoints), adapters, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ragqa.config import load_config
from ragqa.errors import RagqaError
from ragqa.passage import Passage
from ragqa.prompt import encode_example, render_prompt

QA = str(ROOT / "corpora" / "starter" / "qa.jsonl")
# A tiny closed-book recipe: enough to exercise the whole loop in seconds per step on 2 cores.
TINY = ["train.context_k=0", "train.max_seq_len=64", "train.max_examples=6", "train.max_val_examples=3",
        "train.batch_size=2", "train.eval_every=2", "train.save_every=2", "model.device=cpu", f"train.data=[{QA}]"]


def tiny_cfg(output: Path, *extra: str):
    return load_config(None, [*TINY, f"train.output={output}", *extra])


@pytest.fixture(scope="session")
def tokenizer():
    from ragqa.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One 2-step LoRA run, shared by the adapter/export tests; keeps the trained model in memory."""
    from ragqa.train.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny") / "adapter"
    trainer = Trainer(tiny_cfg(out, "train.max_steps=2", "lora.r=4"), show_progress=False)
    result = trainer.run()
    return trainer, result, out


def _logits(model, tokenizer, text="Scabies is treated with permethrin cream."):
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# ---------------------------------------------------------------- prompt and data


def test_train_and_ask_render_the_same_prompt(tokenizer):
    import ragqa.answer

    passages = [Passage("d1#0", "d1", "Scabies is caused by a mite.", "Scabies")]
    enc = encode_example(tokenizer, "What causes scabies?", passages, "A mite [1].", max_len=512)
    prompt_ids = [i for i, label in zip(enc.input_ids, enc.labels, strict=True) if label == -100]
    assert prompt_ids == tokenizer(render_prompt(tokenizer, "What causes scabies?", passages),
                                   add_special_tokens=False)["input_ids"]
    assert ragqa.answer.render_prompt is render_prompt  # ask goes through the very same function


def test_labels_mask_the_prompt_and_keep_the_answer(tokenizer):
    from ragqa.train.data import collate

    enc = encode_example(tokenizer, "Is eczema contagious?", None, "No, eczema is not contagious.", max_len=256)
    n_prompt = enc.labels.index(next(label for label in enc.labels if label != -100))
    assert all(label == -100 for label in enc.labels[:n_prompt])
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert enc.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.labels[n_prompt:-1]).strip() == "No, eczema is not contagious."
    short = encode_example(tokenizer, "Q?", None, "A.", max_len=256)
    from ragqa.train.data import Example

    pair = [Example("a", enc.input_ids, enc.labels, False), Example("b", short.input_ids, short.labels, False)]
    batch = collate(pair, tokenizer.pad_token_id)
    n = len(short.input_ids)  # right padding: every row starts at position 0, padding after its end
    assert batch["input_ids"][1, :n].tolist() == short.input_ids
    assert batch["labels"][1, n:].tolist() == [-100] * (len(enc.input_ids) - n)
    first = min(n_prompt, short.labels.index(next(label for label in short.labels if label != -100)))
    assert batch["keep"] == len(enc.input_ids) - first + 1
    rounded = collate(pair, tokenizer.pad_token_id, multiple=64)  # the GPU's widths
    assert rounded["input_ids"].shape[1] % 64 == 0 and rounded["input_ids"].shape[1] - 64 < len(enc.input_ids)
    assert rounded["keep"] == rounded["input_ids"].shape[1] - first + 1
    assert (rounded["labels"][:, len(enc.input_ids):] == -100).all()


def test_answer_span_loss_equals_the_full_model_loss(generator, tokenizer):
    """Logits only on the answer span, right padding, no attention mask: the same loss as one row at a time."""
    import torch

    from ragqa.train.data import Example, collate
    from ragqa.train.trainer import Trainer

    model, _ = generator
    encs = [encode_example(tokenizer, q, None, a, max_len=256) for q, a in
            [("Is eczema contagious?", "No."), ("How is scabies treated?", "With permethrin cream, twice.")]]
    batch = collate([Example(str(i), e.input_ids, e.labels, False) for i, e in enumerate(encs)], tokenizer.pad_token_id)
    probe = Trainer(load_config(None, []))
    probe.model = model
    with torch.no_grad():
        _, ours = probe._micro_loss(batch, 1)
        expected = sum(model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss
                       * sum(label != -100 for label in e.labels[1:]) for e in encs)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-4)


def test_shared_prefix_gives_the_plain_loss_and_gradients(tokenizer):
    """The prefix all rows share runs once (a KV cache for the rest): same loss and LoRA gradients."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragqa.models import load_generator
    from ragqa.train.data import Example, collate
    from ragqa.train.trainer import Trainer

    passages = [Passage(f"d{i}#0", f"d{i}", text, title=f"Title {i}") for i, text in
                enumerate(["Scabies is caused by a mite and treated with permethrin.",
                           "Eczema is not contagious; emollients help."])]
    examples = [Example(str(i), e.input_ids, e.labels, False) for i, e in enumerate(
        encode_example(tokenizer, q, passages, a, max_len=256) for q, a in
        [("How is scabies treated?", "Permethrin [1]."), ("Is eczema contagious?", "No [2]."),
         ("What causes scabies?", "A mite that burrows into the skin [1].")])]
    model, _ = load_generator("smollm2-135m", device="cpu")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))  # nonzero B: every LoRA weight has a gradient
    model.eval()  # no dropout: the two paths must agree exactly
    probe = Trainer(load_config(None, []))
    probe.model = model
    results = []
    for share in (True, False):
        batch = collate(examples, tokenizer.pad_token_id, share_prefix=share)
        assert (batch["shared"] > 16) == share  # system prompt + template + passages' opening
        model.zero_grad()
        loss, loss_sum = probe._micro_loss(batch, 7)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss_sum.item(), grads))
    (shared_loss, shared_grads), (plain_loss, plain_grads) = results
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert shared_grads.keys() == plain_grads.keys() and len(plain_grads) == 30 * 3 * 2
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        # fp32 sums in another order: agreement relative to the tensor's largest entry
        assert (shared_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max(), name


def test_split_is_deterministic_and_disjoint():
    from ragqa.train.data import load_qa, split_rows

    rows, hashes = load_qa([QA])
    train_a, val_a = split_rows(rows, 0.15, seed=0)
    train_b, val_b = split_rows(list(reversed(rows)), 0.15, seed=0)
    assert [r.id for r in val_a] == [r.id for r in val_b]
    assert not {r.id for r in train_a} & {r.id for r in val_a}
    assert len(train_a) + len(val_a) == len(rows) == 123 and len(val_a) == 18
    assert [r.id for r in split_rows(rows, 0.15, seed=1)[1]] != [r.id for r in val_a]
    assert len(hashes[QA]) == 64


def test_length_grouped_batches_cover_each_example_once_and_cut_padding():
    import random

    from ragqa.train.data import length_grouped_batches

    lengths = [random.Random(i).randint(50, 500) for i in range(400)]
    batches = length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert batches == length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert batches != length_grouped_batches(lengths, 4, seed=0, epoch=1)

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    plain = length_grouped_batches(lengths, 4, seed=0, epoch=0, group=False)
    assert padded(batches) < 0.8 * padded(plain)
    assert padded(batches) < 1.05 * sum(lengths)


@pytest.mark.parametrize("bad, field", [
    ("train.method=qlora4", "train.method"), ("lora.r=0", "lora.r"),
    ("train.raft_gold_prob=1.5", "train.raft_gold_prob"),
    ("train.batch_size=-1", "train.batch_size"), ("train.nope=1", "train.nope"),
])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(RagqaError, match=field.replace(".", r"\.")):
        load_config(None, [bad])


def test_qa_file_errors(tmp_path):
    from ragqa.train.data import load_qa

    with pytest.raises(RagqaError, match="not found"):
        load_qa([str(tmp_path / "missing.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A."}\n{"question": "", "answer": "x"}\n')
    with pytest.raises(RagqaError, match="line 2: .question. must be non-empty text"):
        load_qa([str(bad)])


def test_tokenized_data_is_cached_and_rebuilt_on_request(tmp_path, tokenizer, capsys):
    from ragqa.train.data import build_data

    # The cache is content-addressed (shared ~/.cache/ragqa/train-data): use_cache=False forces a rebuild.
    cfg = tiny_cfg(tmp_path / "a")
    first = build_data(cfg, tokenizer, use_cache=False, show_progress=False)
    again = build_data(cfg, tokenizer, show_progress=False)
    assert not first.from_cache and again.from_cache
    assert [e.input_ids for e in again.train] == [e.input_ids for e in first.train]
    assert [e.labels for e in again.val] == [e.labels for e in first.val]
    longer = build_data(tiny_cfg(tmp_path / "a", "train.max_seq_len=80"), tokenizer, use_cache=False,
                        show_progress=False)
    assert longer.cache_key != first.cache_key
    assert len(first.train) == 6 and len(first.val) == 3 and len(first.split["val"]) == 18
    build_data(cfg, tokenizer, show_progress=True)  # the cap is said, also when the data comes from the cache
    assert "train.max_examples=6: training on a seeded 6 of 105 training questions" in capsys.readouterr().err


# ---------------------------------------------------------------- training runs


def test_tiny_run_writes_a_complete_adapter(tiny_run):
    _, result, out = tiny_run
    assert result.steps == 2 and result.output == out
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "ragqa_card.json", "README.md",
            "metrics.jsonl", "loss_curve.png", "tensorboard"} <= names
    card = json.loads((out / "ragqa_card.json").read_text())
    assert card["base_model"] == "smollm2-135m" and card["method"] == "lora"
    assert card["optimizer"] == "adamw" and "| optimizer | adamw |" in (out / "README.md").read_text()
    assert len(card["split"]["val"]) == 18 and not set(card["split"]["train"]) & set(card["split"]["val"])
    assert card["metrics"]["val_loss"] is not None and card["peak_rss_mb"] > 0 and card["wall_time_s"] > 0
    assert 0 < card["model_memory_mb"] < card["peak_rss_mb"]
    assert card["data_hashes"][QA] and card["template_version"]
    assert not (out.parent / "adapter.checkpoints").exists()  # cleaned after success
    assert any((out / "tensorboard").iterdir())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[-1]["step"] == 2 and records[-1]["val_loss"] is not None


def test_adapter_reload_gives_identical_logits(tiny_run, tokenizer):
    import torch
    from peft import PeftModel

    from ragqa.models import load_generator
    from ragqa.adapters import load_adapter

    trainer, _, out = tiny_run
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    expected = _logits(trained, tokenizer)
    ours = load_adapter(load_generator("smollm2-135m", device="cpu")[0], out, "smollm2-135m")
    plain = PeftModel.from_pretrained(load_generator("smollm2-135m", device="cpu")[0], str(out)).eval()
    assert torch.equal(_logits(ours, tokenizer), expected)
    assert torch.equal(_logits(plain, tokenizer), expected)
    with ours.disable_adapter():
        assert not torch.equal(_logits(ours, tokenizer), expected)  # the adapter did learn something


def test_merged_export_matches_adapter_logits(tiny_run, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ragqa.train.export import export_merged

    trainer, _, out = tiny_run
    expected = _logits(trainer.accelerator.unwrap_model(trainer.model).eval(), tokenizer)
    merged_dir = export_merged(out, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32, use_safetensors=True)
    assert (_logits(merged, tokenizer) - expected).abs().max().item() < 1e-4


def test_adapter_refusals(tiny_run, tmp_path):
    from ragqa.adapters import check_adapter_dir

    _, _, out = tiny_run
    with pytest.raises(RagqaError, match="not found"):
        check_adapter_dir(tmp_path / "missing", "smollm2-135m")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RagqaError, match="not an adapter directory"):
        check_adapter_dir(empty, "smollm2-135m")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(out / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(RagqaError, match="safetensors only"):
        check_adapter_dir(pickled, "smollm2-135m")
    other = tmp_path / "other"
    shutil.copytree(out, other)
    card = json.loads((other / "ragqa_card.json").read_text())
    card.update(base_model="Qwen/Qwen2.5-0.5B-Instruct", base_model_location="Qwen/Qwen2.5-0.5B-Instruct")
    (other / "ragqa_card.json").write_text(json.dumps(card))
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(RagqaError, match="trained on base model 'Qwen/Qwen2.5-0.5B-Instruct', not 'smollm2-135m'"):
        check_adapter_dir(other, "smollm2-135m")
    assert check_adapter_dir(out, "smollm2-135m")["r"] == 4


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_bitsandbytes_optimizer_steps_change_lora_weights_like_adamw(optim, tokenizer):
    """The same three steps from the same LoRA weights: bitsandbytes' update is AdamW's up to its 8-bit state."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragqa.models import load_generator
    from ragqa.train.trainer import make_optimizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if optim.startswith("paged_") and device != "cuda":
        pytest.skip("paged optimizers page their state through CUDA memory: GPU only (refused on CPU, see "
                    "test_paged_optimizer_on_cpu_is_refused_before_loading)")
    model, _ = load_generator("smollm2-135m", device=device, dtype="float32")
    torch.manual_seed(0)
    # Random B as well as A: both get gradients from the first step. r=16: A (16 x 576) and q_proj's B (576 x 16)
    # reach bitsandbytes' 4096-element minimum for 8-bit state; v_proj's B (192 x 16) keeps 32-bit state.
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    ids = tokenizer("Scabies is treated with permethrin cream applied from the neck down.",
                    return_tensors="pt")["input_ids"].to(device)
    updates = {}
    for name in ("adamw", optim):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        optimizer = make_optimizer(name, list(params.values()), lr=1e-3, weight_decay=0.01)
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        updates[name] = torch.cat([(p.detach() - start[n]).flatten() for n, p in params.items()]).cpu()
        if name != "adamw":
            kinds = {v.dtype for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)}
            assert (torch.uint8 in kinds) == optim.endswith("_8bit"), kinds  # 8-bit state where promised
    ours, reference = updates[optim], updates["adamw"]
    assert reference.norm() > 0.1  # three steps of lr 1e-3 on 0.5M weights: a real update to compare
    assert torch.nn.functional.cosine_similarity(ours, reference, dim=0) > 0.99
    assert (ours - reference).norm() / reference.norm() < 0.15


def test_paged_optimizer_on_cpu_is_refused_before_loading(tmp_path):
    out = tmp_path / "adapter"
    res = run_cli("train", "--set", "train.optim=paged_adamw_8bit", "--set", "model.device=cpu", "--output", str(out))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines == [
        "error: train.optim=paged_adamw_8bit: paged optimizers need a CUDA GPU (device is cpu); use "
        "train.optim=adamw_8bit on cpu"], res.stderr[-3000:]
    assert not out.exists()


def test_unknown_target_module_and_missing_checkpoint(tmp_path):
    from ragqa.train.trainer import train

    with pytest.raises(RagqaError, match="lora.target_modules"):
        train(tiny_cfg(tmp_path / "a", "train.max_steps=1", "lora.target_modules=[c_attn]"), show_progress=False)
    with pytest.raises(RagqaError, match="no checkpoint"):
        train(tiny_cfg(tmp_path / "b", "train.max_steps=1"), resume=True, show_progress=False)


@pytest.mark.slow
def test_resume_reaches_the_same_final_loss(tmp_path):
    from ragqa.train.trainer import checkpoint_root, latest_checkpoint, train

    extra = ("train.max_steps=4", "lora.r=4", "lora.dropout=0.1", "train.lr=1e-3")
    full = train(tiny_cfg(tmp_path / "full", *extra), show_progress=False)
    cfg = tiny_cfg(tmp_path / "cut", *extra)
    cut = train(cfg, show_progress=False, stop_after=3)
    assert cut.interrupted and cut.output is None
    ckpt = latest_checkpoint(checkpoint_root(cfg.train.output))
    assert ckpt is not None and ckpt.name == "step-0000003"
    resumed = train(cfg, resume=True, show_progress=False)
    assert resumed.steps == 4
    assert resumed.train_loss == pytest.approx(full.train_loss, abs=1e-5)
    assert resumed.val_loss == pytest.approx(full.val_loss, abs=1e-5)
    losses = lambda r: [h.get("loss") for h in r.history]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-5)


# ---------------------------------------------------------------- RAFT context from a real index


@pytest.fixture(scope="module")
def starter_index(tmp_path_factory):
    """The starter corpus ingested into a temporary index (module-wide, built once)."""
    from ragqa.index import ingest
    from ragqa.retrieve import Retriever

    path = tmp_path_factory.mktemp("index") / "starter"
    cfg = load_config(None, [f"index.name={path}", "model.device=cpu",
                             f"index.corpus=[{ROOT / 'corpora' / 'starter' / 'passages.jsonl'}]"])
    ingest(cfg)
    return str(path), Retriever.load(str(path), embedder="minilm", device="cpu")


def test_raft_mixing_rate_and_distractors(starter_index):
    from ragqa.train.data import load_qa, raft_context

    _, retriever = starter_index
    rows, _ = load_qa([QA])
    included, positions = [], set()
    for row in rows:
        passages, gold_at = raft_context(retriever, row, k=3, p=0.7, seed=0, mode="hybrid")
        assert len(passages) == 3
        gold_docs = [i for i, p in enumerate(passages) if p.doc_id in row.gold_ids]
        assert gold_docs == ([] if gold_at is None else [gold_at])  # distractors never come from the gold document
        positions.update(gold_docs)
        neighbours = {p.chunk_id for p in retriever.retrieve(row.question, k=11, mode="hybrid")}
        assert all(p.chunk_id in neighbours for p in passages if p.doc_id not in row.gold_ids)
        included.append(gold_at is not None)
    rate = sum(included) / len(included)
    assert abs(rate - 0.7) < 0.1, rate  # 123 draws: binomial sd 0.04
    assert positions == {0, 1, 2}  # the gold passage is not always first
    again = [raft_context(retriever, row, k=3, p=0.7, seed=0, mode="hybrid")[1] is not None for row in rows]
    assert again == included  # seeded: the same context every time
    assert [raft_context(retriever, r, k=3, p=0.0, seed=0, mode="hybrid")[1] for r in rows[:10]] == [None] * 10


def test_rows_without_gold_ids_use_the_chunk_retrieved_by_the_answer(starter_index):
    from ragqa.train.data import QARow, gold_passage

    _, retriever = starter_index
    row = QARow("x", "How do I get rid of scabies?", "Permethrin cream kills the scabies mites; treat close contacts.")
    gold = gold_passage(retriever, row, "hybrid")
    assert gold is not None and "scabies" in gold.doc_id
    assert gold.chunk_id == retriever.retrieve(row.answer, k=1, mode="hybrid")[0].chunk_id


def test_missing_index_tells_to_ingest(tmp_path, tokenizer):
    from ragqa.train.data import build_data

    cfg = load_config(None, [f"index.name={tmp_path / 'none'}", f"train.data=[{QA}]"])
    with pytest.raises(RagqaError, match="ragqa ingest"):
        build_data(cfg, tokenizer, show_progress=False)


@pytest.mark.slow
def test_qlora_with_raft_context_through_the_cli(tmp_path, starter_index):
    path, _ = starter_index
    out = tmp_path / "qlora"
    sets = [*TINY, "train.max_steps=2", "train.context_k=2", "train.max_seq_len=192", f"index.name={path}"]
    res = run_cli("train", "--config", "configs/smollm2-135m_qlora_cpu.yaml", "--output", str(out),
                  *[a for item in sets for a in ("--set", item)])
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads((out / "ragqa_card.json").read_text())
    assert card["method"] == "qlora" and card["metrics"]["steps"] == 2
    assert card["config"]["train"]["context_k"] == 2 and card["raft_gold_rate"] is not None
    assert (out / "adapter_model.safetensors").stat().st_size > 0 and "qlora run written to" in res.stdout


@pytest.mark.slow
def test_ctrl_c_and_sigkill_leave_a_resumable_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from ragqa.train.trainer import STATE_FILE, checkpoint_root, latest_checkpoint

    out = tmp_path / "adapter"
    root = checkpoint_root(out)
    recipe = ["train.max_steps=6", "train.save_every=1", "train.eval_every=100", "lora.r=4"]
    args = [sys.executable, "-m", "ragqa", "train", "--output", str(out),
            *[a for item in [*TINY, *recipe] for a in ("--set", item)]]

    def start_and_wait_for(step: int, resume: bool):
        # SIGINT back to its default in the child: a parent started in the background (`cmd &` without job
        # control, as some CI runners do) passes it down ignored, and Python then installs no Ctrl-C handler.
        proc = subprocess.Popen([*args, *(["--resume"] if resume else [])], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            ckpt = latest_checkpoint(root)
            if ckpt is not None and int(ckpt.name.split("-")[1]) >= step:
                return proc
            time.sleep(0.2)
        pytest.fail(f"no checkpoint >= {step}: {proc.communicate()[1][-1500:]}")

    proc = start_and_wait_for(1, resume=False)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: saves a checkpoint at the current step, exits 130
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "checkpoint saved" in err, err[-1500:]
    assert not out.exists()  # no half-written adapter
    proc = start_and_wait_for(latest_checkpoint(root).name and int(latest_checkpoint(root).name[5:]) + 1, True)
    proc.kill()  # SIGKILL, possibly in the middle of a checkpoint write
    proc.wait()
    ckpt = latest_checkpoint(root)
    assert load_file(str(ckpt / "adapter_model.safetensors"))  # the latest complete checkpoint is intact
    import torch

    assert "optimizer" in torch.load(ckpt / STATE_FILE, weights_only=True)
    res = run_cli(*args[3:], "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads((out / "ragqa_card.json").read_text())
    assert card["metrics"]["steps"] == 6 and not root.exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(7))  # every step exactly once across the three processes
    # The real Ctrl-C and SIGKILL cost nothing: the same losses as one uninterrupted run (the tolerance of
    # test_resume_reaches_the_same_final_loss), run the same way, as a `ragqa train` process (the pytest
    # process's own torch settings, e.g. its thread count, would change the last digits of every step).
    full_out = tmp_path / "full"
    res = run_cli(*[a if a != str(out) else str(full_out) for a in args[3:]])
    assert res.returncode == 0, res.stderr[-2000:]
    full = json.loads((full_out / "ragqa_card.json").read_text())["metrics"]
    full_records = [json.loads(line) for line in (full_out / "metrics.jsonl").read_text().splitlines()]
    assert card["metrics"]["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    assert card["metrics"]["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)
    assert [r.get("loss") for r in records] == pytest.approx([r.get("loss") for r in full_records], abs=1e-5)


def test_method_none_scores_the_base_and_is_not_an_adapter(tmp_path):
    from ragqa.adapters import check_adapter_dir
    from ragqa.train.trainer import train

    result = train(tiny_cfg(tmp_path / "base", "train.method=none"), show_progress=False)
    card = json.loads((result.output / "ragqa_card.json").read_text())
    assert card["method"] == "none" and card["metrics"]["val_loss"] == card["metrics"]["base_val_loss"] > 0
    assert not (result.output / "adapter_model.safetensors").exists()
    with pytest.raises(RagqaError, match="method=none"):
        check_adapter_dir(result.output, "smollm2-135m")


@pytest.mark.slow
def test_search_writes_a_loadable_best_recipe(tmp_path):
    from ragqa.train.search import run_search

    cfg = tiny_cfg(tmp_path / "adapter", "train.max_steps=2", "train.eval_every=1")
    best, path = run_search(cfg, 2, show_progress=False)
    assert path == tmp_path / "adapter.best.yaml" and best["trials"] == 2 and best["val_loss"] > 0
    loaded = load_config(path)
    assert loaded.train.lr == pytest.approx(best["train.lr"]) and loaded.lora.r == best["lora.r"]
    assert loaded.lora.alpha == best["lora.r"] * best["lora.alpha_over_r"]
    assert "best validation loss" in path.read_text().splitlines()[0]


# ---------------------------------------------------------------- multi-process (accelerate launch)


def test_launcher_accelerate_builds_the_launch_command(capsys):
    import sys

    from ragqa.cli import _command_line_args, main, train_cmd
    from ragqa.train.launch import accelerate_command

    ctx = train_cmd.make_context("train", ["--launcher", "accelerate", "--num-processes=4", "--config", "c.yaml",
                                           "--set", "train.lr=1e-4", "--resume", "--set=train.max_steps=2",
                                           "--data", "a b.jsonl", "--output", "out"])
    args = _command_line_args(ctx, skip={"launcher", "num_processes"})
    assert args == ["--config", "c.yaml", "--set", "train.lr=1e-4", "--set", "train.max_steps=2",
                    "--data", "a b.jsonl", "--output", "out", "--resume"]
    cmd = accelerate_command(args, 4)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("-m", 3):] == ["-m", "ragqa", "train", *args]
    assert "--multi_gpu" not in accelerate_command(args, 1)
    cpu = accelerate_command(args, 1, cpu=True)
    assert "--cpu" in cpu and "--multi_gpu" not in cpu
    for argv, message in [(["--num-processes", "2"], "needs --launcher accelerate"),
                          (["--launcher", "accelerate", "--num-processes", "2"], "need CUDA GPUs"),
                          (["--launcher", "accelerate", "--search", "2"], "--search")]:
        with pytest.raises(SystemExit) as exc:
            main(["train", "--set", "model.device=cpu", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_launcher_accelerate_single_process_writes_a_loadable_adapter(tmp_path):
    from ragqa.models import load_generator
    from ragqa.adapters import load_adapter

    out = tmp_path / "adapter"
    res = run_cli("train", "--launcher", "accelerate", "--num-processes", "1", "--output", str(out),
                  *[a for item in [*TINY, "train.max_steps=1", "lora.r=4"] for a in ("--set", item)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("lora run written to") == 1
    card = json.loads((out / "ragqa_card.json").read_text())
    assert card["metrics"]["steps"] == 1 and card["processes"] == 1
    model = load_adapter(load_generator("smollm2-135m", device="cpu")[0], out, "smollm2-135m")
    assert model.peft_config["default"].r == 4


@pytest.mark.slow
def test_two_processes_train_like_one_with_twice_the_accumulation(tmp_path):
    """torchrun (what `accelerate launch --multi_gpu` runs) with 2 CPU processes over gloo: each takes every
    other micro-batch, so 2 processes x grad_accum 1 take the same optimizer steps as 1 process x grad_accum 2,
    and only the main process writes the adapter and prints."""
    import os
    import subprocess
    import sys

    from ragqa.train.trainer import train

    extra = [*TINY, "train.max_steps=2", "lora.r=4", "lora.dropout=0", "train.eval_every=100"]
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ragqa",
                          "train", "--output", str(out), *[a for item in extra for a in ("--set", item)]],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("lora run written to") == 1
    single = train(tiny_cfg(tmp_path / "single", *extra[len(TINY):], "train.grad_accum=2"), show_progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in records] == pytest.approx([h.get("loss") for h in single.history], abs=1e-5)
    assert [r["tokens"] for r in records[1:]] == [h["tokens"] for h in single.history[1:]]
    card = json.loads((out / "ragqa_card.json").read_text())
    assert card["processes"] == 2 and card["metrics"]["val_loss"] == pytest.approx(single.val_loss, abs=1e-5)


@pytest.mark.slow
def test_qlora_with_bf16_compute_keeps_frozen_weights_in_bf16():
    """peft upcasts every non-4-bit weight to fp32; with bf16 compute the frozen ones go back to bf16."""
    import torch
    from peft import prepare_model_for_kbit_training

    from ragqa.models import load_generator
    from ragqa.train.trainer import _frozen_back_to_bf16

    model, tokenizer = load_generator("smollm2-135m", device="cpu", dtype="bfloat16", quantization="nf4")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    upcast = model.get_memory_footprint()
    assert torch.float32 in {p.dtype for p in model.parameters()}
    _frozen_back_to_bf16(model, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.uint8, torch.bfloat16}
    assert model.get_memory_footprint() < 0.7 * upcast
    ids = tokenizer("Scabies is", return_tensors="pt")
    assert model(**ids).logits.dtype == torch.bfloat16
