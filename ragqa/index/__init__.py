"""Indexes: chunking (chunking.py), embedding (embed.py), BM25 (bm25.py), the folder's manifest, lock and
recovery (manifest.py) and `ragqa ingest` itself (build.py). The vectors go to a ragqa.store backend.

The names below are the package's API (ingest, stats, the folder and its files); the modules hold the rest.
"""

from ragqa.index.bm25 import BM25_DIR, bm25_tokenize, build_bm25, load_bm25
from ragqa.index.build import ingest, print_stats
from ragqa.index.chunking import Chunk, Chunker
from ragqa.index.embed import configure_llama_index, dimension, embed
from ragqa.index.manifest import (
    CHUNKS_FILE,
    MANIFEST,
    existing_index,
    index_dir,
    index_lock,
    manifest_checksum,
    read_chunks,
    read_manifest,
    verify_files,
)

__all__ = [
    "BM25_DIR", "CHUNKS_FILE", "MANIFEST", "Chunk", "Chunker", "bm25_tokenize", "build_bm25", "configure_llama_index",
    "dimension", "embed", "existing_index", "index_dir", "index_lock", "ingest", "load_bm25", "manifest_checksum",
    "print_stats", "read_chunks", "read_manifest", "verify_files",
]
