"""Where an index's vectors live: one small interface, one module per backend.

A backend is a module `ragqa/store/NAME.py` defining `Store`, a subclass of `VectorStore`; `index.store=NAME`
(`ragqa ingest --store NAME`) selects it, and the manifest records it, so loading needs no flag. Everything
else of an index (chunk store, BM25, manifest, lock) is the same for every backend: ingest and the retriever
talk to the vectors only through this interface. Row i of a store is line i of chunks.jsonl.

  faiss   the embedded default: faiss.index in the index folder (flat, HNSW or IVF).
  qdrant  qdrant-client: local mode inside the index folder (no server), or a Qdrant server or cluster.

This module imports no backend library: `ragqa --help` lists the backends without loading FAISS or Qdrant.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ragqa.errors import RagqaError

if TYPE_CHECKING:
    import numpy as np

DEFAULT = "faiss"
RECORD_FILE = "store.json"
"""Written into an index's temp folder by a backend that keeps data outside it (a server collection), before
any of that data exists: when a kill leaves the temp folder behind, the next ingest finds what to remove."""


class VectorStore(ABC):
    """Normalized embedding vectors, searched by inner product (= cosine), addressed by row."""

    name: ClassVar[str]
    external: ClassVar[bool] = False
    """True when the vectors live outside the index folder (then `record` is written to RECORD_FILE)."""

    @classmethod
    @abstractmethod
    def params(cls, cfg) -> dict[str, Any]:
        """The index settings this backend builds with (the manifest's "index" entry). Raises RagqaError naming
        the setting when the config asks for something this backend cannot do. A change of these settings
        rebuilds the store from the stored vectors (nothing is embedded again)."""

    @classmethod  # noqa: B027 - most backends have nothing to check
    def preflight(cls, params: dict[str, Any]) -> None:
        """Before an ingest loads any model: fail now (RagqaError) if the store cannot be written (a server
        that does not answer or refuses the key), not after minutes of embedding."""

    @classmethod
    @abstractmethod
    def create(cls, folder: Path, dim: int, params: dict[str, Any], index: Path) -> VectorStore:
        """A new, empty store for the index being written into the temp folder `folder` (`index` is the
        index's final path, for messages and names)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, manifest: dict[str, Any], verify: bool = True) -> VectorStore:
        """Open the store of the index in `folder`, refusing (RagqaError, one line, with the fix) one whose
        vector count, dimension or checksum disagrees with the manifest; `verify` also checks contents."""

    @property
    def record(self) -> dict[str, Any]:
        """What the manifest keeps under "store": the backend and where its vectors are."""
        return {"backend": self.name}

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append float32 rows len(self) .. len(self) + len(vectors) - 1."""

    @abstractmethod
    def save(self) -> dict[str, Any]:
        """Make everything added durable (files in the temp folder, or points on the server) and return the
        record for the manifest."""

    @abstractmethod
    def search(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The n rows with the highest inner product with `query` (one vector), best first, as (row, score)."""

    @abstractmethod
    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """The stored vectors of `rows` (all rows, in order, when None), float32."""

    @abstractmethod
    def __len__(self) -> int: ...

    def describe(self) -> str:
        """A few words for ingest's summary line ("flat FAISS")."""
        return self.name

    def stats(self) -> dict[str, str]:
        """Lines for `ragqa ingest --stats`."""
        return {}

    # Not abstract: a backend that keeps nothing open and nothing outside its index folder has nothing to do.
    def close(self) -> None:  # noqa: B027
        """Release connections and file handles."""

    def abort(self) -> None:  # noqa: B027
        """The ingest writing this store failed: remove what it put outside the temp folder."""

    @classmethod  # noqa: B027
    def remove(cls, record: dict[str, Any]) -> None:
        """Remove the data a replaced or abandoned store of this backend keeps outside its index folder."""


def backends() -> list[str]:
    """The available backends: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def backend(name: str) -> type[VectorStore]:
    if name not in backends():
        raise RagqaError(f"index.store: unknown vector store {name!r} (one of {', '.join(backends())})")
    return importlib.import_module(f"{__name__}.{name}").Store


def backend_of(manifest: dict[str, Any]) -> str:
    """The backend an index was built with (indexes from before the store seam hold FAISS)."""
    return manifest["index"].get("store", DEFAULT)


def same_place(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two store records name the same vectors (backend, server, collection), whatever their counts:
    a record written when a store was created and the one its manifest holds later name the same place."""
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in ("backend", "url", "collection"))


def load_store(folder: Path, manifest: dict[str, Any], verify: bool = True) -> VectorStore:
    return backend(backend_of(manifest)).load(folder, manifest, verify)
