"""Shared fixtures. Everything runs offline on the packaged models; shared data is optional."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "corpora" / "starter"
SHARED_DATA = ROOT.parent / "shared" / "data"


# --- offline guard: no test, and no `ragqa` subprocess a test starts, may reach another host -----------------
NETGUARD = Path(__file__).resolve().parent / "netguard"
os.environ["RAGQA_NETGUARD"] = "1"  # read by netguard/sitecustomize.py in every Python subprocess
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAGQA_NETGUARD_LOG", os.path.join(tempfile.mkdtemp(prefix="ragqa-netguard-"), "blocked.log"))
sys.path.insert(0, str(NETGUARD))
import ragqa_netguard  # noqa: E402

ragqa_netguard.install()


@pytest.fixture(autouse=True)
def _offline():
    """Fails the test if it, or a process it started, tried to reach the network (even if that was caught)."""
    log = Path(os.environ["RAGQA_NETGUARD_LOG"])
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists() and log.stat().st_size > start:
        with open(log, encoding="utf-8") as fh:
            fh.seek(start)
            pytest.fail("tried to reach the network:\n" + fh.read()[-3000:])


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the development workplace)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run `python -m ragqa ARGS` in a subprocess, the way a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ragqa", *args],
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory):
    """A faithfulness judge trained for real on in-domain pairs of the shipped starter corpus only (no shared
    data needed, seeded): ~1 min on a quiet 2-core machine, once per session; tests using it are slow."""
    from ragqa.config import load_config
    from ragqa.judge.train import train_judge

    out = tmp_path_factory.mktemp("judges") / "tiny"
    cfg = load_config(None, [
        f"judge.output={out}", "judge.nli=null", f"judge.corpus=[{STARTER / 'passages.jsonl'}]",
        "judge.max_domain=240", "judge.window_words=25", "judge.max_length=64", "judge.epochs=3",
        "judge.lr=2e-4", "judge.batch_size=16", "model.device=cpu", "judge.seed=0",
    ])
    return train_judge(cfg)


@pytest.fixture(scope="session")
def generator():
    from ragqa.models import load_generator

    return load_generator("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny_smollm2(tmp_path_factory) -> Path:
    """A model folder for model.base: SmolLM2-135M's own configuration (vocabulary, head size, 3 query heads per
    KV head, rope, norms, tied embeddings, special tokens) cut to 2 layers of width 192, with random weights
    (seeded) and SmolLM2's tokenizer. It loads, generates and converts in seconds where the real model takes
    minutes; its answers are noise, but the same noise from every engine.

    The weights have std 0.1 (initializer_range; the config's is 0.02): wide logit gaps, so float rounding does
    not flip greedy picks, and attention outputs that outweigh the token embedding, so the next token depends on
    the context (a broken KV cache changes the answer)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from ragqa.models import generator_dir, load_tokenizer

    real = generator_dir("smollm2-135m")
    config = AutoConfig.from_pretrained(real)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    config.update({"num_hidden_layers": 2, "num_key_value_heads": 1, "num_attention_heads": group,
                   "hidden_size": group * head_dim, "head_dim": head_dim, "intermediate_size": 512,
                   "initializer_range": 0.1})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer("smollm2-135m").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedder():
    from ragqa.models import load_embedder

    return load_embedder("minilm", device="cpu")


# --- ingest helpers: small corpora, configs and checks shared by test_index.py and test_store.py -------------
SKIN_DOCS = [
    {"id": "acne", "title": "Acne", "text": "Acne causes blackheads, whiteheads and pimples on the face and back. "
     "Benzoyl peroxide and topical retinoids are first-line treatments."},
    {"id": "scabies", "title": "Scabies", "text": "Scabies is an itchy rash caused by tiny mites that burrow "
     "into the skin. Permethrin cream treats it, and close contacts are treated at the same time."},
    {"id": "sunburn", "title": "Sunburn", "text": "Sunburn is red, painful skin after too much ultraviolet "
     "light. Cool compresses and moisturiser ease it; sunscreen prevents it."},
    {"id": "warts", "title": "Warts", "text": "Warts are rough bumps caused by the human papillomavirus. "
     "Salicylic acid or freezing with liquid nitrogen removes them."},
]
EXTRA_DOCS = [{"id": "lice", "title": "Head lice", "text": "Head lice are small insects living on the scalp. "
               "A fine-tooth comb and a lotion remove them."}]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def ingest_cfg(idx, corpus, *extra: str):
    """A config that ingests the `corpus` files into the index folder `idx` on the CPU; `extra`: --set overrides."""
    from ragqa.config import load_config

    return load_config(None, [f"index.name={idx}", f"index.corpus={json.dumps(corpus)}", "model.device=cpu",
                              *extra])


class Counting:
    """Counts the texts the embedder encodes (wraps the real model; nothing is faked)."""

    def __init__(self, model, monkeypatch):
        self.texts = 0
        original = model.encode

        def encode(texts, *args, **kwargs):
            self.texts += 1 if isinstance(texts, str) else len(texts)
            return original(texts, *args, **kwargs)

        monkeypatch.setattr(model, "encode", encode)


def rewrite_manifest(path, change=lambda m: None):
    """Recompute the file checksums and the manifest's own, so that only what `change` did disagrees."""
    from ragqa import index
    from ragqa.files import sha256_file

    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    manifest["files"] = {rel: {"bytes": (path / rel).stat().st_size, "sha256": sha256_file(path / rel)}
                         for rel in manifest["files"]}
    manifest["checksum"] = index.manifest_checksum(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@contextlib.contextmanager
def chat_server(reply):
    """A minimal OpenAI-compatible chat endpoint on 127.0.0.1: `reply(body, headers)` gives the message content.
    Yields (base URL, the Authorization header of each request, in order)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            seen.append(self.headers.get("Authorization"))
            data = json.dumps({"choices": [{"message": {"content": reply(body, self.headers)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
