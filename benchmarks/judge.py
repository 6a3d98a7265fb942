"""How trustworthy and how fast is the faithfulness judge? Prints one JSON object.

    .venv/bin/python benchmarks/judge.py --judge judges/default [--snli-limit 1000] [--threads 2]

Measures (nothing here is ever trained or tuned on):
  snli_test       3-way accuracy on ../shared/data/nli/snli-test.jsonl (a seeded sample of --snli-limit pairs;
                  0 = all 9,824)
  domain_heldout  in-domain pairs (same generator as training, another seed) from the conditions the
                  training split held out: 3-way accuracy and ROC-AUC of P(entailment), supported vs not
  real_answers    answers labelled by rules (below), scored with support() against the gold passage plus
                  two passages of other conditions: ROC-AUC of faithfulness, and how often the supported
                  answer beats its own swapped twin
  speed           claims scored per second (support() over real_answers) with --threads torch threads

Rules for real_answers (held-out conditions only, in file order, until --n-answers items):
  supported   = the reference answer of a starter-corpus Q&A pair (written from its gold passage), or for
                MedQuAD dermatology questions the first two sentences of the gold passage (copied)
  unsupported = the same answer with one key fact swapped: the first sentence where a condition name,
                body site, number or polarity swap applies (tried in that order), the rest unchanged
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def snli_test(judge, path: Path, limit: int, seed: int) -> dict:
    from ragqa.judge.train import accuracy_auc, read_nli

    pairs = read_nli(path)
    if limit and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return accuracy_auc(judge, pairs)


def domain_heldout(judge, corpora: list[Path], holdout: float, limit: int, seed: int) -> dict:
    from ragqa.judge.pairs import load_docs, make_pairs, split_docs

    _, held = split_docs(load_docs(corpora), holdout)
    pairs = make_pairs(held, seed=seed, max_pairs=limit)
    from ragqa.judge.train import accuracy_auc

    out = accuracy_auc(judge, pairs)
    out["conditions"] = len({d.group for d in held})
    out["passages"] = len(held)
    return out


def answer_items(corpora: list[Path], holdout: float, n: int, seed: int) -> list[dict]:
    """Supported / swapped answer pairs built by the rules in the module docstring."""
    from ragqa.judge.pairs import SWAPS, apply_swap, condition_aliases, is_heldout, load_docs
    from ragqa.judge.text import split_sentences

    docs = load_docs(corpora)
    names = sorted({a for d in docs for a in condition_aliases(d.condition)})
    passages = {}
    for path in corpora:
        for row in _jsonl(path):
            if row.get("text") and row.get("dermatology") is not False:
                passages[row["id"]] = row
    rng = random.Random(seed)
    candidates = []
    starter_qa = ROOT / "corpora" / "starter" / "qa.jsonl"
    for row in _jsonl(starter_qa):
        candidates.append(("starter", row["answer"], row["gold_passage_ids"]))
    medquad_qa = SHARED / "medquad-derm-qa.jsonl"
    if medquad_qa.is_file():
        for row in _jsonl(medquad_qa):
            gold = [g for g in row["gold_passage_ids"] if g in passages]
            if gold:
                candidates.append(("medquad", " ".join(split_sentences(passages[gold[0]]["text"])[:2]), gold))
    items = []
    all_ids = sorted(passages)
    for source, answer, gold_ids in candidates:
        gold = [passages[g] for g in gold_ids if g in passages]
        if not gold:
            continue
        group = str(gold[0].get("condition") or gold[0].get("title")).lower()
        if not is_heldout(group, holdout):
            continue
        window = " ".join(p["text"] for p in gold)
        sentences = split_sentences(answer)
        swapped = None
        for i, sentence in enumerate(sentences):
            for kind in SWAPS:
                new = apply_swap(kind, sentence, window, names, random.Random(seed + i))
                if new is not None:
                    swapped = (" ".join([*sentences[:i], new, *sentences[i + 1:]]), kind)
                    break
            if swapped:
                break
        if swapped is None:
            continue
        distractors = []
        while len(distractors) < 2:
            other = passages[all_ids[rng.randrange(len(all_ids))]]
            if str(other.get("condition") or other.get("title")).lower() != group:
                distractors.append(other["text"])
        context = [p["text"] for p in gold] + distractors
        items.append({"source": source, "answer": answer, "swapped": swapped[0], "swap": swapped[1],
                      "passages": context})
        if len(items) * 2 >= n:
            break
    return items


def real_answers(judge, items: list[dict]) -> tuple[dict, dict]:
    from collections import Counter

    from sklearn.metrics import roc_auc_score

    scores, labels, wins, claims = [], [], 0, 0
    start = time.perf_counter()
    for item in items:
        good = judge.support(item["answer"], item["passages"])
        bad = judge.support(item["swapped"], item["passages"])
        scores += [good.faithfulness or 0.0, bad.faithfulness or 0.0]
        labels += [1, 0]
        wins += (good.faithfulness or 0.0) > (bad.faithfulness or 0.0)
        claims += len(good.claims) + len(bad.claims)
    seconds = time.perf_counter() - start
    quality = {
        "n": len(scores),
        "auc": float(roc_auc_score(labels, scores)) if items else None,
        "paired_win_rate": wins / len(items) if items else None,
        "mean_faithfulness_supported": sum(scores[0::2]) / len(items) if items else None,
        "mean_faithfulness_swapped": sum(scores[1::2]) / len(items) if items else None,
        "sources": dict(Counter(i["source"] for i in items)),
        "swaps": dict(Counter(i["swap"] for i in items)),
    }
    speed = {"claims": claims, "seconds": round(seconds, 2), "claims_per_second": claims / seconds if seconds else None,
             "eval_matrix_1200_answers_s_estimate": round(1200 * claims / len(scores) / (claims / seconds))
             if claims else None}
    return quality, speed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="judges/default", help="trained judge folder or name")
    parser.add_argument("--snli", default=str(SHARED / "nli" / "snli-test.jsonl"))
    parser.add_argument("--snli-limit", type=int, default=1000, help="seeded sample of SNLI test; 0 = all")
    parser.add_argument("--corpus", action="append", help="passages JSONL (repeatable); default starter + MedQuAD")
    parser.add_argument("--domain-limit", type=int, default=1000)
    parser.add_argument("--n-answers", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234, help="differs from the training seed (0)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from ragqa.judge import load_judge
    from ragqa.models import REGISTRY

    from ragqa.judge.registry import CARD, find_judge

    judge = load_judge(args.judge)
    card_path = (find_judge(args.judge) or Path(args.judge)) / CARD
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    holdout = card.get("recipe", {}).get("holdout_fraction", 0.2)
    corpora = [Path(c) for c in (args.corpus or [ROOT / "corpora/starter/passages.jsonl",
                                                 SHARED / "medquad-passages.jsonl"]) if Path(c).is_file()]
    load_before = os.getloadavg()[0]
    t0 = time.time()
    report: dict = {"judge": judge.name, "train": card.get("train"), "recipe": card.get("recipe"),
                    "threads": args.threads, "max_length": judge.max_length}
    if Path(args.snli).is_file():
        report["snli_test"] = snli_test(judge, Path(args.snli), args.snli_limit, args.seed)
    report["domain_heldout"] = domain_heldout(judge, corpora, holdout, args.domain_limit, args.seed)
    items = answer_items(corpora, holdout, args.n_answers, args.seed)
    report["real_answers"], report["speed"] = real_answers(judge, items)
    qwen = [n for n in REGISTRY if "qwen" in n.lower()]
    report["llm_agreement"] = "skipped: no Qwen2.5-Coder-1.5B in the model registry" if not qwen else \
        f"not measured: {qwen[0]} is registered but an LLM yes/no judge run is out of this benchmark's scope"
    report["targets"] = {"snli_test_accuracy>=0.75": report.get("snli_test", {}).get("accuracy", 0) >= 0.75,
                         "domain_auc>=0.90": report["domain_heldout"].get("auc_supported", 0) >= 0.90}
    report["seconds"] = round(time.time() - t0, 1)
    report["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
