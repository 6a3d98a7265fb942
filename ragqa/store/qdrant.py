"""Qdrant through qdrant-client: local mode in the index folder (no server), or a Qdrant server or cluster.

Points are the chunk vectors, id = row, no payload (chunks.jsonl holds the text, the manifest the rest), with
Dot distance: the vectors are normalized at ingest, so scores are cosines, as with FAISS, and Qdrant stores the
vectors unchanged (Cosine distance would normalize them again and change their last bits and checksum).

- Local mode (index.store_url unset): qdrant-client's embedded engine keeps the collection in `qdrant/` inside
  the index folder, so it is written, swapped and checksummed with the rest of the index. It searches exactly
  (brute force), allows one process at a time (its own lock), and its storage pickles each point: open only
  indexes you built or trust (FAISS indexes and server collections hold no pickle).
- Server (index.store_url): each ingest writes a new collection PREFIX-<12 hex> and records it in the manifest;
  once the new manifest is in, the replaced collection is deleted; a killed ingest's collection is deleted by
  the next one (the temp folder names it in store.json). index_type flat is exact search (no HNSW graph is
  built), hnsw builds and searches Qdrant's HNSW with hnsw_m / hnsw_ef_construction / hnsw_ef_search. Loading
  checks the point count and dimension, and (verify) the sha256 of all vectors against the manifest.
Hybrid search fuses with ragqa's own BM25 (ragqa.retrieve): Qdrant serves the dense half only.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import warnings
import weakref
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


class _Local:
    """One open local-mode client per storage folder and process: qdrant-client locks the folder per client,
    so a second Retriever on the same index in this process shares the first one's client. The client closes
    when the last store using it is gone."""

    _open: weakref.WeakValueDictionary[tuple[str, int, int], _Local] = weakref.WeakValueDictionary()

    def __init__(self, storage: Path):
        from qdrant_client import QdrantClient

        with warnings.catch_warnings():
            # "Local mode is not recommended for collections with more than 20,000 points": ingest says it once.
            warnings.filterwarnings("ignore", category=UserWarning, module="qdrant_client")
            self.client = QdrantClient(path=str(storage))

    @classmethod
    def open(cls, storage: Path, index: Path) -> _Local:
        # The folder's identity, not just its path: after a re-ingest the same path is another storage.
        meta = os.stat(storage / "meta.json")
        key = (str(storage.resolve()), meta.st_ino, meta.st_mtime_ns)
        handle = cls._open.get(key)
        if handle is None:
            try:
                handle = cls(storage)
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise RagqaError(f"index {index}: its Qdrant local storage is open in another process (local mode "
                                 "serves one process at a time); stop that process, or put the index on a Qdrant "
                                 "server (ragqa ingest --store qdrant --store-url URL)") from None
            cls._open[key] = handle
        return handle

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001, S110 - closing is best effort (at exit, modules may be gone)
            pass

    def __del__(self) -> None:
        self.close()

    @classmethod
    def close_all(cls) -> None:
        """At exit, while imports still work: qdrant-client's own close imports portalocker."""
        for handle in list(cls._open.values()):
            handle.close()


atexit.register(_Local.close_all)


class Store(VectorStore):
    name = "qdrant"
    unlisted = frozenset({".lock"})  # qdrant-client's lock file in local mode

    def __init__(self, client, collection: str, params: dict[str, Any], *, url: str | None, api_key_env: str,
                 count: int = 0, digest: str | None = None, local: _Local | None = None, index: Path | None = None,
                 writable: bool = False):
        self.client = client
        self.collection = collection
        self._params = params
        self._url = url
        self._api_key_env = api_key_env
        self._count = count
        self._digest = digest
        self._hash = hashlib.sha256()
        self._local = local  # keeps a shared local client open while this store lives
        self._index = index
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
            from qdrant_client import QdrantClient

            client = QdrantClient(path=str(folder / LOCAL_DIR))
            store = cls(client, LOCAL_COLLECTION, params, url=None, api_key_env="", index=index, writable=True)
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
        if not self._created:
            self._create_collection()
        ids = list(range(self._count, self._count + len(vectors)))
        with _server_errors(self._url, f"uploading to collection {self.collection}"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="qdrant_client")
            self.client.upload_collection(self.collection, vectors=vectors, ids=ids, batch_size=UPLOAD_BATCH,
                                          wait=True)
        self._hash.update(vectors.tobytes())
        self._count += len(vectors)

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
            self.client.close()  # local mode writes its sqlite file for good on close; the swap follows
            self.client = None
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
        if self.client is not None and self._local is None:
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
            storage = folder / LOCAL_DIR
            if not (storage / "meta.json").is_file():
                raise RagqaError(f"index {folder}: {LOCAL_DIR}/ (its Qdrant local storage) is missing: "
                                 f"{reingest_hint(folder)}")
            local = _Local.open(storage, folder)
            store = cls(local.client, record["collection"], params, url=None, api_key_env="", count=count,
                        digest=record["sha256"], local=local, index=folder)
        else:
            store = cls(cls._server(url, record["api_key_env"]), record["collection"], params, url=url,
                        api_key_env=record["api_key_env"], count=count, digest=record["sha256"], index=folder)
        try:
            store._check(folder, count, dim, verify)
        except BaseException:
            store.close()
            raise
        return store

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
