"""Chunks: sentence-aware pieces of documents (llama-index SentenceSplitter), sized in the embedder's own tokens."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
from dataclasses import asdict, dataclass
from typing import Any

from ragqa.corpus import Document


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
