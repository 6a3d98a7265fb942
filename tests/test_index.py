"""`ragqa ingest`: chunk limits, manifest, incremental updates, atomicity, locking, corruption detection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXTRA_DOCS, ROOT, SKIN_DOCS, Counting, ingest_cfg, rewrite_manifest, run_cli, write_jsonl

from ragqa import index
from ragqa.index import build as index_build
from ragqa.corpus import Document, load_corpus
from ragqa.errors import RagqaError
from ragqa.retrieve import Retriever
from ragqa.files import sha256_file

@pytest.fixture
def corpus_file(tmp_path):
    return write_jsonl(tmp_path / "docs.jsonl", SKIN_DOCS)


def build(tmp_path, embedder, corpus, *extra):
    cfg = ingest_cfg(tmp_path / "idx", corpus if isinstance(corpus, list) else [corpus], *extra)
    return index.ingest(cfg, embedder=embedder), cfg


def answers(path, embedder):
    r = Retriever.load(path, embedder_model=embedder)
    return [(p.chunk_id, round(p.score, 5)) for q in ("itchy mites", "rough bumps virus")
            for p in r.retrieve(q, k=3, mode="hybrid")]


def test_index_dir_names():
    assert index.index_dir("default") == Path("indexes/default")
    assert index.index_dir("out/my") == Path("out/my")
    with pytest.raises(RagqaError):
        index.index_dir("..")


def test_chunks_never_exceed_the_embedders_limit(embedder):
    long_title = "Very long title about many skin conditions " * 20
    run_on = " ".join(f"word{i}" for i in range(3000))  # no sentence boundary at all
    docs = load_corpus([str(ROOT / "corpora/starter/passages.jsonl")]).documents[:10]
    docs += [Document("runon", run_on, long_title), Document("short", "Tiny.", "T")]
    tok = embedder.tokenizer
    for size in (64, 256, 10_000):
        chunker = index.Chunker(embedder, size, 16)
        assert chunker.size == min(size, embedder.max_seq_length - 2)
        for doc, chunks in zip(docs, chunker.chunk(docs), strict=True):
            assert chunks and [c.position for c in chunks] == list(range(len(chunks)))
            for c in chunks:
                n = len(tok(c.embed_text)["input_ids"])
                assert n <= embedder.max_seq_length and n <= chunker.size + 2, (doc.id, size, n)
                assert c.chunk_id == f"{doc.id}#{c.position}" and c.embed_text.endswith(c.text)
        runon_chunks = chunker.chunk([docs[-2]])[0]
        assert len(runon_chunks) > 1
        # nothing of the document is lost: every word is in some chunk
        words = {w for c in runon_chunks for w in c.text.split()}
        assert words == set(run_on.split())


def test_manifest_contents(tmp_path, embedder, corpus_file):
    path, _ = build(tmp_path, embedder, corpus_file, "index.chunk_size=48", "index.chunk_overlap=8")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["embedder"] == {"name": "minilm", "dim": 384, "max_seq_length": 256, "normalized": True}
    assert manifest["chunking"]["chunk_size"] == 48 and manifest["chunking"]["chunk_overlap"] == 8
    assert "SentenceSplitter" in manifest["chunking"]["splitter"]
    assert manifest["counts"]["documents"] == 4 and manifest["counts"]["chunks"] >= 4
    corpus = manifest["corpus"][0]
    assert corpus["spec"] == corpus_file and corpus["sha256"] == sha256_file(Path(corpus_file))
    assert set(manifest["files"]) == {"faiss.index", "chunks.jsonl", "bm25/data.csc.index.npy",
                                      "bm25/indices.csc.index.npy", "bm25/indptr.csc.index.npy",
                                      "bm25/vocab.index.json", "bm25/params.index.json"}
    for rel, meta in manifest["files"].items():
        assert meta["sha256"] == sha256_file(path / rel) and meta["bytes"] == (path / rel).stat().st_size
    assert {"faiss-cpu", "bm25s", "llama-index-core", "sentence-transformers"} <= set(manifest["versions"])
    assert manifest["created"] and manifest["last_ingest"]["embedded_chunks"] == manifest["counts"]["chunks"]
    assert not any(p.suffix in (".pkl", ".pickle") for p in path.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "docs.jsonl", "idx"]  # no temp dirs left


def test_incremental_noop_add_file_and_rebuild(tmp_path, embedder, corpus_file, monkeypatch, capsys):
    counter = Counting(embedder, monkeypatch)
    path, _ = build(tmp_path, embedder, corpus_file)
    first = counter.texts
    assert first == json.loads((path / "manifest.json").read_text())["counts"]["chunks"]

    build(tmp_path, embedder, corpus_file)  # unchanged corpus: zero embedding calls
    assert counter.texts == first
    assert "up to date" in capsys.readouterr().err

    build(tmp_path, embedder, corpus_file, "index.index_type=hnsw")  # new FAISS kind: vectors reused
    assert counter.texts == first
    assert json.loads((path / "manifest.json").read_text())["index"]["type"] == "hnsw"

    extra = write_jsonl(tmp_path / "extra.jsonl", EXTRA_DOCS)
    build(tmp_path, embedder, [corpus_file, extra], "index.index_type=hnsw")  # only the new file's chunks
    manifest = json.loads((path / "manifest.json").read_text())
    assert counter.texts - first == 1 == manifest["last_ingest"]["embedded_chunks"]
    assert manifest["counts"] == {"documents": 5, "chunks": first + 1}
    r = Retriever.load(path, embedder_model=embedder)
    assert r.retrieve("insects on the scalp", k=1, mode="dense")[0].doc_id == "lice"

    before = counter.texts
    capsys.readouterr()
    build(tmp_path, embedder, [corpus_file, extra], "index.chunk_size=40", "index.chunk_overlap=4")
    err = capsys.readouterr().err
    assert "chunk_size 256 -> 40" in err and "rebuilding the whole index" in err
    manifest = json.loads((path / "manifest.json").read_text())
    assert counter.texts - before == manifest["counts"]["chunks"] > first + 1


def test_failure_mid_write_keeps_the_old_index(tmp_path, embedder, corpus_file, monkeypatch):
    path, _ = build(tmp_path, embedder, corpus_file)
    expected = answers(path, embedder)
    real_write = index_build._write

    def write_then_fail(tmp, *args, **kwargs):
        real_write(tmp, *args, **kwargs)
        (tmp / "faiss.index").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_build, "_write", write_then_fail)
    extra = write_jsonl(tmp_path / "extra.jsonl", EXTRA_DOCS)
    with pytest.raises(RagqaError, match="ingest into .*idx failed: No space left on device.*index is unchanged"):
        build(tmp_path, embedder, [corpus_file, extra])
    assert answers(path, embedder) == expected
    assert not list(tmp_path.glob(".idx.tmp-*"))


def test_crash_between_the_two_renames_is_recovered(tmp_path, embedder, corpus_file):
    path, _ = build(tmp_path, embedder, corpus_file)
    expected = answers(path, embedder)
    os.rename(path, tmp_path / ".idx.old")  # the state a kill between the renames of _swap_in leaves
    assert answers(path, embedder) == expected  # load falls back to the backup
    build(tmp_path, embedder, corpus_file)  # ingest restores it, and has nothing to embed
    assert path.is_dir() and not (tmp_path / ".idx.old").exists()
    assert answers(path, embedder) == expected


def test_lock_blocks_a_second_writer_and_stale_locks_are_taken_over(tmp_path, embedder, corpus_file, capsys):
    path = tmp_path / "idx"
    with index.index_lock(path):
        with pytest.raises(RagqaError, match=rf"index .*idx is being written by PID {os.getpid()} "):
            build(tmp_path, embedder, corpus_file)
    assert not path.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".idx.lock").write_text(f"{dead.pid}\n")  # left behind by a killed ingest
    build(tmp_path, embedder, corpus_file)
    assert f"recovered a stale lock left by PID {dead.pid}" in capsys.readouterr().err
    assert (tmp_path / ".idx.lock").read_text() == ""


def test_corruption_is_detected_on_load(tmp_path, embedder, corpus_file):
    path, _ = build(tmp_path, embedder, corpus_file)
    pristine = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def restore():
        for p, data in pristine.items():
            p.write_bytes(data)

    def load_error():
        with pytest.raises(RagqaError) as exc:
            Retriever.load(path, embedder_model=embedder)
        assert "\n" not in str(exc.value) and "ragqa ingest" in str(exc.value)
        return str(exc.value)

    faiss_file = path / "faiss.index"
    faiss_file.write_bytes(pristine[faiss_file][:-100])
    assert "faiss.index is missing or truncated" in load_error()
    restore()
    data = bytearray(pristine[faiss_file])
    data[-5] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    assert "faiss.index does not match its checksum" in load_error()
    restore()
    manifest = json.loads(pristine[path / "manifest.json"])
    manifest["embedder"]["name"] = "other"
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert "manifest.json was modified" in load_error()
    restore()
    (path / "manifest.json").write_text("{not json")
    assert "manifest.json is corrupted" in load_error()
    restore()
    # chunk store out of sync with the vectors, checksums recomputed so that only the counts disagree
    lines = (path / "chunks.jsonl").read_text().splitlines(keepends=True)
    (path / "chunks.jsonl").write_text("".join(lines[:-1]))
    rewrite_manifest(path, lambda m: None)
    assert "chunks.jsonl has" in load_error()
    rewrite_manifest(path, lambda m: m["counts"].update(chunks=len(lines) - 1))
    assert "faiss.index holds" in load_error()
    restore()
    Retriever.load(path, embedder_model=embedder)
    # a damaged index is rebuilt by the next ingest instead of being reused
    faiss_file.write_bytes(b"garbage")
    build(tmp_path, embedder, corpus_file)
    Retriever.load(path, embedder_model=embedder)


def test_bad_targets_and_empty_corpus_write_nothing(tmp_path, embedder, corpus_file):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RagqaError, match="exists and is a file"):
        index.ingest(ingest_cfg(tmp_path / "afile", [corpus_file]), embedder=embedder)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(RagqaError, match="is not a ragqa index"):
        index.ingest(ingest_cfg(other, [corpus_file]), embedder=embedder)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(RagqaError, match="no usable documents"):
        build(tmp_path, embedder, empty)
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.tmp-*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent(tmp_path, embedder, corpus_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RagqaError, match="ingest into .* failed: Permission denied"):
            index.ingest(ingest_cfg(ro / "idx", [corpus_file]), embedder=embedder)
    finally:
        ro.chmod(0o755)


def test_ids_with_dot_dot_never_become_paths(tmp_path, embedder):
    corpus = write_jsonl(tmp_path / "evil.jsonl", [{"id": "../../escape", "text": "Escaping ids are data."},
                                                  {"id": "/etc/passwd", "text": "Absolute ids are data."}])
    before = {p for p in tmp_path.parent.rglob("*")}
    path, _ = build(tmp_path, embedder, corpus)
    created = {p for p in tmp_path.parent.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path) for p in created)
    assert {p.name for p in path.iterdir()} == {"faiss.index", "bm25", "chunks.jsonl", "manifest.json"}
    r = Retriever.load(path, embedder_model=embedder)
    assert {p.chunk_id for p in r.retrieve("ids are data", k=2, mode="dense")} == {"../../escape#0",
                                                                                 "/etc/passwd#0"}


def test_hnsw_and_ivf_indexes_search(tmp_path, embedder, corpus_file):
    for kind in ("hnsw", "ivf"):
        path, _ = build(tmp_path, embedder, corpus_file, f"index.index_type={kind}")
        r = Retriever.load(path, embedder_model=embedder)
        assert r.retrieve("mites burrow in the skin", k=1, mode="dense")[0].doc_id == "scabies"
        assert r.manifest["index"]["type"] == kind


# ---------------------------------------------------------------------------- subprocess (slow) tests


@pytest.mark.slow
def test_cli_ingest_starter_corpus_end_to_end(tmp_path):
    idx = tmp_path / "starter"
    res = run_cli("ingest", "--index", str(idx), cwd=tmp_path)  # default corpus, found from any cwd
    assert res.returncode == 0, res.stderr
    assert "51 documents" in res.stderr
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == 51 and manifest["corpus"][0]["spec"] == "corpora/starter/passages.jsonl"
    stats = run_cli("ingest", "--index", str(idx), "--stats", cwd=tmp_path)
    assert stats.returncode == 0 and "checksums ok" in stats.stdout
    again = run_cli("ingest", "--index", str(idx), cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stderr
    bad = run_cli("ingest", "--index", str(tmp_path / "x"), "--corpus", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing.jsonl" in bad.stderr
    nostats = run_cli("ingest", "--index", str(tmp_path / "none"), "--stats")
    assert nostats.returncode == 2 and "run `ragqa ingest" in nostats.stderr


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# Points in a run's own progress to kill it at, each seen in the folder beside the index (see _ingest_locked and
# files.atomic_dir): the temp dir exists; it holds the vectors; it holds the manifest (written, not yet swapped);
# the old index has been renamed to its backup (between or just after the two renames).
KILL_POINTS = {
    "temp dir created": lambda tmps, backup: bool(tmps),
    "vectors written": lambda tmps, backup: any((t / "faiss.index").exists() for t in tmps),
    "manifest written": lambda tmps, backup: any((t / "manifest.json").exists() for t in tmps),
    "backup renamed": lambda tmps, backup: backup.exists(),
}


@pytest.mark.slow
def test_sigkill_mid_ingest_leaves_previous_index_intact(tmp_path, embedder):
    """SIGKILL at points taken from the run's progress (not fixed delays): the index left behind is the old one,
    byte for byte, or (a kill after the swap) the complete new one; at least one kill must land mid-write."""
    starter = str(ROOT / "corpora/starter/passages.jsonl")
    docs = write_jsonl(tmp_path / "docs.jsonl", SKIN_DOCS)
    path = tmp_path / "idx"
    args = [sys.executable, "-m", "ragqa", "ingest", "--index", str(path), "--corpus", docs, "--corpus", starter,
            "--device", "cpu"]
    landed = {}
    for point, reached in KILL_POINTS.items():
        build(tmp_path, embedder, docs)  # the old index (again: a kill after the swap leaves the new one)
        old, expected = _tree(path), answers(path, embedder)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmps = []
        while proc.poll() is None:
            tmps = list(tmp_path.glob(".idx.tmp-*"))
            if reached(tmps, tmp_path / ".idx.old"):
                proc.send_signal(signal.SIGSTOP)  # frozen: what is on disk now is what the kill interrupts
                break
            if not tmps:
                time.sleep(0.002)  # loading and embedding take seconds; from the temp dir on, poll without pause
        tmps = list(tmp_path.glob(".idx.tmp-*"))
        mid_write = proc.poll() is None and bool(tmps)  # the new index was not yet swapped in
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed[point] = "mid-write" if mid_write else "after the swap" if proc.returncode == -9 else "missed"
        where = index.existing_index(path)  # the index, or its backup after a kill between the two renames
        if mid_write:
            assert where is not None and _tree(where) == old, point
            assert answers(path, embedder) == expected, point
        else:
            assert Retriever.load(path, embedder_model=embedder).manifest["counts"]["documents"] == 55, point
    assert "mid-write" in landed.values(), f"no kill landed mid-write: {landed}"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    r = Retriever.load(path, embedder_model=embedder)
    assert r.manifest["counts"]["documents"] == 55
    assert not list(tmp_path.glob(".idx.tmp-*")) and not list(tmp_path.glob(".idx.old*"))
