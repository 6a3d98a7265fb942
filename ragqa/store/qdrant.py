"""Qdrant through qdrant-client: local mode in the index folder (no server), or a Qdrant server or cluster.

Points are the chunk vectors, id = row, no payload (chunks.jsonl holds the text, the manifest the rest), with
Dot distance: the vectors are normalized at ingest, so scores are cosines, as with FAISS, and Qdrant stores the
vectors unchanged (Cosine distance would normalize them again and change their last bits and checksum).

- Local mode (index.store_url unset): the vectors are kept in `qdrant/vectors.safetensors` inside the index
  folder (written, swapped and checksummed with the rest of the index) and loaded into qdrant-client's
  in-memory engine when the index is opened. qdrant-client's own on-disk local storage is not used: it pickles
  every point, and an index folder is something people hand each other (ragqa loads no pickle it did not make
  in the same process). In memory it also takes no lock, so any number of processes (serve replicas) can open
  one index. It searches exactly (brute force).
- Server (index.store_url): each ingest writes a new collection PREFIX-<12 hex> and records it in the manifest;
  once the new manifest is in, the replaced collection is deleted; a killed ingest's collection is deleted by
  the next one (the temp folder names it in store.json). index_type flat is exact search (no HNSW graph is
  built), hnsw builds and searches Qdrant's HNSW with hnsw_m / hnsw_ef_construction / hnsw_ef_search. Loading
  checks the point count and dimension, and (verify) the sha256 of all vectors against the manifest.
Hybrid search fuses with ragqa's own BM25 (ragqa.retrieve): Qdrant serves the dense half only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragqa.endpoints import check_http_url, check_key_transport
from ragqa.errors import RagqaError
from ragqa.index.manifest import index_dir, reingest_hint
from ragqa.store import VectorStore
from ragqa.terminal import say

LOCAL_DIR = "qdrant"
LOCAL_VECTORS = "vectors.safetensors"
LOCAL_COLLECTION = "chunks"
UPLOAD_BATCH = 256
SCROLL_BATCH = 1024


def _check_url(url: str) -> None:
    check_http_url(url, "index.store_url", "http://localhost:6333")


def _api_key(url: str, env: str) -> str | None:
    """The key in $env, sent only over https or to this machine (a key in clear text on a network is leaked)."""
    key = os.environ.get(env) or None
    if key:
        check_key_transport(url, refusing=f"index.store_api_key_env {env}: refusing to send the Qdrant API key",
                            fix=f"use an https --store-url, a loopback address, or unset {env}")
    return key


@contextlib.contextmanager
def _server_errors(url: str | None, what: str) -> Iterator[None]:
    """qdrant-client's and httpx's exceptions as one line naming the server and the fix."""
    if url is None:
        yield
        return
    from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code in (401, 403):
            raise RagqaError(f"Qdrant server {url} refused {what} (HTTP {exc.status_code}): set the API key in "
                             "the variable index.store_api_key_env names (default QDRANT_API_KEY)") from None
        reason = (exc.content or b"").decode(errors="replace").strip()[:300] or exc.reason_phrase
        raise RagqaError(f"Qdrant server {url}: {what} failed (HTTP {exc.status_code}: {reason})") from None
    except (ApiException, OSError) as exc:
        raise _unreachable(url, what, getattr(exc, "source", exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "grpc")):
            raise _unreachable(url, what, exc) from None
        raise


def _unreachable(url: str, what: str, exc: BaseException) -> RagqaError:
    reason = " ".join(str(exc).split())[:200]  # one line, whatever the library put in it
    return RagqaError(f"Qdrant server {url}: {what} failed ({type(exc).__name__}: {reason}); is the server "
                      "running, and is --store-url / index.store_url right?")


def _memory_client():
    """qdrant-client's embedded engine, in memory (see the module docstring for why not on disk)."""
    from qdrant_client import QdrantClient

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="qdrant_client")
        return QdrantClient(location=":memory:")


class Store(VectorStore):
    name = "qdrant"

    def __init__(self, client, collection: str, params: dict[str, Any], *, url: str | None, api_key_env: str,
                 count: int = 0, digest: str | None = None, index: Path | None = None, writable: bool = False):
        self.client = client
        self.collection = collection
        self._params = params
        self._url = url
        self._api_key_env = api_key_env
        self._count = count
        self._digest = digest
        self._hash = hashlib.sha256()
        self._index = index
        self._local: list[np.ndarray] | np.ndarray | None = None
        """Local mode: the vectors added so far (a list, while writing) or all of them (an array, once loaded)."""
        self._write_to: Path | None = None
        """Local mode, while writing: the folder save() writes LOCAL_VECTORS into."""
        self._writable = writable
        self._created = False
        self._dim: int | None = None

    # --------------------------------------------------------------------------------------- settings

    @classmethod
    def params(cls, cfg) -> dict[str, Any]:
        i = cfg.index
        if i.index_type == "ivf":
            raise RagqaError("index.index_type: ivf is a FAISS index kind; with index.store=qdrant use flat "
                             "(exact search) or hnsw (--index-type flat|hnsw)")
        out: dict[str, Any] = {"store": "qdrant", "type": i.index_type, "metric": "inner_product"}
        if i.index_type == "hnsw":
            out.update(hnsw_m=i.hnsw_m, hnsw_ef_construction=i.hnsw_ef_construction, hnsw_ef_search=i.hnsw_ef_search)
        if i.store_url is None:
            return out
        _check_url(i.store_url)
        _api_key(i.store_url, i.store_api_key_env)  # refuse a clear-text key before anything is done
        if i.qdrant_write_consistency > i.qdrant_replication_factor:
            raise RagqaError(f"index.qdrant_write_consistency ({i.qdrant_write_consistency}) must be at most "
                             f"index.qdrant_replication_factor ({i.qdrant_replication_factor})")
        prefix = i.qdrant_collection or f"ragqa-{index_dir(i.name).name}"
        # The cluster settings are part of the index: changing one rewrites the collection (vectors reused).
        out.update(url=i.store_url.rstrip("/"), api_key_env=i.store_api_key_env, collection=prefix,
                   shards=i.qdrant_shards, replication_factor=i.qdrant_replication_factor,
                   write_consistency=i.qdrant_write_consistency, on_disk=i.qdrant_on_disk)
        return out

    @classmethod
    def preflight(cls, params: dict[str, Any]) -> None:
        if params.get("url") is None:
            return
        client = cls._server(params["url"], params["api_key_env"])
        try:
            with _server_errors(params["url"], "connecting"):
                client.get_collections()  # answers only with a valid key where the server wants one
        finally:
            client.close()

    @property
    def record(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self._url, "api_key_env": self._api_key_env if self._url else None,
                "collection": self.collection, "points": self._count,
                "sha256": self._digest if self._digest is not None else self._hash.hexdigest()}

    @property
    def external(self) -> bool:  # type: ignore[override]
        return self._url is not None

    @staticmethod
    def _server(url: str, api_key_env: str):
        from qdrant_client import QdrantClient

        key = _api_key(url, api_key_env)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ii]nsecure.*")  # a key over http: loopback only (above)
            return QdrantClient(url=url, api_key=key, prefer_grpc=False, timeout=60, check_compatibility=False)

    # ------------------------------------------------------------------------------------------ write

    @classmethod
    def create(cls, folder: Path, dim: int, params: dict[str, Any], index: Path) -> Store:
        url = params.get("url")
        if url is None:
            (folder / LOCAL_DIR).mkdir()
            store = cls(_memory_client(), LOCAL_COLLECTION, params, url=None, api_key_env="", index=index,
                        writable=True)
            store._local, store._write_to = [], folder / LOCAL_DIR
        else:
            collection = f"{params['collection']}-{secrets.token_hex(6)}"
            store = cls(cls._server(url, params["api_key_env"]), collection, params, url=url,
                        api_key_env=params["api_key_env"], index=index, writable=True)
        store._dim = dim
        return store

    def _create_collection(self) -> None:
        from qdrant_client import models

        p = self._params
        on_disk = p.get("on_disk") or None
        # m=0 builds no HNSW graph: flat means exact search, and building a graph nobody searches is waste.
        hnsw = models.HnswConfigDiff(m=p["hnsw_m"], ef_construct=p["hnsw_ef_construction"], on_disk=on_disk) \
            if p["type"] == "hnsw" else models.HnswConfigDiff(m=0)
        cluster = {} if self._url is None else {
            "shard_number": p["shards"], "replication_factor": p["replication_factor"],
            "write_consistency_factor": p["write_consistency"], "on_disk_payload": on_disk}
        with _server_errors(self._url, f"creating collection {self.collection}"):
            self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.DOT,
                                                                    on_disk=on_disk),
                hnsw_config=hnsw, **cluster)
        self._created = True

    def add(self, vectors: np.ndarray) -> None:
        if not self._writable:
            raise RagqaError("a loaded Qdrant store is read-only: ingest writes a new collection")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._upload(vectors, start=self._count)
        self._hash.update(vectors.tobytes())
        self._count += len(vectors)
        if isinstance(self._local, list):
            self._local.append(vectors)

    def _upload(self, vectors: np.ndarray, start: int) -> None:
        """Points start, start+1, ... with `vectors`, into the collection (created on first use)."""
        if not self._created:
            self._create_collection()
        ids = list(range(start, start + len(vectors)))
        with _server_errors(self._url, f"uploading to collection {self.collection}"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="qdrant_client")
            self.client.upload_collection(self.collection, vectors=vectors, ids=ids, batch_size=UPLOAD_BATCH,
                                          wait=True)

    def save(self) -> dict[str, Any]:
        if not self._created:
            self._create_collection()  # an empty store is still a collection
        with _server_errors(self._url, f"counting collection {self.collection}"):
            stored = self.client.count(self.collection, exact=True).count
        if stored != self._count:
            raise RagqaError(f"Qdrant collection {self.collection} holds {stored} points after the upload of "
                             f"{self._count}: the server dropped writes; run the ingest again")
        self._digest = self._hash.hexdigest()
        if self._url is None and self._count > 20_000:
            say(f"[yellow]note: Qdrant local mode searches {self._count} points by brute force in Python; at this "
                "size a Qdrant server (--store-url) or FAISS answers sooner[/yellow]")
        if self._url is None:
            from safetensors.numpy import save_file

            dim = self._dim or 0
            vectors = np.concatenate(self._local) if self._local else np.empty((0, dim), dtype=np.float32)
            save_file({"vectors": vectors}, str(self._write_to / LOCAL_VECTORS))  # the index's swap follows
            self._local = vectors
        return self.record

    def abort(self) -> None:
        if self._url is not None and self._created:
            with contextlib.suppress(Exception):
                self.client.delete_collection(self.collection)

    @classmethod
    def remove(cls, record: dict[str, Any]) -> None:
        if record.get("url") is None:
            return  # local mode: the collection went with its index folder
        client = cls._server(record["url"], record.get("api_key_env") or "QDRANT_API_KEY")
        try:
            with _server_errors(record["url"], f"deleting collection {record['collection']}"):
                if client.collection_exists(record["collection"]):
                    client.delete_collection(record["collection"])
        finally:
            client.close()

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.client = None
        self._local = None

    # ------------------------------------------------------------------------------------------- read

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any], verify: bool = True) -> Store:
        record, params = manifest["store"], manifest["index"]
        count, dim = manifest["counts"]["chunks"], manifest["embedder"]["dim"]
        url = record.get("url")
        if url is None:
            store = cls(_memory_client(), record["collection"], params, url=None, api_key_env="", count=count,
                        digest=record["sha256"], index=folder)
            try:
                store._open_local(folder, count, dim, verify)
            except BaseException:
                store.close()
                raise
        else:
            store = cls(cls._server(url, record["api_key_env"]), record["collection"], params, url=url,
                        api_key_env=record["api_key_env"], count=count, digest=record["sha256"], index=folder)
        try:
            store._check(folder, count, dim, verify)
        except BaseException:
            store.close()
            raise
        return store

    def _open_local(self, folder: Path, count: int, dim: int, verify: bool) -> None:
        """Read qdrant/vectors.safetensors (checked against the manifest) into the in-memory collection."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = folder / LOCAL_DIR / LOCAL_VECTORS
        if not path.is_file():
            # Indexes from before this layout hold qdrant-client's on-disk storage, which pickles every point.
            old = (folder / LOCAL_DIR / "meta.json").is_file()
            what = ("holds qdrant-client's on-disk storage (pickled points), which ragqa does not open" if old
                    else f"lacks {LOCAL_DIR}/{LOCAL_VECTORS} (its vectors)")
            raise RagqaError(f"index {folder} {what}: {reingest_hint(folder)}")
        try:
            vectors = load_file(str(path)).get("vectors")
        except (SafetensorError, OSError, ValueError) as exc:
            raise RagqaError(f"index {folder}: {LOCAL_DIR}/{LOCAL_VECTORS} is damaged ({exc}): "
                             f"{reingest_hint(folder)}") from None
        if vectors is None or vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape != (count, dim):
            shape = "no vectors" if vectors is None else f"{vectors.shape[0]} points of dim {vectors.shape[-1]}"
            raise RagqaError(f"index {folder}: Qdrant collection {self.collection} holds {shape}, the manifest "
                             f"says {count} of dim {dim}: {reingest_hint(folder)}")
        if verify and hashlib.sha256(vectors.tobytes()).hexdigest() != self._digest:
            raise RagqaError(f"index {folder}: {LOCAL_DIR}/{LOCAL_VECTORS} does not match the manifest's checksum "
                             f"(changed outside ragqa): {reingest_hint(folder)}")
        self._dim = dim
        if count:
            self._upload(vectors, start=0)
        else:
            self._create_collection()
        self._local = vectors

    def _check(self, folder: Path, count: int, dim: int, verify: bool) -> None:
        where = f"Qdrant collection {self.collection}" + (f" at {self._url}" if self._url else "")
        with _server_errors(self._url, f"opening collection {self.collection}"):
            if not self.client.collection_exists(self.collection):
                raise RagqaError(f"index {folder}: {where} does not exist (deleted outside ragqa?): "
                                 f"{reingest_hint(folder)}")
            vectors = self.client.get_collection(self.collection).config.params.vectors
            stored = self.client.count(self.collection, exact=True).count
        size = getattr(vectors, "size", None)
        if stored != count or size != dim:
            raise RagqaError(f"index {folder}: {where} holds {stored} points of dim {size}, the manifest says "
                             f"{count} of dim {dim}: {reingest_hint(folder)}")
        # Local mode's files were checked against the manifest's sha256 (verify_files); a server's collection
        # is checked here, vector by vector.
        if verify and self._url is not None:
            digest = hashlib.sha256(self.vectors().tobytes()).hexdigest()
            if digest != self._digest:
                raise RagqaError(f"index {folder}: the vectors in {where} do not match the manifest's checksum "
                                 f"(changed outside ragqa): {reingest_hint(folder)}")

    def __len__(self) -> int:
        return self._count

    def search(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        from qdrant_client import models

        options: dict[str, Any] = {}
        if self._url is not None:  # local mode always searches exactly (and warns about search_params)
            options["search_params"] = models.SearchParams(hnsw_ef=self._params.get("hnsw_ef_search"),
                                                           exact=self._params["type"] == "flat")
        with _server_errors(self._url, f"searching collection {self.collection}"):
            found = self.client.query_points(self.collection, query=np.asarray(query, dtype=np.float32).tolist(),
                                             limit=n, with_payload=False, with_vectors=False, **options).points
        return [(int(p.id), float(p.score)) for p in found]

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        if isinstance(self._local, np.ndarray):  # local mode: the array the collection was filled from
            if rows is None:
                return self._local
            rows = [int(r) for r in rows]
            outside = [r for r in rows if not 0 <= r < len(self._local)]
            if outside:
                raise RagqaError(f"index {self._index}: Qdrant collection {self.collection} lacks rows "
                                 f"{outside[:5]}: {reingest_hint(self._index or Path('.'))}")
            return self._local[rows]
        if rows is None:
            return self._all_vectors()
        rows = [int(r) for r in rows]
        if not rows:
            return np.empty((0, self._dim_of()), dtype=np.float32)
        with _server_errors(self._url, f"reading collection {self.collection}"):
            points = self.client.retrieve(self.collection, ids=rows, with_vectors=True, with_payload=False)
        by_id = {int(p.id): p.vector for p in points}
        missing = [r for r in rows if r not in by_id]
        if missing:
            raise RagqaError(f"index {self._index}: Qdrant collection {self.collection} lacks rows {missing[:5]}: "
                             f"{reingest_hint(self._index or Path('.'))}")
        return np.asarray([by_id[r] for r in rows], dtype=np.float32)

    def _all_vectors(self) -> np.ndarray:
        out: dict[int, Any] = {}
        offset = None
        with _server_errors(self._url, f"reading collection {self.collection}"):
            while True:
                points, offset = self.client.scroll(self.collection, limit=SCROLL_BATCH, offset=offset,
                                                    with_vectors=True, with_payload=False)
                out.update((int(p.id), p.vector) for p in points)
                if offset is None:
                    break
        if sorted(out) != list(range(len(out))):
            raise RagqaError(f"index {self._index}: Qdrant collection {self.collection} does not hold rows "
                             f"0..{len(out) - 1}: {reingest_hint(self._index or Path('.'))}")
        if not out:
            return np.empty((0, self._dim_of()), dtype=np.float32)
        return np.asarray([out[i] for i in range(len(out))], dtype=np.float32)

    def _dim_of(self) -> int:
        return int(self.client.get_collection(self.collection).config.params.vectors.size)

    def describe(self) -> str:
        kind = "exact" if self._params["type"] == "flat" else "HNSW"
        return f"Qdrant {'local' if self._url is None else self._url} ({kind})"

    def stats(self) -> dict[str, str]:
        where = "local mode (in the index folder)" if self._url is None else self._url
        out = {"Qdrant": f"{where}, collection {self.collection}, {self._count} points"}
        if self._url is not None:
            with _server_errors(self._url, f"reading collection {self.collection}"):
                info = self.client.get_collection(self.collection)
            params = info.config.params
            out["Qdrant cluster"] = (f"status {info.status.value}, {params.shard_number} shards, replication "
                                     f"{params.replication_factor}, vectors on disk {bool(params.vectors.on_disk)}")
        return out
