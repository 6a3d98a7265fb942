"""FAISS, the embedded default: faiss.index in the index folder, FAISS's own binary format (nothing pickled).

index.index_type: flat = IndexFlatIP (exact), hnsw = IndexHNSWFlat, ivf = IndexIVFFlat, all inner product over
normalized vectors, so scores are cosine similarities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragqa.errors import RagqaError
from ragqa.index.manifest import reingest_hint
from ragqa.store import VectorStore

FAISS_FILE = "faiss.index"
PARAM_KEYS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe")


def build_faiss(vectors: np.ndarray, index_type: str, params: dict[str, Any]):
    """Inner-product index over normalized vectors (scores are cosine similarities)."""
    import faiss

    n, dim = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["hnsw_ef_construction"]
        index.hnsw.efSearch = params["hnsw_ef_search"]
    elif index_type == "ivf":
        nlist = max(1, min(params["ivf_nlist"], n // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(params["ivf_nprobe"], nlist)
    else:
        raise RagqaError(f"index.index_type: unknown FAISS index kind {index_type!r} (flat, hnsw, ivf)")
    index.add(vectors)
    return index


def read_faiss(path: Path, manifest: dict[str, Any]):
    import faiss

    try:
        index = faiss.read_index(str(path / FAISS_FILE))
    except RuntimeError:
        raise RagqaError(f"index {path}: {FAISS_FILE} is unreadable (corrupted): {reingest_hint(path)}") from None
    if index.ntotal != manifest["counts"]["chunks"] or index.d != manifest["embedder"]["dim"]:
        raise RagqaError(f"index {path}: {FAISS_FILE} holds {index.ntotal} vectors of dim {index.d}, the manifest "
                         f"says {manifest['counts']['chunks']} of dim {manifest['embedder']['dim']}: "
                         f"{reingest_hint(path)}")
    return index


class Store(VectorStore):
    name = "faiss"

    def __init__(self, index=None, folder: Path | None = None, params: dict[str, Any] | None = None):
        self.index = index
        self._folder = folder
        self._params = params
        self._pending: list[np.ndarray] = []  # IVF trains on the vectors: the index is built at save()

    @classmethod
    def params(cls, cfg) -> dict[str, Any]:
        # The manifest entry of every index before the store seam: unchanged, so those indexes stay up to date.
        return {"type": cfg.index.index_type, "metric": "inner_product",
                **{k: getattr(cfg.index, k) for k in PARAM_KEYS}}

    @classmethod
    def create(cls, folder: Path, dim: int, params: dict[str, Any], index: Path) -> Store:
        return cls(None, folder, params)

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any], verify: bool = True) -> Store:
        import faiss

        # Size and sha256 of faiss.index are checked with the other files (verify_files) before this.
        index = read_faiss(folder, manifest)
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # IVF finds a row's vector only through this map
        return cls(index)

    def add(self, vectors: np.ndarray) -> None:
        if self._folder is None:
            raise RagqaError("a loaded FAISS index is read-only: ingest writes a new one")
        self._pending.append(vectors)

    def save(self) -> dict[str, Any]:
        import faiss

        assert self._folder is not None and self._params is not None
        vectors = np.concatenate(self._pending) if self._pending else np.empty((0, 0), dtype=np.float32)
        self.index = build_faiss(vectors, self._params["type"], self._params)
        self._pending = []
        faiss.write_index(self.index, str(self._folder / FAISS_FILE))
        return self.record

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else sum(len(v) for v in self._pending)

    def search(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        import faiss

        # One query over a flat index: FAISS's OpenMP split over 2 threads cost more than it saved
        # (28k chunks: 4.9 -> 3.3 ms p50); HNSW searches one query on one thread anyway.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.search(query[None, :], n)
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        if rows is None:
            return self.index.reconstruct_n(0, self.index.ntotal)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def describe(self) -> str:
        return f"{self._params['type'] if self._params else type(self.index).__name__} FAISS"

    def stats(self) -> dict[str, str]:
        return {"FAISS": f"{type(self.index).__name__}, {self.index.ntotal} vectors of dim {self.index.d}"}
