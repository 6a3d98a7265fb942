"""The adapter's card: ragqa_card.json (what ragqa reads back), README.md (the model card) and loss_curve.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragqa.adapters import CARD


def write_card(folder: Path, card: dict[str, Any]) -> None:
    """The card as JSON (ragqa.adapters.CARD) and as a Hugging Face model card (README.md) in `folder`."""
    (folder / CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    (folder / "README.md").write_text(model_card(card), encoding="utf-8")


def plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    """The training and validation loss per optimizer step, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train (answer tokens)")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(card: dict[str, Any]) -> str:
    m, cfg = card["metrics"], card["config"]
    t, lora = cfg["train"], cfg["lora"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return f"""---
library_name: peft
base_model: {card['base_model']}
tags: [ragqa, dermatology, {card['method']}, raft]
---
# ragqa adapter ({card['method']}) on {card['base_model']}

Trained by `ragqa train` to answer dermatology questions from retrieved passages with citations
(RAFT-style context: the gold passage among {t['context_k']} passages with probability {t['raft_gold_prob']}).
Research tool, not medical advice.

| | |
|---|---|
| method | {card['method']} (r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}) |
| data | {', '.join(card['data_hashes'])} |
| examples | {m['train_examples']} train, {m['val_examples']} validation scored ({len(card['split']['val'])} held out) |
| steps | {m['steps']} (lr {t['lr']}, batch {t['batch_size']} x accum {t['grad_accum']}, \
max_seq_len {t['max_seq_len']}) |
| optimizer | {card['optimizer'] or 'none (no training)'} |
| validation loss | {fmt(m['val_loss'])} (base model: {fmt(m['base_val_loss'])}) |
| wall time | {card['wall_time_s']} s on {card['device']}, peak RSS {card['peak_rss_mb']} MB |
| prompt template | {card['template_version']} |

Use: `ragqa ask "QUESTION" --adapter THIS_DIR`, or with plain peft:
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), THIS_DIR)`.
The held-out question ids are in `ragqa_card.json` (`split.val`); `ragqa eval` never scores training ids.
"""
