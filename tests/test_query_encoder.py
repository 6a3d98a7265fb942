"""Query embedding backends: torch and the ONNX export give encode's vector; the export is cached, verified,
re-made when damaged, and refused for embedders it cannot reproduce."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from ragqa import query_encoder
from ragqa.errors import RagqaError
from ragqa.query_encoder import load_query_encoder

QUERIES = ("my baby's bottom is sore and red", "psoriasis", "x" * 3000)  # the long one is truncated like encode


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_both_backends_give_encodes_vector(embedder, backend):
    encoder = load_query_encoder(embedder, backend)
    assert encoder.backend == backend
    for query in QUERIES:
        expected = embedder.encode([query], normalize_embeddings=True, convert_to_numpy=True)[0]
        got = encoder.embed(query)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5


def test_export_is_cached_and_a_damaged_file_is_exported_again(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    monkeypatch.setattr(query_encoder, "_ONNX", weakref.WeakKeyDictionary())  # no session from earlier tests
    before = embedder.encode(list(QUERIES), normalize_embeddings=True)
    first = load_query_encoder(embedder, "onnx")
    # the export leaves the torch model as it was: eval mode (no dropout), the same vectors
    assert not embedder[0].auto_model.training
    assert np.abs(embedder.encode(list(QUERIES), normalize_embeddings=True) - before).max() < 1e-6
    assert load_query_encoder(embedder, "auto") is first  # one session per loaded embedder
    [cached] = (tmp_path / "onnx").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    query_encoder._ONNX.clear()
    load_query_encoder(embedder, "onnx")  # a new process: loads the cached file, exports nothing
    assert cached.stat().st_mtime_ns == stamp and len(list((tmp_path / "onnx").iterdir())) == 1
    cached.write_bytes(b"not an onnx graph")
    query_encoder._ONNX.clear()
    encoder = load_query_encoder(embedder, "onnx")
    assert cached.stat().st_size > 1_000_000
    expected = embedder.encode([QUERIES[0]], normalize_embeddings=True)[0]
    assert np.abs(encoder.embed(QUERIES[0]) - expected).max() < 1e-5


def test_an_embedder_onnx_cannot_reproduce_falls_back_or_fails_clearly(embedder):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    projected = SentenceTransformer(modules=[embedder[0], embedder[1], Dense(384, 16)], device="cpu")
    with pytest.raises(RagqaError, match=r"query_encoder=onnx: embedder modules .*Dense.*query_encoder=torch"):
        load_query_encoder(projected, "onnx")
    encoder = load_query_encoder(projected, "auto")
    assert encoder.backend == "torch" and encoder.embed("acne").shape == (16,)
