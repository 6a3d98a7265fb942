"""The ceiling of copying: token F1 of the gold passage's leading N words against the reference answer, on the
validation questions of the RAFT recipe's document-disjoint split. Prints JSON.

MedQuAD's reference answers are the passages themselves, so an answer that copies the gold passage's opening is
scored by how much of the reference it covers: this says what answer budget (ask.max_new_tokens,
train.target_tokens) can reach the token-F1 target at all, before any model runs.

    python benchmarks/extractive_ceiling.py [--config configs/smollm2-135m_lora-raft-derm_cpu.yaml] [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/smollm2-135m_lora-raft-derm_cpu.yaml"))
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--words", default="24,48,64,96,128,160,256")
    args = ap.parse_args()

    from ragqa.config import load_config
    from ragqa.evaluate.metrics import token_f1
    from ragqa.train.data import load_qa, split_rows

    cfg = load_config(args.config, [])
    t = cfg.train
    rows, _ = load_qa([str((ROOT / p) if not Path(p).is_absolute() else p) for p in t.data])
    _, val = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    val = sorted(random.Random(t.seed).sample(val, min(args.sample, len(val))), key=lambda r: r.id)
    lengths = sorted(len(r.answer.split()) for r in val)
    out = {"questions": len(val), "reference_words_median": lengths[len(lengths) // 2], "token_f1_by_words": {}}
    for n in (int(w) for w in args.words.split(",")):
        lead = [" ".join(r.answer.removeprefix("Key Points").split()[:n]) for r in val]
        out["token_f1_by_words"][n] = round(
            statistics.mean(token_f1(a, r.answer) for a, r in zip(lead, val, strict=True)), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
