"""`ragqa ingest`: build or incrementally update an index, written atomically under a writer lock.

Layout of indexes/NAME/ (nothing is pickled):
  faiss.index      the vectors (index.store=faiss; ragqa/store/ names each backend's files)
  bm25/            bm25s's own format: CSC score matrix as .npy (allow_pickle=False) + vocab/params JSON
  chunks.jsonl     one chunk per line, row i = vector i = BM25 doc i
  manifest.json    embedder, chunking, corpus files with sha256, counts, versions, file checksums, the vector
                   store, and a checksum of the manifest itself (edits are detected on load)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ragqa import __version__, abstain
from ragqa.corpus import Corpus, Fields, fingerprint, load_corpus
from ragqa.errors import RagqaError
from ragqa.files import atomic_dir, check_output_dir, sha256_file, write_error
from ragqa.index.bm25 import BM25_DIR, bm25_record, build_bm25
from ragqa.index.chunking import Chunk, Chunker
from ragqa.index.embed import configure_llama_index, dimension, embed
from ragqa.index.manifest import (
    CHUNKS_FILE,
    FORMAT,
    MANIFEST,
    find_index,
    index_dir,
    index_lock,
    manifest_checksum,
    read_chunks,
    read_manifest,
    recover_index,
    verify_files,
)
from ragqa.store import RECORD_FILE, VectorStore, backend, backend_of, load_store, same_place
from ragqa.terminal import markup_safe, plain, say


def _settings(cfg) -> dict[str, Any]:
    """What the stored vectors depend on: a change rebuilds (with a message)."""
    return {"embedder": cfg.model.embedder, "chunk_size": cfg.index.chunk_size,
            "chunk_overlap": cfg.index.chunk_overlap}


def ingest(cfg, embedder=None, *, overwrite: bool = False) -> Path:
    """Build or incrementally update the index named by cfg.index.name; return its directory.

    `embedder` may be an already loaded SentenceTransformer for cfg.model.embedder (saves a load). A folder
    that is not an index is refused unless `overwrite` (--overwrite) says to replace it.
    """
    path = index_dir(cfg.index.name)
    store_cls = backend(cfg.index.store)
    params = store_cls.params(cfg)  # settings the backend cannot honour are refused before anything is written
    store_cls.preflight(params)
    # Backups are recovered under the lock (_recover), where no other ingest can be mid-swap.
    check_output_dir(path, "index", (MANIFEST,), option="--index", overwrite=overwrite, recover_backup=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with index_lock(path):
            return _ingest_locked(cfg, path, embedder, store_cls, params)
    except OSError as exc:
        raise write_error(path, exc.errno, "--index", reason=f"{exc.strerror or exc} ({exc.filename or path})",
                          action=f"ingest into {path} failed", kept=_kept(path)) from None


def _kept(path: Path) -> str | None:
    return "index" if (path / MANIFEST).is_file() else None


def _store_record(path: Path) -> dict[str, Any] | None:
    """The vector store the index now at `path` points to, or None when there is no readable index."""
    try:
        manifest = read_manifest(path)
    except RagqaError:
        return None
    return manifest.get("store") or {"backend": backend_of(manifest)}


def _remove_store(record: dict[str, Any]) -> None:
    """Remove a replaced or abandoned store's data outside the index folder; failing that, say what is left."""
    try:
        backend(record.get("backend", "")).remove(record)
    except Exception as exc:  # noqa: BLE001 - the index itself is fine: a leftover is reported, not fatal
        say(f"[yellow]warning: could not remove the replaced vector store {markup_safe(json.dumps(record))} "
            f"({markup_safe(exc)}); remove it by hand[/yellow]")


def _recover(path: Path) -> None:
    """Under the lock: undo what killed runs left (recover_index), including the server-side data of their
    stores, which the temp folders and backups name in RECORD_FILE."""
    leftovers = []
    for file in (*path.parent.glob(f".{path.name}.tmp-*/{RECORD_FILE}"),
                 *path.parent.glob(f".{path.name}.old*/{RECORD_FILE}")):
        with contextlib.suppress(OSError, ValueError):
            leftovers.append(json.loads(file.read_text(encoding="utf-8")))
    recover_index(path)
    current = _store_record(path)
    for record in leftovers:
        if not same_place(record, current):  # a backup put back in place (recover) is the index again
            _remove_store(record)


def _ingest_locked(cfg, path: Path, embedder, store_cls: type[VectorStore], params: dict[str, Any]) -> Path:
    start = time.perf_counter()
    _recover(path)
    old = _previous(path)
    settings = _settings(cfg)
    fingerprints = [fingerprint(spec) for spec in cfg.index.corpus]
    fields = {"text": cfg.index.text_field, "id": cfg.index.id_field, "title": cfg.index.title_field,
              "max_doc_chars": cfg.index.max_doc_chars}
    if old is not None and old["manifest"]["settings"] == settings and old["manifest"]["index"] == params \
            and old["manifest"]["fields"] == fields and _same_corpus(old["manifest"]["corpus"], fingerprints):
        say(f"{markup_safe(path)}: up to date ({old['manifest']['counts']['chunks']} chunks), nothing to embed")
        return path

    corpus = load_corpus(cfg.index.corpus, Fields(cfg.index.text_field, cfg.index.id_field, cfg.index.title_field),
                         cfg.index.max_doc_chars)
    for warning in corpus.warnings:
        say(f"[yellow]warning:[/yellow] {markup_safe(warning)}")
    if embedder is None:
        from ragqa.models import load_embedder

        embedder = load_embedder(cfg.model.embedder, cfg.model.device)
    configure_llama_index(embedder)
    chunker = Chunker(embedder, cfg.index.chunk_size, cfg.index.chunk_overlap)

    replaced = _store_record(path)  # also when damaged: its server collection is still to be removed
    if old is not None and old["manifest"]["settings"] != settings:
        was, now = old["manifest"]["settings"], settings
        changed = ", ".join(f"{k} {was.get(k)} -> {now[k]}" for k in now if was.get(k) != now[k])
        say(f"[yellow]{markup_safe(changed)}: rebuilding the whole index[/yellow]")
        old = None
    chunks, vectors, reused = _chunk_and_embed(corpus, chunker, embedder, cfg.index.embed_batch_size, old)
    calibration = abstain.calibrate(lambda qs: embedder.encode(qs, normalize_embeddings=True), vectors,
                                    [d.title for d in corpus.documents])

    # Two renames swap it in; a crash between them is undone by _recover (existing_index reads the backup).
    store: VectorStore | None = None
    try:
        with atomic_dir(path, option="--index", action=f"ingest into {path} failed", kept=_kept(path)) as tmp:
            store = store_cls.create(tmp, int(vectors.shape[1]), params, path)
            _write(tmp, store, cfg, corpus, chunker, embedder, chunks, vectors, params, fields, settings,
                   {"embedded_chunks": len(chunks) - reused, "reused_chunks": reused,
                    "seconds": round(time.perf_counter() - start, 2)}, calibration)
    except BaseException:
        if store is not None and not same_place(_store_record(path), store.record):  # never swapped in: garbage
            store.abort()
        raise
    finally:
        if store is not None:
            store.close()
    if replaced is not None and not same_place(replaced, store.record):
        _remove_store(replaced)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    say(f"{markup_safe(path)}: {len(corpus.documents)} documents, {len(chunks)} chunks "
        f"({len(chunks) - reused} embedded, {reused} reused), {markup_safe(store.describe())} + BM25, "
        f"{size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s")
    if calibration is None:
        say(f"abstention: fewer than {abstain.MIN_TITLES} titled documents to calibrate on; "
            f"retrieval.abstain_below auto uses {abstain.FALLBACK_THRESHOLD}")
    else:
        say(f"abstention: below cosine {calibration['threshold']:.3f}, calibrated on {calibration['n_in_domain']} "
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
        store = load_store(path, manifest)
        try:
            vectors = store.vectors()
        finally:
            store.close()
    except (RagqaError, KeyError, ValueError, OSError) as exc:
        say(f"[yellow]the existing index cannot be reused ({markup_safe(exc)}); building it from scratch[/yellow]")
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
    dim = dimension(model)
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
    for pkg in ("faiss-cpu", "qdrant-client", "bm25s", "llama-index-core", "sentence-transformers", "torch",
                "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _write(tmp: Path, store: VectorStore, cfg, corpus: Corpus, chunker: Chunker, model, chunks: list[Chunk],
           vectors: np.ndarray, params: dict[str, Any], fields: dict[str, Any], settings: dict[str, Any],
           last_ingest: dict[str, Any], abstention: dict[str, Any] | None) -> None:
    if store.external:  # first, so that a kill from here on leaves the name of what to remove
        (tmp / RECORD_FILE).write_text(json.dumps(store.record, indent=2), encoding="utf-8")
    store.add(vectors)
    record = store.save()
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
        "store": record,
        "bm25": bm25_record(),
        "fields": fields,
        "corpus": corpus.sources,
        "counts": {"documents": len(corpus.documents), "chunks": len(chunks)},
        "versions": _versions(),
        "last_ingest": last_ingest,
        "abstention": abstention,
        "files": files,
    }
    manifest["checksum"] = manifest_checksum(manifest)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------- stats


def print_stats(name: str) -> None:
    """Counts, sizes and the manifest's main fields of an index (checksums and the vector store verified)."""
    from rich.console import Console
    from rich.table import Table

    where = find_index(name)
    manifest = read_manifest(where)
    verify_files(where, manifest)
    store = load_store(where, manifest)
    try:
        store_lines = store.stats()
    finally:
        store.close()
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
    add(f"vectors ({backend_of(manifest)})", json.dumps(manifest["index"]))
    for field, value in store_lines.items():
        add(field, value)
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
