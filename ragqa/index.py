"""Build and persist an index: chunk (llama-index SentenceSplitter), embed (sentence-transformers),
FAISS + BM25 + chunk store + manifest, written atomically and updated incrementally.

Layout of indexes/NAME/ (nothing is pickled):
  faiss.index      FAISS's own binary format (flat = IndexFlatIP, hnsw, ivf) over normalized vectors
  bm25/            bm25s's own format: CSC score matrix as .npy (allow_pickle=False) + vocab/params JSON
  chunks.jsonl     one chunk per line, row i = FAISS id i = BM25 doc i
  manifest.json    embedder, chunking, corpus files with sha256, counts, versions, file checksums,
                   and a checksum of the manifest itself (edits are detected on load)

BM25 uses bm25s directly, with the tokenization of llama-index's BM25Retriever (English stopwords, PyStemmer,
the same token pattern): BM25Retriever.persist would also store every node again as JSON and builds Node
objects per query, and our chunk store already holds the text.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ragqa import __version__, abstain
from ragqa.corpus import Corpus, Document, Fields, fingerprint, load_corpus
from ragqa.errors import RagqaError
from ragqa.files import atomic_dir, check_output_dir, find_backup, recover, sha256_file, write_error
from ragqa.terminal import markup_safe, plain

FORMAT = 1
FAISS_FILE = "faiss.index"
CHUNKS_FILE = "chunks.jsonl"
BM25_DIR = "bm25"
MANIFEST = "manifest.json"
BM25_STOPWORDS = "en"
BM25_STEMMER = "english"
BM25_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def index_dir(name: str) -> Path:
    """A bare name means indexes/NAME (relative to the working directory); a value with '/' is the directory."""
    if "/" in name or os.sep in name:
        return Path(name).expanduser()
    if not name or name in (".", ".."):
        raise RagqaError(f"index name {name!r} is not usable: give a name like 'default' or a directory path")
    return Path("indexes") / name


# ----------------------------------------------------------------------------------------------- chunks


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    position: int
    text: str
    title: str
    source: str
    url: str
    doc_hash: str
    embed_text: str
    """What is embedded and BM25-indexed: a title line (capped in tokens) + the chunk text."""

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.embed_text.encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        return asdict(self)


class Chunker:
    """Sentence-aware, token-sized chunks measured with the embedder's own tokenizer.

    Every chunk, with its title line and the tokenizer's special tokens, fits the embedder's
    max_seq_length, so nothing is silently truncated at embedding time.
    """

    def __init__(self, model, chunk_size: int, chunk_overlap: int):
        from llama_index.core.node_parser import SentenceSplitter

        backend = copy.deepcopy(model.tokenizer.backend_tokenizer)
        backend.no_truncation()
        backend.no_padding()
        self._tok = backend
        self.special = len(backend.encode("", add_special_tokens=True).ids)
        self.max_tokens = int(model.max_seq_length) - self.special
        self.size = min(chunk_size, self.max_tokens)
        self.overlap = min(chunk_overlap, self.size // 2)
        self._splitter = SentenceSplitter(chunk_size=self.size, chunk_overlap=self.overlap, tokenizer=self._ids)

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def prefix(self, title: str) -> str:
        """The title line put in front of each chunk, cut to a quarter of the chunk budget."""
        if not title:
            return ""
        enc = self._tok.encode(title, add_special_tokens=False)
        cap = max(1, self.size // 4)
        if len(enc.ids) > cap:
            title = title[: enc.offsets[cap - 1][1]]
        return title + "\n"

    def chunk(self, docs: list[Document]) -> list[list[Chunk]]:
        """Chunks of each document, in order."""
        prefixes = [self.prefix(d.title) for d in docs]
        lengths = self._count([p + d.text for p, d in zip(prefixes, docs, strict=True)])
        out = []
        for doc, prefix, length in zip(docs, prefixes, lengths, strict=True):
            text = doc.text.strip()
            pieces = [text] if length <= self.size else self._split(text, prefix)
            pieces = [p for p in pieces if p.strip()]
            out.append([
                Chunk(f"{doc.id}#{i}", doc.id, i, p, doc.title, doc.source, doc.url, doc.hash, prefix + p)
                for i, p in enumerate(pieces)
            ])
        return out

    def _split(self, text: str, prefix: str) -> list[str]:
        # SentenceSplitter prints a notice when the title leaves < 50 tokens; the prefix cap makes that benign.
        with contextlib.redirect_stdout(io.StringIO()):
            pieces = self._splitter.split_text_metadata_aware(text, prefix) if prefix else \
                self._splitter.split_text(text)
        # The splitter sums token counts of pieces; re-check the joined chunk and split again if it overflows.
        fitted: list[str] = []
        for piece, n in zip(pieces, self._count([prefix + p for p in pieces]), strict=True):
            fitted.extend(self._shrink(piece, prefix) if n > self.max_tokens else [piece])
        return fitted

    def _shrink(self, piece: str, prefix: str) -> list[str]:
        from llama_index.core.node_parser import SentenceSplitter

        size = self.size
        while True:
            size = max(8, int(size * 0.8))
            splitter = SentenceSplitter(chunk_size=size, chunk_overlap=min(self.overlap, size // 4),
                                        tokenizer=self._ids)
            with contextlib.redirect_stdout(io.StringIO()):
                parts = splitter.split_text_metadata_aware(piece, prefix) if prefix else splitter.split_text(piece)
            if size == 8 or max(self._count([prefix + p for p in parts])) <= self.max_tokens:
                return parts


# ------------------------------------------------------------------------------------------ embedding


def embed(model, texts: list[str], batch_size: int, label: str = "embedding") -> np.ndarray:
    """Normalized float32 embeddings, longest texts first (least padding), with a chunks/s progress bar."""
    dim = _dimension(model)
    out = np.empty((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    # Longest first by token count, which is what the model pays for; encode's own order is by characters.
    # Over all MedQuAD chunks that pads batches of 64 to 5.02M tokens instead of 5.93M (4.96M real), for a
    # 6 s tokenizer pass. encode re-sorts each call's slice by characters, which costs 1% at these slice sizes.
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length,
                                                   return_attention_mask=False, return_token_type_ids=False,
                                                   verbose=False)["input_ids"]]
    order = np.argsort([-n for n in lengths], kind="stable")
    step = batch_size * 8  # a few batches per encode call: progress updates without per-call overhead
    with _progress() as progress:
        task = progress.add_task(label, total=len(texts))
        for start in range(0, len(texts), step):
            idx = order[start:start + step]
            out[idx] = model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            progress.advance(task, len(idx))
    return out


def _dimension(model) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class ChunksPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.0f} chunks/s" if task.speed else "- chunks/s", style="cyan")

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    ChunksPerSecond(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def configure_llama_index(model) -> None:
    """No LLM and our embedder in llama-index's global Settings, so no component ever reaches for OpenAI."""
    from llama_index.core import Settings
    from llama_index.core.embeddings import BaseEmbedding
    from pydantic import PrivateAttr

    class SentenceTransformerEmbedding(BaseEmbedding):
        _model: Any = PrivateAttr()

        def __init__(self, st_model, **kwargs):
            super().__init__(model_name="ragqa-embedder", **kwargs)
            self._model = st_model

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._model.encode(query, normalize_embeddings=True).tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._get_query_embedding(text)

    with contextlib.redirect_stdout(io.StringIO()):  # llama-index prints "LLM is explicitly disabled"
        Settings.llm = None
    Settings.embed_model = SentenceTransformerEmbedding(model)


# ---------------------------------------------------------------------------------------- FAISS, BM25


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


def faiss_vectors(index) -> np.ndarray:
    """All stored vectors in id order (to reuse them when only part of a corpus changed)."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def bm25_tokenize(texts: list[str], return_ids: bool = True):
    """bm25s tokenization as llama-index's BM25Retriever does it: English stopwords, Snowball stemmer."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, stemmer=Stemmer.Stemmer(BM25_STEMMER),
                          token_pattern=BM25_TOKEN_PATTERN, return_ids=return_ids, show_progress=False)


def build_bm25(texts: list[str], out: Path) -> None:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25_tokenize(texts), show_progress=False)
    retriever.save(str(out), allow_pickle=False, show_progress=False)


def load_bm25(path: Path):
    import bm25s

    with contextlib.redirect_stdout(io.StringIO()):
        return bm25s.BM25.load(str(path), load_corpus=False, allow_pickle=False, show_progress=False)


# -------------------------------------------------------------------------------- manifest, checksums


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _reingest_hint(path: Path) -> str:
    name = path.name if path.parent == Path("indexes") else str(path)
    return f"re-run `ragqa ingest --index {name}` to rebuild it"


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest, after checking that it parses and that its own checksum matches."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagqaError(f"index {path} has no {MANIFEST} (not a ragqa index, or damaged): "
                         f"{_reingest_hint(path)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RagqaError(f"index {path}: {MANIFEST} is corrupted (not valid JSON): {_reingest_hint(path)}") from None
    if not isinstance(manifest, dict) or manifest.get("checksum") != _manifest_checksum(manifest):
        raise RagqaError(f"index {path}: {MANIFEST} was modified or is corrupted (checksum mismatch): "
                         f"{_reingest_hint(path)}")
    if manifest.get("format") != FORMAT:
        raise RagqaError(f"index {path} has format {manifest.get('format')}, this ragqa reads {FORMAT}: "
                         f"{_reingest_hint(path)}")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Every file listed in the manifest exists with the recorded size (and sha256)."""
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file() or file.stat().st_size != meta["bytes"]:
            raise RagqaError(f"index {path}: {rel} is missing or truncated: {_reingest_hint(path)}")
        if checksums and sha256_file(file) != meta["sha256"]:
            raise RagqaError(f"index {path}: {rel} does not match its checksum (corrupted): {_reingest_hint(path)}")


def read_chunks(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = []
    with open(path / CHUNKS_FILE, encoding="utf-8") as fh:
        for line in fh:
            chunks.append(json.loads(line))
    if len(chunks) != manifest["counts"]["chunks"]:
        raise RagqaError(f"index {path}: {CHUNKS_FILE} has {len(chunks)} chunks, the manifest says "
                         f"{manifest['counts']['chunks']}: {_reingest_hint(path)}")
    return chunks


def read_faiss(path: Path, manifest: dict[str, Any]):
    import faiss

    try:
        index = faiss.read_index(str(path / FAISS_FILE))
    except RuntimeError:
        raise RagqaError(f"index {path}: {FAISS_FILE} is unreadable (corrupted): {_reingest_hint(path)}") from None
    if index.ntotal != manifest["counts"]["chunks"] or index.d != manifest["embedder"]["dim"]:
        raise RagqaError(f"index {path}: {FAISS_FILE} holds {index.ntotal} vectors of dim {index.d}, the manifest "
                         f"says {manifest['counts']['chunks']} of dim {manifest['embedder']['dim']}: "
                         f"{_reingest_hint(path)}")
    return index


def existing_index(path: Path) -> Path | None:
    """The directory that holds the current index: PATH, or its backup when a crash hit the final swap."""
    if (path / MANIFEST).is_file():
        return path
    return find_backup(path, MANIFEST)


# ----------------------------------------------------------------------------- locking, atomic writes


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def index_lock(path: Path) -> Iterator[None]:
    """Exclusive writer lock on an index (flock on .NAME.lock next to it).

    The kernel drops the lock when its holder dies, even by SIGKILL, so a lock file left behind by a dead
    process is stale by construction and simply taken over. The file stays (removing it would race).
    """
    import fcntl

    lock = _lock_file(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RagqaError(f"index {path} is being written by PID {holder} (lock {lock}); wait for it to "
                             "finish, or run with another --index") from None
        stale = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if stale:
            _say(f"[dim]recovered a stale lock left by PID {markup_safe(stale)} (process gone)[/dim]")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _recover(path: Path) -> None:
    """Under the lock: undo an interrupted swap (files.recover, the rule of every writer) and remove the temp
    dirs of killed runs (under the lock, no temp dir of this index can belong to a live writer)."""
    recover(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


# -------------------------------------------------------------------------------------------- ingest


def _say(message: str) -> None:
    """Print a rich-markup message to stderr; paths, corpus values and errors in it go through markup_safe."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message)


def _settings(cfg) -> dict[str, Any]:
    """What the stored vectors depend on: a change rebuilds (with a message)."""
    return {"embedder": cfg.model.embedder, "chunk_size": cfg.index.chunk_size,
            "chunk_overlap": cfg.index.chunk_overlap}


def _index_params(cfg) -> dict[str, Any]:
    keys = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe")
    return {"type": cfg.index.index_type, "metric": "inner_product", **{k: getattr(cfg.index, k) for k in keys}}


def ingest(cfg, embedder=None, *, overwrite: bool = False) -> Path:
    """Build or incrementally update the index named by cfg.index.name; return its directory.

    `embedder` may be an already loaded SentenceTransformer for cfg.model.embedder (saves a load). A folder
    that is not an index is refused unless `overwrite` (--overwrite) says to replace it.
    """
    path = index_dir(cfg.index.name)
    # Backups are recovered under the lock (_recover), where no other ingest can be mid-swap.
    check_output_dir(path, "index", (MANIFEST,), option="--index", overwrite=overwrite, recover_backup=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with index_lock(path):
            return _ingest_locked(cfg, path, embedder)
    except OSError as exc:
        raise write_error(path, exc.errno, "--index", reason=f"{exc.strerror or exc} ({exc.filename or path})",
                          action=f"ingest into {path} failed", kept=_kept(path)) from None


def _kept(path: Path) -> str | None:
    return "index" if (path / MANIFEST).is_file() else None


def _ingest_locked(cfg, path: Path, embedder) -> Path:
    start = time.perf_counter()
    _recover(path)
    old = _previous(path)
    settings, params = _settings(cfg), _index_params(cfg)
    fingerprints = [fingerprint(spec) for spec in cfg.index.corpus]
    fields = {"text": cfg.index.text_field, "id": cfg.index.id_field, "title": cfg.index.title_field,
              "max_doc_chars": cfg.index.max_doc_chars}
    if old is not None and old["manifest"]["settings"] == settings and old["manifest"]["index"] == params \
            and old["manifest"]["fields"] == fields and _same_corpus(old["manifest"]["corpus"], fingerprints):
        _say(f"{markup_safe(path)}: up to date ({old['manifest']['counts']['chunks']} chunks), nothing to embed")
        return path

    corpus = load_corpus(cfg.index.corpus, Fields(cfg.index.text_field, cfg.index.id_field, cfg.index.title_field),
                         cfg.index.max_doc_chars)
    for warning in corpus.warnings:
        _say(f"[yellow]warning:[/yellow] {markup_safe(warning)}")
    if embedder is None:
        from ragqa.models import load_embedder

        embedder = load_embedder(cfg.model.embedder, cfg.model.device)
    configure_llama_index(embedder)
    chunker = Chunker(embedder, cfg.index.chunk_size, cfg.index.chunk_overlap)

    if old is not None and old["manifest"]["settings"] != settings:
        was, now = old["manifest"]["settings"], settings
        changed = ", ".join(f"{k} {was.get(k)} -> {now[k]}" for k in now if was.get(k) != now[k])
        _say(f"[yellow]{markup_safe(changed)}: rebuilding the whole index[/yellow]")
        old = None
    chunks, vectors, reused = _chunk_and_embed(corpus, chunker, embedder, cfg.index.embed_batch_size, old)
    calibration = abstain.calibrate(lambda qs: embedder.encode(qs, normalize_embeddings=True), vectors,
                                    [d.title for d in corpus.documents])

    # Two renames swap it in; a crash between them is undone by _recover (existing_index reads the backup).
    with atomic_dir(path, option="--index", action=f"ingest into {path} failed", kept=_kept(path)) as tmp:
        _write(tmp, cfg, corpus, chunker, embedder, chunks, vectors, params, fields, settings,
               {"embedded_chunks": len(chunks) - reused, "reused_chunks": reused,
                "seconds": round(time.perf_counter() - start, 2)}, calibration)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    _say(f"{markup_safe(path)}: {len(corpus.documents)} documents, {len(chunks)} chunks "
         f"({len(chunks) - reused} embedded, {reused} reused), {params['type']} FAISS + BM25, {size / 1e6:.1f} MB, "
         f"{time.perf_counter() - start:.1f} s")
    if calibration is None:
        _say(f"abstention: fewer than {abstain.MIN_TITLES} titled documents to calibrate on; "
             f"retrieval.abstain_below auto uses {abstain.FALLBACK_THRESHOLD}")
    else:
        _say(f"abstention: below cosine {calibration['threshold']:.3f}, calibrated on {calibration['n_in_domain']} "
             f"title questions (answers {calibration['answered_in_domain']:.0%}) and "
             f"{calibration['n_off_topic']} off-topic ones (declines {calibration['declined_off_topic']:.0%})")
    return path


def _same_corpus(recorded: list[dict[str, Any]], current: list[dict[str, Any]]) -> bool:
    if len(recorded) != len(current):
        return False
    return all(r.get("spec") == c["spec"] and c["sha256"] is not None and r.get("sha256") == c["sha256"]
               for r, c in zip(recorded, current, strict=True))


def _previous(path: Path) -> dict[str, Any] | None:
    """The previous index's manifest, chunks and vectors (for reuse), or None if absent or damaged."""
    if not (path / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(path)
        verify_files(path, manifest)
        chunks = read_chunks(path, manifest)
        vectors = faiss_vectors(read_faiss(path, manifest))
    except (RagqaError, KeyError, ValueError, OSError) as exc:
        _say(f"[yellow]the existing index cannot be reused ({markup_safe(exc)}); building it from scratch[/yellow]")
        return None
    return {"manifest": manifest, "chunks": chunks, "vectors": vectors}


def _chunk_and_embed(corpus: Corpus, chunker: Chunker, model, batch_size: int, old: dict[str, Any] | None):
    """Chunks of all documents and their vectors; unchanged documents and chunks reuse the old ones."""
    old_docs: dict[tuple[str, str], list[int]] = {}
    old_vecs: dict[str, int] = {}
    if old is not None:
        for row, rec in enumerate(old["chunks"]):
            old_docs.setdefault((rec["doc_id"], rec["doc_hash"]), []).append(row)
            old_vecs.setdefault(hashlib.sha256(rec["embed_text"].encode()).hexdigest(), row)

    fresh = [d for d in corpus.documents if (d.id, d.hash) not in old_docs]
    fresh_chunks = dict(zip((d.id for d in fresh), chunker.chunk(fresh), strict=True)) if fresh else {}
    chunks: list[Chunk] = []
    source_row: list[int] = []  # row in the old vectors, or -1 when it must be embedded
    for doc in corpus.documents:
        if doc.id in fresh_chunks:
            for chunk in fresh_chunks[doc.id]:
                chunks.append(chunk)
                source_row.append(old_vecs.get(chunk.hash, -1))
        else:
            for row in old_docs[(doc.id, doc.hash)]:
                rec = old["chunks"][row]  # type: ignore[index]
                # source/url may have changed without changing the text: take them from the document
                chunks.append(Chunk(**{**rec, "source": doc.source, "url": doc.url}))
                source_row.append(row)
    dim = _dimension(model)
    vectors = np.empty((len(chunks), dim), dtype=np.float32)
    todo = [i for i, row in enumerate(source_row) if row < 0]
    if old is not None:
        keep = [i for i, row in enumerate(source_row) if row >= 0]
        vectors[keep] = old["vectors"][[source_row[i] for i in keep]]
    vectors[todo] = embed(model, [chunks[i].embed_text for i in todo], batch_size)
    return chunks, vectors, len(chunks) - len(todo)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"ragqa": __version__, "python": sys.version.split()[0]}
    for pkg in ("faiss-cpu", "bm25s", "llama-index-core", "sentence-transformers", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _write(tmp: Path, cfg, corpus: Corpus, chunker: Chunker, model, chunks: list[Chunk], vectors: np.ndarray,
           params: dict[str, Any], fields: dict[str, Any], settings: dict[str, Any],
           last_ingest: dict[str, Any], abstention: dict[str, Any] | None) -> None:
    import faiss

    faiss.write_index(build_faiss(vectors, cfg.index.index_type, params), str(tmp / FAISS_FILE))
    build_bm25([c.embed_text for c in chunks], tmp / BM25_DIR)
    with open(tmp / CHUNKS_FILE, "w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(json.dumps(chunk.record(), ensure_ascii=False) + "\n")
    files = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(tmp.rglob("*")) if f.is_file()}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": now,
        "embedder": {"name": cfg.model.embedder, "dim": int(vectors.shape[1]),
                     "max_seq_length": int(model.max_seq_length), "normalized": True},
        "chunking": {"splitter": "llama_index.core.node_parser.SentenceSplitter",
                     "tokenizer": f"embedder ({cfg.model.embedder})", "chunk_size": chunker.size,
                     "chunk_overlap": chunker.overlap, "requested_chunk_size": cfg.index.chunk_size,
                     "title_prefix": "title line (<= chunk_size/4 tokens) + chunk text"},
        "settings": settings,
        "index": params,
        "bm25": {"library": "bm25s", "stopwords": BM25_STOPWORDS, "stemmer": BM25_STEMMER,
                 "token_pattern": BM25_TOKEN_PATTERN},
        "fields": fields,
        "corpus": corpus.sources,
        "counts": {"documents": len(corpus.documents), "chunks": len(chunks)},
        "versions": _versions(),
        "last_ingest": last_ingest,
        "abstention": abstention,
        "files": files,
    }
    manifest["checksum"] = _manifest_checksum(manifest)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------- stats


def print_stats(name: str) -> None:
    """Counts, sizes and the manifest's main fields of an index (checksums verified)."""
    from rich.console import Console
    from rich.table import Table

    path = index_dir(name)
    where = existing_index(path)
    if where is None:
        raise RagqaError(f"no index at {path}: run `ragqa ingest --index {name}` first")
    manifest = read_manifest(where)
    verify_files(where, manifest)
    # Every value below comes from files on disk (corpus paths, the manifest): cells are Text, never markup.
    table = Table(title=plain(f"index {where}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")

    def add(field: str, value: str) -> None:
        table.add_row(plain(field), plain(value))

    emb, chunking, counts = manifest["embedder"], manifest["chunking"], manifest["counts"]
    add("documents / chunks", f"{counts['documents']} / {counts['chunks']}")
    add("embedder", f"{emb['name']} (dim {emb['dim']}, max_seq_length {emb['max_seq_length']})")
    add("chunking", f"{chunking['chunk_size']} tokens, overlap {chunking['chunk_overlap']}")
    add("FAISS", json.dumps(manifest["index"]))
    add("created", manifest["created"])
    add("last ingest", json.dumps(manifest["last_ingest"]))
    for src in manifest["corpus"]:
        skipped = sum(src.get("skipped", {}).values())
        add("corpus", f"{src['spec']}: {src['documents']} documents, {skipped} skipped, "
                      f"sha256 {str(src.get('sha256'))[:12]}")
    total = 0
    for rel, meta in manifest["files"].items():
        total += meta["bytes"]
        add(f"file {rel}", f"{meta['bytes'] / 1e6:.2f} MB")
    add("total size", f"{total / 1e6:.2f} MB (checksums ok)")
    add("versions", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    Console().print(table)
