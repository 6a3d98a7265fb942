"""Ingest cost vs the bare embedding cost of the same chunks (same model, same run). Prints JSON.

    .venv/bin/python benchmarks/ingest.py                 # all 16,407 MedQuAD passages (several CPU minutes)
    .venv/bin/python benchmarks/ingest.py --limit 500     # quick check

Target: ingest_s / bare_encode_s <= 1.15. ingest_s is everything `ragqa ingest` does with the embedder
already loaded (read, chunk, embed, FAISS + BM25 build, write, checksums, atomic swap); the model load is
reported apart (model_load_s) since it is the same fixed cost for both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/data/medquad-passages.jsonl"))
    parser.add_argument("--limit", type=int, help="use only the first N records")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from ragqa import index
    from ragqa.config import load_config
    from ragqa.models import load_embedder

    with tempfile.TemporaryDirectory(prefix="ragqa-bench-ingest-") as tmp:
        corpus = Path(args.corpus)
        if args.limit:
            corpus = Path(tmp) / "corpus.jsonl"
            with open(args.corpus, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
                for n, line in enumerate(src):
                    if n >= args.limit:
                        break
                    dst.write(line)
        start = time.perf_counter()
        model = load_embedder(args.embedder, args.device)
        model.encode(["warm up"] * 8, batch_size=8)
        model_load_s = time.perf_counter() - start

        cfg = load_config(None, [f"index.name={Path(tmp) / 'idx'}", f"index.corpus=[{corpus}]",
                                 f"model.embedder={args.embedder}", f"index.index_type={args.index_type}",
                                 f"index.embed_batch_size={args.batch_size}"])
        start = time.perf_counter()
        path = index.ingest(cfg, embedder=model)
        ingest_s = time.perf_counter() - start

        texts = [json.loads(line)["embed_text"] for line in open(path / index.CHUNKS_FILE, encoding="utf-8")]
        start = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
        bare_s = time.perf_counter() - start

        manifest = json.loads((path / index.MANIFEST).read_text())
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(json.dumps({
            "corpus": args.corpus, "limit": args.limit, "documents": manifest["counts"]["documents"],
            "chunks": manifest["counts"]["chunks"], "embedder": args.embedder, "device": str(model.device),
            "index_type": args.index_type, "model_load_s": round(model_load_s, 2), "ingest_s": round(ingest_s, 2),
            "bare_encode_s": round(bare_s, 2), "ratio": round(ingest_s / bare_s, 3), "target_ratio": 1.15,
            "chunks_per_s": round(len(texts) / ingest_s, 1), "index_bytes": size,
            "files": {rel: meta["bytes"] for rel, meta in manifest["files"].items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_count": os.cpu_count(),
        }, indent=2))


if __name__ == "__main__":
    main()
