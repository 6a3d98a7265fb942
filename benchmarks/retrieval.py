"""Retrieval latency, FAISS flat vs HNSW at scale, retrieval quality, an abstention threshold, and the vector
stores side by side. Prints JSON.

    .venv/bin/python benchmarks/retrieval.py                       # MedQuAD index (built if missing), 1M vectors
    .venv/bin/python benchmarks/retrieval.py --n 100000 --limit-qa 200 --queries 100   # quicker
    .venv/bin/python benchmarks/retrieval.py --index indexes/medquad --skip latency faiss quality abstain \
        --store faiss qdrant                                       # the stores alone (Qdrant local mode)
    .venv/bin/python benchmarks/retrieval.py --index indexes/medquad --skip latency faiss quality abstain \
        --config configs/smollm2-135m_lora-raft-derm_cpu.yaml --rerank default   # reranking alone (issue #16)
    ... --store faiss qdrant --store-url http://localhost:6333     # FAISS vs a Qdrant server

Parts (each can be skipped):
  latency   p50/p95 of Retriever.retrieve (query embedding + search) for dense, bm25, hybrid, with each query
            encoder (torch, onnx: the default on CPU). Target: hybrid p50 <= 20 ms at 16k passages on 2 cores.
  faiss     search alone over N synthetic 384-d normalized vectors (clustered, like sentence embeddings):
            flat (exact) vs HNSW, recall@10 of HNSW against flat for a few efSearch values (target >= 0.95).
  quality   recall@1/5/10 and MRR@10 on medquad-derm-qa.jsonl (gold passage ids) over all MedQuAD passages.
  abstain   best dense cosine of in-domain questions vs the shipped off-topic ones, on the MedQuAD index and on
            the starter index: the threshold that separates them best, and the rates the threshold calibrated at
            ingest (retrieval.abstain_below auto) gives them.
  rerank    (with --rerank NAME) on the validation questions of --config's train/validation split (train.data,
            split_by, val_fraction, seed: the adapter's and the reranker's held-out questions) with the recipe's
            retriever (its tuned query encoder): recall@1/3/5/10 and MRR@10 of dense, bm25 and hybrid, each without
            and with reranking the top retrieval.rerank_candidates (20); the p50/p95 latency of retrieval per mode
            without and with reranking and of the cross-encoder alone on 20 candidates (its backend: ONNX on CPU),
            interleaved question by question in the same run; and relevance-based abstention (the reranker card's
            calibrated cut): answered validation questions, declined off-topic ones (all, and the half its
            calibration was not fitted on), next to the cosine cut the run would use without a reranker.
            --rerank-backend onnx --rerank-backend onnx-int8 --rerank-backend openvino-int8 measures fp32 and the
            two int8 backends side by side (all of it);
            --rerank default --rerank small measures two rerankers (e.g. a shrunk one, rerank.layers) likewise.
            Targets (issue #16): reranked recall@1 >= 0.80, recall@3 >= 0.93, MRR@10 >= 0.85; <= 40 ms p50 added.
  stores    (with --store) the same index in each vector store (the others built from the first one's vectors,
            nothing embedded again): recall@10 and MRR@10 per mode, top-10 agreement with the first store, and
            p50/p95 query latency, the stores interleaved query by query. Needs no shared data on the starter
            corpus: --corpus corpora/starter/passages.jsonl --qa corpora/starter/qa.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))



def percentile(values, q) -> float:
    return round(float(np.percentile(values, q)), 2)


def ensure_index(name: str, corpus: str, embedder, text_field: str = "text") -> Path:
    from ragqa import index
    from ragqa.config import load_config

    cfg = load_config(None, [f"index.name={name}", f"index.corpus=[{corpus}]", f"index.text_field={text_field}"])
    return index.ingest(cfg, embedder=embedder)


def latency(retriever, questions: list[str]) -> dict:
    """p50/p95 per mode and per query encoder (torch, onnx), all interleaved query by query so that drift in
    machine speed (frequency, neighbours) lands on every variant alike instead of on whichever runs first."""
    from ragqa.passage import SEARCH_MODES
    from ragqa.query_encoder import load_query_encoder

    modes = SEARCH_MODES
    encoders = {backend: load_query_encoder(retriever.embedder, backend) for backend in ("torch", "onnx")}
    for q in questions[:20]:
        for encoder in encoders.values():
            retriever.query_encoder = encoder
            for mode in modes:
                retriever.retrieve(q, k=10, mode=mode)  # warm up
    times = {backend: {mode: [] for mode in (*modes, "embedding")} for backend in encoders}
    for q in questions:
        for backend, encoder in encoders.items():
            retriever.query_encoder = encoder
            for mode in modes:
                start = time.perf_counter()
                retriever.retrieve(q, k=10, mode=mode)
                times[backend][mode].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            encoder.embed(q)
            times[backend]["embedding"].append((time.perf_counter() - start) * 1000)
    out: dict = {}
    for backend, by_mode in times.items():
        out[backend] = {mode: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95), "queries": len(t)}
                        for mode, t in by_mode.items() if mode != "embedding"}
        out[backend]["query_embedding_p50_ms"] = percentile(by_mode["embedding"], 50)
    out["hybrid_p50_torch_over_onnx"] = round(out["torch"]["hybrid"]["p50_ms"] / out["onnx"]["hybrid"]["p50_ms"], 2)
    out["hybrid_target_p50_ms"] = 20
    out["default_query_encoder"] = "onnx (retrieval.query_encoder=auto on CPU)"
    return out


def synthetic(n: int, dim: int, seed: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors (sentence embeddings are clustered by topic, unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(16, n // 1000), dim)).astype(np.float32)
    def draw(m):
        x = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return draw(n), draw(queries)


def faiss_bench(n: int, dim: int = 384, queries: int = 200, m: int = 32, ef_construction: int = 80) -> dict:
    import faiss

    xb, xq = synthetic(n, dim, 0, queries)
    out: dict = {"n": n, "dim": dim, "queries": queries, "threads": faiss.omp_get_max_threads()}
    flat = faiss.IndexFlatIP(dim)
    flat.add(xb)
    start = time.perf_counter()
    _, truth = flat.search(xq, 10)
    out["flat"] = {"search_ms_per_query_batched": round((time.perf_counter() - start) * 1000 / queries, 3)}
    single = []
    for q in xq[:50]:
        start = time.perf_counter()
        flat.search(q[None, :], 10)
        single.append((time.perf_counter() - start) * 1000)
    out["flat"]["p50_ms_single_query"] = percentile(single, 50)
    hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    hnsw.add(xb)
    out["hnsw"] = {"M": m, "efConstruction": ef_construction, "build_s": round(time.perf_counter() - start, 1),
                   "by_ef_search": {}}
    for ef in (32, 64, 128, 256):
        hnsw.hnsw.efSearch = ef
        single = []
        found = np.empty_like(truth)
        for i, q in enumerate(xq):
            start = time.perf_counter()
            found[i] = hnsw.search(q[None, :], 10)[1][0]
            single.append((time.perf_counter() - start) * 1000)
        recall = np.mean([len(set(found[i]) & set(truth[i])) / 10 for i in range(queries)])
        out["hnsw"]["by_ef_search"][ef] = {"recall@10_vs_flat": round(float(recall), 4),
                                           "p50_ms_single_query": percentile(single, 50)}
    return out


def compare_stores(path: Path, stores: list[str], store_url: str | None, embedder, rows: list[dict],
                   queries: int) -> dict:
    """The index at `path` copied into each store (vectors reused), then quality, agreement and latency."""
    import shutil

    from ragqa import index
    from ragqa.config import load_config
    from ragqa.evaluate.retrieval import evaluate_retrieval
    from ragqa.retrieve import Retriever

    base = Retriever.load(path, embedder_model=embedder).manifest
    retrievers = {}
    for store in stores:
        target = path.parent / f"{path.name}-{store}"
        if not target.exists():
            shutil.copytree(path, target)
        extra = [f"index.store_url={store_url}"] if store == "qdrant" and store_url else []
        # Every setting as the index was built, so that only the store differs: its vectors are reused.
        settings, fields = base["settings"], base["fields"]
        cfg = load_config(None, [
            f"index.name={target}", f"index.corpus={json.dumps([c['spec'] for c in base['corpus']])}",
            f"model.embedder={settings['embedder']}", f"index.chunk_size={settings['chunk_size']}",
            f"index.chunk_overlap={settings['chunk_overlap']}", f"index.text_field={fields['text']}",
            f"index.id_field={fields['id']}", f"index.title_field={fields['title']}",
            f"index.max_doc_chars={fields['max_doc_chars']}", f"index.store={store}",
            f"index.index_type={base['index']['type']}", *extra])
        retrievers[store] = Retriever.load(index.ingest(cfg, embedder=embedder), embedder_model=embedder)
    questions = [r["question"] for r in rows]
    modes = ("dense", "hybrid")
    out: dict = {"chunks": len(next(iter(retrievers.values()))), "questions": len(rows)}
    first = stores[0]
    for store, r in retrievers.items():
        out[store] = {"quality": evaluate_retrieval(r, rows, modes=modes, ks=(1, 5, 10), progress=False)}
        if store != first:
            same = [[p.chunk_id for p in r.retrieve(q, k=10, mode="dense")]
                    == [p.chunk_id for p in retrievers[first].retrieve(q, k=10, mode="dense")] for q in questions]
            out[store][f"dense_top10_identical_to_{first}"] = round(float(np.mean(same)), 4)
    for q in questions[:20]:
        for r in retrievers.values():
            for mode in modes:
                r.retrieve(q, k=10, mode=mode)  # warm up
    times = {store: {mode: [] for mode in modes} for store in stores}
    for q in questions[:queries]:
        for store, r in retrievers.items():
            for mode in modes:
                start = time.perf_counter()
                r.retrieve(q, k=10, mode=mode)
                times[store][mode].append((time.perf_counter() - start) * 1000)
    for store in stores:
        out[store]["latency"] = {mode: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95), "queries": len(t)}
                                 for mode, t in times[store].items()}
        out[store]["store"] = retrievers[store].store.describe()
    for store in stores[1:]:
        out[store]["recall@10_minus_first"] = {
            mode: round(out[store]["quality"][mode]["recall@10"] - out[first]["quality"][mode]["recall@10"], 4)
            for mode in modes}
    return out


def validation_rows(config: str) -> list[dict]:
    """The validation questions (with gold ids) of a recipe's train/validation split, as load_gold_rows gives."""
    from ragqa.config import load_config
    from ragqa.qa import load_train_qa, split_rows

    t = load_config(config, []).train
    rows, _ = load_train_qa(t.data)
    _, val_rows = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    return [{"id": r.id, "question": r.question, "gold_passage_ids": r.gold_ids} for r in val_rows if r.gold_ids]


def rerank_bench(config: str, index: Path, names: list[str], queries: int, backends: list[str] | None = None) -> dict:
    """The rerank part (module docstring): quality, interleaved latency, relevance-based abstention, for each
    reranker of `names` on each of `backends` (retrieval.rerank_backend values; default the config's) side by side
    in one run. Keys of the reranked rows are MODE+rerank for the first variant and MODE+rerank[VARIANT] for the
    others, VARIANT being the backend (one reranker) or NAME/BACKEND (several)."""
    from ragqa import abstain
    from ragqa.abstain import off_topic_questions
    from ragqa.config import load_config
    from ragqa.evaluate.retrieval import evaluate_retrieval
    from ragqa.passage import SEARCH_MODES, search_mode
    from ragqa.rerank.calibrate import best_logits, off_topic_halves
    from ragqa.retrieve import Retriever

    cfg = load_config(config, [f"index.name={index}"])
    backends = backends or [cfg.retrieval.rerank_backend]
    retriever = Retriever.from_config(cfg)
    # One retriever per backend (it holds one reranker per name), shared by the rerankers on that backend.
    owners = {backend: retriever if backend == cfg.retrieval.rerank_backend else Retriever.from_config(
        load_config(config, [f"index.name={index}", f"retrieval.rerank_backend={backend}"])) for backend in backends}
    variants = [(name, backend) for name in names for backend in backends]
    rerankers = {v: (owners[v[1]], owners[v[1]].reranker(v[0])) for v in variants}  # (name, backend) -> both
    label = {v: (v[1] if len(names) == 1 else f"{v[0]}/{v[1]}") for v in variants}
    tag = {v: "+rerank" if i == 0 else f"+rerank[{label[v]}]" for i, v in enumerate(variants)}
    rows = validation_rows(config)
    n = retriever.rerank_candidates
    first_stage = search_mode(cfg.retrieval.mode)  # the reranker's, as in its training and calibration
    out: dict = {"config": config, "rerankers": {label[v]: {"reranker": v[0], "backend": r.backend, "layers":
                                                           r.model.model.config.num_hidden_layers,
                                                           "first_stage_temperature": r.first_stage_temperature}
                                                for v, (_, r) in rerankers.items()},
                 "candidates": n, "query_encoder_weights": cfg.retrieval.query_encoder_weights, "questions": len(rows),
                 "split": {"by": cfg.train.split_by, "val_fraction": cfg.train.val_fraction, "seed": cfg.train.seed}}
    quality: dict = {}
    for mode in SEARCH_MODES:
        quality.update(evaluate_retrieval(retriever, rows, modes=(mode,), ks=(1, 3, 5, 10), progress=False))
        for v, (own, _) in rerankers.items():
            scored = evaluate_retrieval(own, rows, modes=(mode,), ks=(1, 3, 5, 10), rerank=v[0], progress=False)
            quality[f"{mode}{tag[v]}"] = scored[f"{mode}+rerank"]
    out["quality"] = quality

    questions = [r["question"] for r in rows][:queries]
    for q in questions[:20]:  # warm up: ONNX sessions, BM25 and FAISS caches
        for mode in SEARCH_MODES:
            retriever.retrieve(q, k=10, mode=mode)
            for v, (own, _) in rerankers.items():
                own.retrieve(q, k=10, mode=mode, rerank=v[0])
    times: dict = {mode: [] for mode in SEARCH_MODES}
    for v in variants:
        times.update({f"{m}{tag[v]}": [] for m in SEARCH_MODES} | {f"rerank_alone[{label[v]}]": []})
    for q in questions:
        for mode in SEARCH_MODES:
            start = time.perf_counter()
            retriever.retrieve(q, k=10, mode=mode)
            times[mode].append((time.perf_counter() - start) * 1000)
            for v, (own, _) in rerankers.items():
                start = time.perf_counter()
                own.retrieve(q, k=10, mode=mode, rerank=v[0])
                times[f"{mode}{tag[v]}"].append((time.perf_counter() - start) * 1000)
        candidates = retriever.retrieve(q, k=n, mode=first_stage)
        for v, (_, model) in rerankers.items():
            start = time.perf_counter()
            model.rank_logits(q, candidates)
            times[f"rerank_alone[{label[v]}]"].append((time.perf_counter() - start) * 1000)
    latency = {key: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95), "queries": len(t)}
               for key, t in times.items()}
    latency["rerank_added_p50_ms"] = {
        f"{mode}{tag[v]}": round(latency[f"{mode}{tag[v]}"]["p50_ms"] - latency[mode]["p50_ms"], 2)
        for v in variants for mode in SEARCH_MODES}
    latency["rerank_added_target_p50_ms"] = 40
    latency["threads"] = {"onnxruntime": os.cpu_count(), "torch": __import__("torch").get_num_threads()}
    out["latency"] = latency

    cosine_cut = abstain.threshold(cfg.retrieval.abstain_below, retriever.manifest, retriever.query_card)
    validation_cosines = np.array(best_cosines(retriever, [r["question"] for r in rows]))
    off_topic_cosines = np.array(best_cosines(retriever, list(off_topic_questions())))
    cosine = {"threshold": cosine_cut,
              "answered_validation": round(float(np.mean(validation_cosines >= cosine_cut)), 4),
              "declined_off_topic": round(float(np.mean(off_topic_cosines < cosine_cut)), 4)}
    out["abstention"] = {"cosine_cut (without a reranker)": cosine}
    for v, (own, model) in rerankers.items():
        calibration = model.abstention
        key = f"relevance{tag[v].removeprefix('+rerank')}"
        out["abstention"][key] = None
        if calibration is None:
            continue

        def answered(questions, own=own, model=model, calibration=calibration) -> np.ndarray:
            logits = best_logits(own, model, questions, first_stage, n)
            return abstain.relevance(calibration, np.array(logits)) >= calibration["threshold"]

        fitted, held = off_topic_halves(cfg.rerank.seed)
        in_domain, off_fitted, off_held = (answered([r["question"] for r in rows]), answered(fitted), answered(held))
        out["abstention"][key] = {
            "threshold": calibration["threshold"], "scale": calibration["scale"], "bias": calibration["bias"],
            "answered_validation": round(float(np.mean(in_domain)), 4),
            "declined_off_topic_all": round(1 - float(np.mean(np.concatenate([off_fitted, off_held]))), 4),
            "declined_off_topic_fitted_half (in-sample)": round(1 - float(np.mean(off_fitted)), 4),
            "declined_off_topic_held_out_half": round(1 - float(np.mean(off_held)), 4),
            "n_off_topic": len(fitted) + len(held), "calibrated_on": calibration.get("in_domain")}
    return out


def best_cosines(retriever, questions: list[str]) -> list[float]:
    return [max(p.scores["dense"] for p in retriever.retrieve(q, k=1, mode="dense")) for q in questions]


def threshold(in_domain: list[float], off_topic: list[float], manifest: dict) -> dict:
    """The best split of real in-domain vs off-topic questions, the two score distributions, and what the
    threshold `ragqa ingest` calibrated for the index (from title questions, in the manifest) does to them."""
    from ragqa.abstain import best_split

    calibrated = manifest.get("abstention") or {}
    cut = calibrated.get("threshold")
    return {
        "calibrated_at_ingest": None if cut is None else {
            "threshold": cut, "answered_in_domain": round(float(np.mean(np.array(in_domain) >= cut)), 3),
            "declined_off_topic": round(float(np.mean(np.array(off_topic) < cut)), 3)},
        "in_domain": {"n": len(in_domain), "min": round(min(in_domain), 3), "p05": percentile(in_domain, 5),
                      "p50": percentile(in_domain, 50)},
        "off_topic": {"n": len(off_topic), "p50": percentile(off_topic, 50), "p95": percentile(off_topic, 95),
                      "max": round(max(off_topic), 3)},
        **best_split(in_domain, off_topic),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=None, help="MedQuAD index dir, built if missing (default: a temp dir)")
    parser.add_argument("--corpus", default=str(SHARED / "medquad-passages.jsonl"))
    parser.add_argument("--qa", default=str(SHARED / "medquad-derm-qa.jsonl"))
    parser.add_argument("--limit-qa", type=int, help="use only the first N Q&A rows for quality")
    parser.add_argument("--queries", type=int, default=200, help="questions timed per mode")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors for flat vs HNSW")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "faiss", "quality", "abstain"])
    parser.add_argument("--config", help="recipe for the rerank part: its retriever (tuned query encoder) and the "
                                         "validation questions of its train/validation split")
    parser.add_argument("--rerank", action="append", help="a trained reranker (name or folder): adds the rerank "
                        "part (needs --config); repeat it to measure several side by side")
    parser.add_argument("--rerank-backend", action="append",
                        choices=["auto", "onnx", "onnx-int8", "openvino-int8", "torch"],
                        help="retrieval.rerank_backend to measure; repeat it to measure several side by side "
                             "(default: the config's)")
    parser.add_argument("--store", nargs="*", default=[], choices=["faiss", "qdrant"],
                        help="compare these vector stores on the --index (the first is the reference)")
    parser.add_argument("--store-url", help="a Qdrant server for --store qdrant (default: Qdrant local mode)")
    parser.add_argument("--abstain-on", nargs="*", default=["medquad", "starter"], choices=["medquad", "starter"],
                        help="indexes of the abstain part (starter alone needs no MedQuAD index)")
    args = parser.parse_args()
    if args.rerank and not args.config:
        parser.error("--rerank needs --config (the recipe whose validation questions and retriever it uses)")

    from ragqa.abstain import off_topic_questions
    from ragqa.evaluate.retrieval import evaluate_retrieval, format_table, load_gold_rows
    from ragqa.models import load_embedder
    from ragqa.retrieve import Retriever

    result: dict = {"cpu_count": os.cpu_count()}
    if "faiss" not in args.skip:
        result["faiss"] = faiss_bench(args.n)
    needs_medquad = {"latency", "quality"} - set(args.skip) or ("abstain" not in args.skip
                                                                  and "medquad" in args.abstain_on) or args.store \
        or args.rerank
    if needs_medquad or ("abstain" not in args.skip and "starter" in args.abstain_on):
        embedder = load_embedder("minilm", "auto")
        with tempfile.TemporaryDirectory(prefix="ragqa-bench-retrieval-") as tmp:
            if needs_medquad:
                path = Path(args.index) if args.index else Path(tmp) / "medquad"
                # An existing index is used as it is (it may be shared with other runs: never re-ingested here).
                built = path if (path / "manifest.json").is_file() else ensure_index(str(path), args.corpus, embedder)
                retriever = Retriever.load(built, embedder_model=embedder)
                result["index"] = {"path": str(path), "chunks": len(retriever),
                                   "documents": retriever.manifest["counts"]["documents"]}
                rows = load_gold_rows(args.qa, args.limit_qa)
                questions = [r["question"] for r in rows]
                if "latency" not in args.skip:
                    result["latency"] = latency(retriever, questions[: args.queries])
                if "quality" not in args.skip:
                    result["quality"] = evaluate_retrieval(retriever, rows)
                    print(format_table(result["quality"]), file=sys.stderr)
                if args.rerank:
                    result["rerank"] = rerank_bench(args.config, path, args.rerank, args.queries,
                                                    args.rerank_backend)
                if args.store:
                    result["stores"] = compare_stores(path, args.store, args.store_url, embedder, rows, args.queries)
                if "abstain" not in args.skip and "medquad" in args.abstain_on:
                    result.setdefault("abstain", {})["medquad"] = threshold(
                        best_cosines(retriever, questions[:300]), best_cosines(retriever, off_topic_questions()),
                        retriever.manifest)
            if "abstain" not in args.skip and "starter" in args.abstain_on:
                starter = Retriever.load(ensure_index(str(Path(tmp) / "starter"),
                                                      str(ROOT / "corpora/starter/passages.jsonl"), embedder),
                                         embedder_model=embedder)
                starter_q = [r["question"] for r in load_gold_rows(ROOT / "corpora/starter/qa.jsonl")]
                result.setdefault("abstain", {})["starter"] = threshold(
                    best_cosines(starter, starter_q), best_cosines(starter, off_topic_questions()), starter.manifest)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
