"""Query embeddings: the normalized vector sentence-transformers' `encode` gives, for one query, with the least latency.

Two backends behind one `embed(query)`:
- torch: the embedder's own modules under inference_mode.
- onnx: the same transformer through ONNX Runtime, about 3x sooner for one short query on 2 cores (MiniLM: ~5 vs
  ~13-17 ms p50, benchmarks/retrieval.py), because torch eager spends most of that time in per-operator overhead.

sentence-transformers has an ONNX backend of its own, but it goes through optimum-onnx, which pins
transformers<4.58 (we run 5.x). So the export is ours: the transformer already loaded (from safetensors) is exported
once with torch.onnx, cached under <cache>/onnx/ by a hash of its weights, and checked against the torch vectors
before it is used. `auto` takes onnx on CPU when that all works and torch otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Literal

import numpy as np

from ragqa.errors import RagqaError, first_line

Backend = Literal["auto", "onnx", "torch"]
log = logging.getLogger(__name__)

EXPORT_VERSION = "1"
"""Part of the cache key: bump when the export itself changes."""
QUANTIZE_VERSION = "1"
"""Part of the int8 file's name: bump when the quantization changes."""
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLINGS = ("mean", "cls")
PROBES = ("What causes acne?", "Is psoriasis contagious between family members who live in the same house?", "x")
MIN_COSINE = 0.9999
"""An exported graph whose probe vectors stray further from torch's is not used."""
_ONNX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""One verified session per loaded embedder, however many retrievers share it."""


def _normalized(vec: np.ndarray) -> np.ndarray:
    return (vec / max(float(np.linalg.norm(vec)), 1e-12)).astype(np.float32)


class TorchQueryEncoder:
    """The embedder's modules called directly: one short input needs none of encode's batching (length sorting,
    chunking, numpy round trips). 11.8 vs 13.1 ms p50 for `encode` on 2 cores."""

    backend = "torch"

    def __init__(self, embedder):
        self.embedder = embedder

    def embed(self, query: str) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        features = batch_to_device(self.embedder.preprocess([query]), self.embedder.device)
        with torch.inference_mode():
            vec = self.embedder(features)["sentence_embedding"][0].float().cpu().numpy()
        return _normalized(vec)


class OnnxQueryEncoder:
    """The embedder's transformer as an ONNX Runtime session, pooled like its Pooling module."""

    backend = "onnx"

    def __init__(self, embedder, session, inputs: tuple[str, ...], pooling: str):
        self.embedder = embedder
        self.session = session
        self.inputs = inputs
        self.pooling = pooling

    def embed(self, query: str) -> np.ndarray:
        features = self.embedder.preprocess([query])  # the same tokenization and truncation as encode
        hidden = self.session.run(None, {name: features[name].numpy() for name in self.inputs})[0][0]
        if self.pooling == "cls":
            return _normalized(hidden[0])
        mask = features["attention_mask"][0].numpy()[:, None].astype(np.float32)
        return _normalized((hidden * mask).sum(0) / max(float(mask.sum()), 1e-9))


def load_query_encoder(embedder, backend: Backend = "auto"):
    """The encoder for `backend`; `auto` is onnx where it is supported and verified, torch otherwise.

    Raises RagqaError when `onnx` was asked for and cannot be had (the reason, and the `torch` fallback)."""
    if backend == "torch":
        return TorchQueryEncoder(embedder)
    if embedder in _ONNX:
        return _ONNX[embedder]
    try:
        encoder = _ONNX[embedder] = _onnx_encoder(embedder)
        return encoder
    except RagqaError as exc:
        if backend == "onnx":
            raise RagqaError(f"retrieval.query_encoder=onnx: {exc}; use retrieval.query_encoder=torch") from None
        log.info("query encoder: torch (%s)", exc)
        return TorchQueryEncoder(embedder)


def _structure(embedder) -> tuple[object, str, tuple[str, ...]]:
    """(transformer, pooling mode, input names) when the embedder is Transformer -> Pooling [-> Normalize]."""
    if embedder.device.type != "cpu":
        raise RagqaError(f"the embedder runs on {embedder.device.type}; ONNX Runtime is used on CPU only")
    names = [type(module).__name__ for module in embedder]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise RagqaError(f"embedder modules {names} are not Transformer, Pooling[, Normalize]")
    pooling = getattr(embedder[1], "pooling_mode", None)
    if pooling not in POOLINGS:
        raise RagqaError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
    features = embedder.preprocess(["probe"])
    inputs = tuple(name for name in INPUTS if name in features)
    extra = {k for k, v in features.items() if hasattr(v, "shape")} - set(inputs)
    if "input_ids" not in inputs or "attention_mask" not in inputs or extra:
        raise RagqaError(f"tokenizer inputs {sorted(features)} are not {', '.join(INPUTS)}")
    return embedder[0].auto_model, pooling, inputs


def onnx_export(model, example: dict, inputs: tuple[str, ...], output: str, what: str) -> Path:
    """The cached fp32 ONNX export of `model` -> `output` (see onnx_session), exported now when it is missing: the
    source of other runtimes' conversions (ragqa.rerank.openvino). Raises RagqaError naming `what`."""
    path = export_path(model, inputs, output)
    if not path.exists():
        try:
            _export(model, example, inputs, output, path)
        except Exception as exc:  # noqa: BLE001 - tracer and exporter raise many types
            raise RagqaError(f"ONNX export of the {what} failed: {first_line(exc)}") from None
    return path


def export_path(model, inputs: tuple[str, ...], output: str) -> Path:
    """Where the fp32 ONNX export of `model` is cached: <cache>/onnx/, named by a hash of the weights."""
    import torch

    from ragqa.models import cache_dir

    digest = hashlib.sha256(f"{EXPORT_VERSION} {torch.__version__} {' '.join(inputs)} {output}".encode())
    for name, tensor in model.state_dict().items():  # ~0.1 s for MiniLM: keyed by the weights, wherever they came from
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:24]}.onnx"


def _export(model, example: dict, inputs: tuple[str, ...], output: str, path: Path) -> None:
    """torch.onnx export of the model's `output` (last_hidden_state, logits) with dynamic batch and sequence axes,
    written atomically."""
    import torch

    class Output(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return getattr(self.model(**dict(zip(inputs, tensors, strict=True))), output)

    # The exporter puts the wrapper (and so the model) back in the wrapper's mode when done: it must be eval, or
    # the torch path would run with dropout on afterwards. The tracer freezes Python branches on tensor values
    # ("no padding, so no mask"): the example is a real, padded batch so that the graph keeps the mask. Eager
    # attention traces to plain ONNX ops; the torch path gets its own implementation back afterwards.
    attention = model.config._attn_implementation
    tensors = tuple(example[name] for name in inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        model.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter notices: the graph is verified instead
            axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {output: {0: "batch"}}
            torch.onnx.export(Output().eval(), tensors, tmp, input_names=list(inputs), output_names=[output],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        model.set_attn_implementation(attention)
        Path(tmp).unlink(missing_ok=True)


def onnx_session(model, example: dict, inputs: tuple[str, ...], output: str, what: str, threads: int = 4,
                 int8: bool = False):
    """An ONNX Runtime CPU session for `model` -> `output`, exported once and cached under <cache>/onnx/ by a hash
    of the weights. A cached file that does not load (damaged, truncated) is exported again, once. `example` is a
    padded batch of the model's tokenizer output (see _export). The caller verifies the session against torch.
    int8: run the export's int8 twin (ONNX Runtime's dynamic quantization: int8 weights per output channel, int8
    activations quantized per batch), made once from the fp32 export and cached beside it.

    Raises RagqaError (naming `what`) when onnxruntime is missing or the export fails."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RagqaError("onnxruntime is not installed (pip install onnxruntime onnx)") from None
    exported = export_path(model, inputs, output)
    path = exported.with_name(f"{exported.stem}.int8-{QUANTIZE_VERSION}.onnx") if int8 else exported
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = min(os.cpu_count() or 1, threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy threads beside generation
    for attempt in (1, 2):  # a damaged cached file is exported (and quantized) again, once
        if not path.exists():
            onnx_export(model, example, inputs, output, what)
            if int8:
                try:
                    _quantize(exported, path)
                except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; any failure means torch
                    raise RagqaError(f"ONNX export of the {what} failed: {first_line(exc)}") from None
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors for a damaged file
            path.unlink(missing_ok=True)
            if int8:
                exported.unlink(missing_ok=True)  # the int8 file is made from it: it may be the damaged one
            if attempt == 2:
                raise RagqaError(f"the exported ONNX {what} {path} does not load: {type(exc).__name__}") from None
    raise AssertionError("unreachable")


def _quantize(source: Path, path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of the fp32 export `source`, written atomically to `path`. Signed
    int8 weights per output channel: what the VNNI int8 kernels of AVX-512 machines run fastest."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(prefix=".quantize-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _onnx_encoder(embedder) -> OnnxQueryEncoder:
    model, pooling, inputs = _structure(embedder)
    # A 20-token query gains nothing from more than 4 threads.
    example = embedder.preprocess(["Which creams help a sore red rash?", "acne"])
    session = onnx_session(model, example, inputs, "last_hidden_state", "embedder", threads=4)
    encoder = OnnxQueryEncoder(embedder, session, inputs, pooling)
    reference = TorchQueryEncoder(embedder)
    cosine = min(float(encoder.embed(q) @ reference.embed(q)) for q in PROBES)
    if cosine < MIN_COSINE:
        raise RagqaError(f"ONNX vectors differ from torch's (cosine {cosine:.6f} < {MIN_COSINE})")
    return encoder
