"""Tune the query encoder (`ragqa query-encoder train`): the index's embedder, fine-tuned on the training questions
so that each lands nearest its gold passages' vectors AS THE INDEX HOLDS THEM.

Loss: for each question, a softmax over the cosines (divided by query_encoder.temperature) to ALL chunk vectors of
the index, with every chunk of the question's gold documents a positive (multi-positive: -log of their summed
probability) and every other chunk a negative. The passage vectors are a fixed matrix (no passage is re-embedded),
so a step costs one forward and backward pass of the questions plus one (batch x chunks) matmul: 28k MedQuAD
chunks fit in memory as 43 MB. AdamW, seeded. The questions and their split are the train section's (the RAFT
recipe's document-disjoint split), so no validation question is trained on. The result is a sentence-transformers
folder (safetensors) with a `query_encoder.json` card, written atomically.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

from ragqa import __version__
from ragqa.errors import RagqaError
from ragqa.files import atomic_dir, check_output_dir, write_json_atomic
from ragqa.query_tuning.registry import CARD

MODES = ("dense", "hybrid")
"""Card metrics: dense is what the tuned encoder changes directly; hybrid is what ask runs by default."""
CANDIDATES = 10


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console, transient=False)


def train_query_encoder(cfg, overwrite: bool = False, console=None) -> Path:
    """Train per `cfg.query_encoder` on the training questions of `cfg.train` against index `cfg.index.name`;
    return the folder written."""
    from rich.console import Console

    from ragqa.models import load_embedder, resolve_device
    from ragqa.query_tuning.model import weights_digest
    from ragqa.retrieve import Retriever
    from ragqa.qa import load_train_qa as load_qa
    from ragqa.qa import split_rows

    console = console or Console(stderr=True)
    q, t = cfg.query_encoder, cfg.train
    target = Path(q.output)
    check_output_dir(target, "query encoder", (CARD,), overwrite=overwrite)
    t0 = time.time()
    rows, hashes = load_qa(t.data)
    train_rows, val_rows = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    split_by = t.split_by if t.split_by != "auto" else ("document" if all(row.group for row in rows) else "question")
    device = resolve_device(cfg.model.device)
    # The BASE query encoder, whatever retrieval.query_encoder_weights says: training starts from the weights
    # that built the index, and "before" is measured with them.
    retriever = Retriever.load(cfg.index.name, embedder=cfg.model.embedder, device=device, query_encoder="torch",
                               rrf_k=cfg.retrieval.rrf_k, fusion_candidates=cfg.retrieval.fusion_candidates)
    positives = {row.id: [j for g in row.gold_ids for j in retriever.rows_of(g)] for row in train_rows}
    used = [row for row in train_rows if positives[row.id]]
    skipped = len(train_rows) - len(used)
    if q.max_questions and q.max_questions < len(used):
        used = sorted(random.Random(q.seed).sample(used, q.max_questions), key=lambda row: row.id)
    if not used:
        raise RagqaError(f"train.data {', '.join(t.data)}: no training question has gold_passage_ids naming a "
                         f"document of index {retriever.path}")
    console.print(f"query encoder data: {len(used)} training questions ({skipped} without a gold passage in the "
                  f"index), {len(retriever)} chunk vectors as the softmax; {len(val_rows)} validation questions "
                  "left out")

    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's convention
    from sentence_transformers.util import batch_to_device

    from ragqa.query_encoder import TorchQueryEncoder
    from ragqa.rerank.train import ranking_metrics

    built_with = retriever.manifest["embedder"]["name"]
    vectors = np.ascontiguousarray(retriever.store.vectors(), dtype=np.float32)
    vectors_sha = hashlib.sha256(vectors.tobytes()).hexdigest()
    matrix = torch.from_numpy(vectors).to(device)
    torch.manual_seed(q.seed)
    model = load_embedder(built_with, device)  # a copy to train: the retriever keeps the base for "before"
    base_digest = weights_digest(model)
    if base_digest != weights_digest(retriever.embedder):
        raise RagqaError(f"embedder '{built_with}' loaded twice gave different weights; cannot train reproducibly")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=q.lr, weight_decay=q.weight_decay)
    rng = random.Random(q.seed)
    order = list(used)
    steps_per_epoch = -(-len(order) // q.batch_size)
    losses: list[float] = []
    with atomic_dir(target) as tmp:  # created before training: a read-only or full folder fails early
        with _progress(console) as progress:
            task = progress.add_task("query encoder", total=q.epochs * steps_per_epoch, loss="")
            for epoch in range(q.epochs):
                rng.shuffle(order)
                epoch_losses = []
                for start in range(0, len(order), q.batch_size):
                    batch = order[start : start + q.batch_size]
                    features = batch_to_device(model.preprocess([row.question for row in batch]), device)
                    embedded = F.normalize(model(features)["sentence_embedding"], dim=-1)
                    logits = embedded @ matrix.T / q.temperature
                    gold = torch.zeros_like(logits, dtype=torch.bool)
                    for k, row in enumerate(batch):
                        gold[k, positives[row.id]] = True
                    loss = (torch.logsumexp(logits, dim=1)
                            - torch.logsumexp(logits.masked_fill(~gold, float("-inf")), dim=1)).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    epoch_losses.append(float(loss.detach()))
                    progress.update(task, advance=1, loss=f"epoch {epoch + 1}/{q.epochs} loss {epoch_losses[-1]:.3f}")
                losses.append(round(float(np.mean(epoch_losses)), 4))
        model.eval()
        seconds = round(time.time() - t0, 1)
        model.save(str(tmp), create_model_card=False, safe_serialization=True)
        metrics: dict = {}
        held = [row for row in val_rows if row.gold_ids]
        if q.eval_questions and held:
            held = sorted(random.Random(q.seed).sample(held, min(q.eval_questions, len(held))), key=lambda r: r.id)
            metrics = {"candidates": CANDIDATES, "n": len(held)}
            for mode in MODES:
                base = ranking_metrics(retriever, held, mode, CANDIDATES)
                retriever.query_encoder = TorchQueryEncoder(model)
                tuned = ranking_metrics(retriever, held, mode, CANDIDATES)
                retriever.query_encoder = TorchQueryEncoder(retriever.embedder)
                metrics[mode] = {"base": base, "tuned": tuned}
        # Tuning moves the questions' cosines, so the index's abstention cut (fitted with the base encoder at
        # ingest) no longer applies: calibrate this encoder's own, the same way (ragqa.abstain).
        from ragqa import abstain

        calibration = abstain.calibrate(lambda qs: model.encode(qs, normalize_embeddings=True), vectors,
                                        retriever.document_titles())
        card = {
            "name": target.name,
            "kind": "query_encoder",
            "ragqa_version": __version__,
            "base": {"embedder": built_with, "dim": retriever.manifest["embedder"]["dim"],
                     "weights_sha256": base_digest},
            "weights_sha256": weights_digest(model),
            "index": {"path": str(retriever.path), "manifest_checksum": retriever.manifest.get("checksum"),
                      "store": retriever.manifest.get("store", {}).get("backend", "faiss"), "chunks": len(retriever),
                      "vectors_sha256": vectors_sha},
            "recipe": q.model_dump(mode="json"),
            "data": {
                "qa": [{"path": path, "sha256": digest} for path, digest in hashes.items()],
                "split": {"by": split_by, "val_fraction": t.val_fraction, "seed": t.seed,
                          "train_questions": len(train_rows), "val_questions": len(val_rows),
                          "val_ids": sorted(row.id for row in val_rows)},
                "questions": len(used), "skipped_questions": skipped,
            },
            "metrics": {"validation": metrics},
            "abstention": calibration,
            "train": {"steps": q.epochs * steps_per_epoch, "epoch_loss": losses, "seconds": seconds,
                      "device": device, "threads": torch.get_num_threads()},
        }
        write_json_atomic(tmp / CARD, card, indent=2)
    if metrics:
        before, after = metrics["dense"]["base"], metrics["dense"]["tuned"]
        console.print(f"query encoder saved to {target}: dense validation recall@1 {before.get('recall@1', 0):.3f} -> "
                      f"{after.get('recall@1', 0):.3f}, MRR@10 {before.get('mrr@10', 0):.3f} -> "
                      f"{after.get('mrr@10', 0):.3f} on {metrics['n']} questions ({seconds:.0f} s training); use it "
                      f"with --set retrieval.query_encoder_weights={target}")
    else:
        console.print(f"query encoder saved to {target} ({seconds:.0f} s); use it with "
                      f"--set retrieval.query_encoder_weights={target}")
    if calibration is not None:
        console.print(f"abstention with it: below cosine {calibration['threshold']:.3f} (answers "
                      f"{calibration['answered_in_domain']:.0%} of {calibration['n_in_domain']} title questions, "
                      f"declines {calibration['declined_off_topic']:.0%} of {calibration['n_off_topic']} off-topic "
                      "ones; the index's own cut is for the base encoder)")
    return target
