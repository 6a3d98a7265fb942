"""Vector stores (ragqa/store/): the same suite for every backend.

FAISS and Qdrant in local mode run everywhere. The Qdrant server variants run when QDRANT_URL names a running
Qdrant server (e.g. QDRANT_URL=http://localhost:6333, key in QDRANT_API_KEY if it wants one) and are skipped,
with that reason, otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import EXTRA_DOCS, ROOT, SKIN_DOCS, STARTER, Counting, ingest_cfg, rewrite_manifest, run_cli, write_jsonl

from ragqa import index
from ragqa.errors import RagqaError
from ragqa.retrieve import Retriever
from ragqa.store import RECORD_FILE, backend, backends, load_store

QDRANT_URL = os.environ.get("QDRANT_URL")
NO_SERVER = "QDRANT_URL is not set: the Qdrant server variants need a running server (QDRANT_URL=http://HOST:6333)"
BACKENDS = ["faiss", "qdrant-local", pytest.param("qdrant-server", marks=pytest.mark.skipif(not QDRANT_URL,
                                                                                            reason=NO_SERVER))]
QDRANT = BACKENDS[1:]
DOCS = [d for d in SKIN_DOCS if d["id"] != "sunburn"]  # three documents: the point counts below say 3

def store_settings(kind: str) -> list[str]:
    if kind == "faiss":
        return ["index.store=faiss"]
    if kind == "qdrant-local":
        return ["index.store=qdrant"]
    # A fresh collection prefix per test: tests never see each other's (or anyone's) collections.
    return ["index.store=qdrant", f"index.store_url={QDRANT_URL}",
            f"index.qdrant_collection=ragqa-test-{uuid.uuid4().hex[:8]}"]


def make_cfg(path, corpus: list[str], kind: str, *extra: str):
    return ingest_cfg(path, corpus, *store_settings(kind), *extra)


def server_client():
    from qdrant_client import QdrantClient

    return QdrantClient(url=QDRANT_URL, api_key=os.environ.get("QDRANT_API_KEY") or None, check_compatibility=False)


# ------------------------------------------------------------------------- the interface, no embedder needed


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_store_interface(kind, index_type, tmp_path):
    """create / add (in two batches) / save / load / search / vectors / len, against numpy's exact answer."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    cfg = make_cfg(tmp_path / "idx", [], kind, f"index.index_type={index_type}")
    cls = backend(cfg.index.store)
    params = cls.params(cfg)
    folder = tmp_path / "idx"
    folder.mkdir()
    store = cls.create(folder, 16, params, folder)
    store.add(data[:100])
    store.add(data[100:])
    record = store.save()
    store.close()
    assert record["backend"] == cfg.index.store
    manifest = {"counts": {"chunks": 300}, "embedder": {"dim": 16}, "index": params, "store": record}
    loaded = load_store(folder, manifest)
    try:
        assert len(loaded) == 300
        assert np.array_equal(loaded.vectors(), data)  # bit for bit: no store renormalizes
        assert np.array_equal(loaded.vectors([7, 250, 3]), data[[7, 250, 3]])
        for q in data[:20] * 0.9 + data[20:40] * 0.1:
            truth = np.argsort(-(data @ q), kind="stable")[:10]
            found = loaded.search(q, 10)
            assert [row for row, _ in found] == truth.tolist()
            assert [s for _, s in found] == pytest.approx((data[truth] @ q).tolist(), abs=1e-5)
    finally:
        loaded.close()
        if kind == "qdrant-server":
            backend("qdrant").remove(record)


def test_records_of_one_collection_name_the_same_place():
    """The record a server store writes when created (0 points) and the one its manifest holds name the same
    collection: the crash cleanup must see them as one, or it would delete an index put back by recovery."""
    from ragqa.store import same_place

    created = {"backend": "qdrant", "url": "https://q:6333", "collection": "ragqa-x-1", "points": 0, "sha256": "e3"}
    saved = {**created, "points": 88, "sha256": "7f"}
    assert same_place(created, saved)
    assert not same_place(created, {**saved, "collection": "ragqa-x-2"})
    assert not same_place(created, {**saved, "url": "https://other:6333"})
    assert not same_place(created, None) and same_place(None, None)
    assert same_place({"backend": "faiss"}, {"backend": "faiss"})


def test_backends_are_the_store_modules():
    assert backends() == ["faiss", "qdrant"]
    with pytest.raises(RagqaError, match="unknown vector store 'nope'"):
        backend("nope")


# ------------------------------------------------------------------------------- the starter corpus, ingest


@pytest.fixture(scope="module")
def starter_faiss(tmp_path_factory, embedder):
    """The starter corpus, FAISS flat: the reference every backend must reproduce."""
    path = tmp_path_factory.mktemp("store") / "faiss"
    return index.ingest(make_cfg(path, [str(STARTER / "passages.jsonl")], "faiss"), embedder=embedder)


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in (STARTER / "qa.jsonl").read_text().splitlines()[:25]]


@pytest.mark.parametrize("kind", QDRANT)
def test_same_top_k_as_faiss_flat(kind, starter_faiss, tmp_path, embedder):
    path = tmp_path / "idx"
    shutil.copytree(starter_faiss, path)
    index.ingest(make_cfg(path, [str(STARTER / "passages.jsonl")], kind), embedder=embedder)
    reference = Retriever.load(starter_faiss, embedder_model=embedder)
    other = Retriever.load(path, embedder_model=embedder)
    try:
        # another store: the stored vectors move over, no chunk is embedded again
        assert other.manifest["last_ingest"]["embedded_chunks"] == 0
        assert other.manifest["store"]["backend"] == "qdrant" and other.manifest["counts"]["chunks"] == len(reference)
        for q in questions():
            for mode in ("dense", "hybrid"):
                want, got = reference.retrieve(q, k=10, mode=mode), other.retrieve(q, k=10, mode=mode)
                assert [p.chunk_id for p in got] == [p.chunk_id for p in want], (q, mode)
                assert [p.scores["dense"] for p in got] == pytest.approx([p.scores["dense"] for p in want], abs=1e-5)
    finally:
        other.store.close()
        if kind == "qdrant-server":
            backend("qdrant").remove(other.manifest["store"])


@pytest.mark.parametrize("kind", QDRANT)
def test_incremental_ingest(kind, tmp_path, embedder, monkeypatch, capsys):
    counter = Counting(embedder, monkeypatch)
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    path = tmp_path / "idx"
    index.ingest(make_cfg(path, [docs], kind), embedder=embedder)
    first = counter.texts
    record = json.loads((path / "manifest.json").read_text())["store"]
    assert first == record["points"] == 3

    index.ingest(make_cfg(path, [docs], kind), embedder=embedder)  # unchanged: nothing embedded or written
    assert counter.texts == first and "up to date" in capsys.readouterr().err
    assert json.loads((path / "manifest.json").read_text())["store"] == record

    extra = write_jsonl(tmp_path / "extra.jsonl", EXTRA_DOCS)
    index.ingest(make_cfg(path, [docs, extra], kind), embedder=embedder)  # only the new file's chunk
    manifest = json.loads((path / "manifest.json").read_text())
    assert counter.texts - first == 1 == manifest["last_ingest"]["embedded_chunks"]
    assert manifest["store"]["points"] == 4 and manifest["store"]["sha256"] != record["sha256"]
    r = Retriever.load(path, embedder_model=embedder)
    try:
        assert len(r.store) == 4
        assert r.retrieve("insects on the scalp", k=1, mode="dense")[0].doc_id == "lice"
        assert r.retrieve("rough bumps virus", k=1, mode="hybrid")[0].doc_id == "warts"
    finally:
        r.store.close()
    if kind == "qdrant-server":
        client = server_client()
        # the replaced collection is gone once the new manifest is in
        assert not client.collection_exists(record["collection"])
        assert client.collection_exists(manifest["store"]["collection"])
        backend("qdrant").remove(manifest["store"])
    else:
        # Local mode keeps only a safetensors file: nothing in an index folder is unpickled when it is opened.
        assert sorted(p.relative_to(path).as_posix() for p in (path / "qdrant").rglob("*")) == [
            "qdrant/vectors.safetensors"]
        assert "qdrant/vectors.safetensors" in manifest["files"]


def _load_error(path, embedder) -> str:
    with pytest.raises(RagqaError) as exc:
        Retriever.load(path, embedder_model=embedder)
    assert "\n" not in str(exc.value) and "ragqa ingest" in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize("kind", QDRANT)
def test_mismatch_with_the_manifest_is_refused(kind, tmp_path, embedder):
    from qdrant_client import models

    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    path = tmp_path / "idx"
    index.ingest(make_cfg(path, [docs], kind), embedder=embedder)
    record = json.loads((path / "manifest.json").read_text())["store"]
    if kind == "qdrant-local":
        from safetensors.numpy import load_file, save_file

        storage = path / "qdrant/vectors.safetensors"
        pristine = storage.read_bytes()
        storage.write_bytes(pristine[:-50] + bytes(50))
        assert "qdrant/vectors.safetensors does not match its checksum" in _load_error(path, embedder)
        storage.write_bytes(pristine)
        save_file({"vectors": load_file(str(storage))["vectors"][:2]}, str(storage))  # a point deleted
        assert "qdrant/vectors.safetensors is missing or truncated" in _load_error(path, embedder)
        rewrite_manifest(path)  # the files now agree with the manifest; the point count still does not
        assert "Qdrant collection chunks holds 2 points of dim 384, the manifest says 3" in _load_error(path,
                                                                                                         embedder)
        # An index in qdrant-client's own on-disk format (it pickles points) is refused, not opened.
        shutil.rmtree(path / "qdrant")
        (path / "qdrant").mkdir()
        (path / "qdrant/meta.json").write_text("{}")
        rewrite_manifest(path, lambda m: m["files"].update({"qdrant/meta.json": {}}) or m["files"].pop(
            "qdrant/vectors.safetensors"))
        assert "qdrant-client's on-disk storage (pickled points), which ragqa does not open" in _load_error(
            path, embedder)
    else:
        client = server_client()
        vector = np.zeros(384, dtype=np.float32)
        vector[0] = 1.0
        client.upsert(record["collection"], [models.PointStruct(id=1, vector=vector.tolist())], wait=True)
        assert "do not match the manifest's checksum" in _load_error(path, embedder)
        client.delete(record["collection"], points_selector=models.PointIdsList(points=[1]), wait=True)
        assert "holds 2 points of dim 384, the manifest says 3" in _load_error(path, embedder)
    # a damaged index is rebuilt from scratch by the next ingest, not reused
    index.ingest(make_cfg(path, [docs], kind), embedder=embedder)
    r = Retriever.load(path, embedder_model=embedder)
    assert len(r.store) == 3 and r.retrieve("itchy mites", k=1, mode="dense")[0].doc_id == "scabies"
    r.store.close()
    if kind == "qdrant-server":
        backend("qdrant").remove(r.manifest["store"])
        assert not server_client().collection_exists(record["collection"])


@pytest.mark.parametrize("kind", QDRANT)
def test_lock_and_a_second_process(kind, tmp_path, embedder):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    path = tmp_path / "idx"
    with index.index_lock(path):
        with pytest.raises(RagqaError, match=rf"index .*idx is being written by PID {os.getpid()} "):
            index.ingest(make_cfg(path, [docs], kind), embedder=embedder)
    assert not path.exists() and not list(tmp_path.glob(".idx.tmp-*"))
    index.ingest(make_cfg(path, [docs], kind), embedder=embedder)
    first = Retriever.load(path, embedder_model=embedder)
    second = Retriever.load(path, embedder_model=embedder)  # one process: both share one client
    assert second.retrieve("itchy mites", k=1)[0].doc_id == first.retrieve("itchy mites", k=1)[0].doc_id
    first.store.close()
    second.store.close()
    if kind == "qdrant-local":
        # Local mode takes no lock on the folder: another process (a second serve replica) opens the same
        # index while this one holds it open.
        held = Retriever.load(path, embedder_model=embedder)
        code = (f"from ragqa.retrieve import Retriever; r = Retriever.load({str(path)!r}); "
                "print(r.retrieve('itchy mites', k=1, mode='dense')[0].doc_id)")
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
        held.store.close()
        assert other.returncode == 0 and other.stdout.strip() == "scabies", other.stderr[-2000:]
    else:
        backend("qdrant").remove(json.loads((path / "manifest.json").read_text())["store"])


@pytest.mark.skipif(not QDRANT_URL, reason=NO_SERVER)
def test_a_killed_ingests_collection_is_removed_by_the_next(tmp_path, embedder):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    path = tmp_path / "idx"
    cfg = make_cfg(path, [docs], "qdrant-server")
    index.ingest(cfg, embedder=embedder)
    # what a kill mid-upload leaves: a temp folder naming a half-written collection
    cls = backend("qdrant")
    leftover = tmp_path / f".idx.tmp-999999-{uuid.uuid4().hex[:6]}"
    leftover.mkdir()
    orphan = cls.create(leftover, 384, cls.params(cfg), path)
    (leftover / RECORD_FILE).write_text(json.dumps(orphan.record))
    orphan.add(np.eye(384, dtype=np.float32)[:2])
    orphan.close()
    assert server_client().collection_exists(orphan.collection)
    index.ingest(cfg, embedder=embedder)  # up to date, and the leftover is cleaned up under the lock
    assert not leftover.exists() and not server_client().collection_exists(orphan.collection)
    backend("qdrant").remove(json.loads((path / "manifest.json").read_text())["store"])


def test_stats_names_the_store(tmp_path, embedder, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    path = tmp_path / "idx"
    index.ingest(make_cfg(path, [docs], "qdrant-local"), embedder=embedder)
    index.print_stats(str(path))
    out = capsys.readouterr().out
    assert "vectors (qdrant)" in out and "local mode" in out and "3 points" in out and "checksums ok" in out


# ------------------------------------------------------------------------------------- settings, one line


def test_bad_store_settings_are_one_line_and_write_nothing(tmp_path):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    idx = str(tmp_path / "idx")
    cases = [
        (["--store", "nope"], "index.store", "expected one of faiss, qdrant"),
        (["--store", "qdrant", "--index-type", "ivf"], "index.index_type: ivf is a FAISS index kind", "hnsw"),
        (["--store", "qdrant", "--store-url", "localhost:6333"], "is not an http(s) URL", "http://localhost:6333"),
        (["--store", "qdrant", "--store-url", "http://qdrant.example:6333"], "refusing to send the Qdrant API key "
         "in clear text to qdrant.example over http", "https"),
        (["--store", "qdrant", "--store-url", "https://qdrant.example:6333", "--set",
          "index.qdrant_write_consistency=3"], "index.qdrant_write_consistency (3) must be at most", "(1)"),
    ]
    for args, *expected in cases:
        res = run_cli("ingest", "--corpus", docs, "--index", idx, "--device", "cpu", *args,
                      env={"QDRANT_API_KEY": "secret-key"}, cwd=ROOT)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and all(e in lines[0] for e in expected), (args, lines)
        assert "secret-key" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]  # no index, lock or temp folder


def test_an_unreachable_server_fails_before_any_model_loads(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    res = run_cli("ingest", "--corpus", docs, "--index", str(tmp_path / "idx"), "--device", "cpu", "--store", "qdrant",
                  "--store-url", f"http://127.0.0.1:{port}", cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Qdrant server http://127.0.0.1:{port}: connecting failed")
    assert "is the server running" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]
