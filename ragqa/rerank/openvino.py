"""retrieval.rerank_backend=openvino-int8: the cross-encoder quantized to int8, weights and activations, by NNCF's
post-training quantization and run by OpenVINO on CPU.

Why beside onnx-int8: ONNX Runtime's dynamic quantization measures every activation's range on each call and runs
attention, LayerNorm and GELU as separate fp32 kernels; static quantization fixes the activation scales once, on
calibration pairs, and OpenVINO runs the int8 graph fused. On an AVX-512 VNNI machine (2 cores), 20 pairs of 64
tokens through MiniLM-L6 take about 164 ms in fp32 (ONNX Runtime), 77 ms with onnx-int8 and 54 ms here (README,
Rerank).

Calibration pairs: ragqa/data/rerank_calibration.jsonl, made from the starter corpus (our own text): each starter
question with its gold passage and with a passage of another condition, cut near the 64-token pairs the reranker
scores, so that the scales see relevant and irrelevant pairs alike. The converted model is cached under
<cache>/rerankers/, keyed by the fp32 ONNX export it is converted from (itself named by a hash of the weights),
the calibration file and the openvino and nncf versions; its manifest of sizes and sha256 is checked on every load
(ragqa.engine.check_cache) and a damaged or stale folder is converted again, atomically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ragqa.engine import (MODEL_FILES, check_cache, key_digest, missing_packages, no_telemetry, stdout_to_stderr,
                          write_manifest)
from ragqa.errors import RagqaError, first_line
from ragqa.files import atomic_dir, recover

QUANTIZE_VERSION = "1"
"""Part of the cache key: bump when the quantization recipe changes."""
CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "rerank_calibration.jsonl"
CALIBRATION_BATCH = 8


class OpenVINOSession:
    """A compiled int8 cross-encoder with ONNX Runtime's `run` interface, so Reranker batches it the same way."""

    def __init__(self, compiled, inputs: tuple[str, ...]):
        self.compiled = compiled
        self.inputs = inputs
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()  # an infer request runs one call at a time (serve may rerank from threads)

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        with self.lock:
            self.request.infer({name: feeds[name] for name in self.inputs})
            return [self.request.get_output_tensor(0).data.copy()]


def calibration_pairs() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["question"], row["passage"]) for row in rows]


def cache_key(onnx_path: Path) -> dict[str, str]:
    return {"onnx": onnx_path.stem, "calibration": hashlib.sha256(CALIBRATION.read_bytes()).hexdigest(),
            "openvino": importlib.metadata.version("openvino"), "nncf": importlib.metadata.version("nncf"),
            "version": QUANTIZE_VERSION}


def cache_folder(key: dict) -> Path:
    from ragqa.models import cache_dir

    return cache_dir() / "rerankers" / f"openvino-int8-{key_digest(key)}"


def _quantize(onnx_path: Path, folder: Path, preprocess: Callable, inputs: tuple[str, ...]) -> None:
    import nncf
    import openvino as ov

    pairs = calibration_pairs()
    batches = []
    for start in range(0, len(pairs), CALIBRATION_BATCH):
        features = preprocess(pairs[start : start + CALIBRATION_BATCH])  # the reranker's own tokenization
        batches.append({name: features[name].numpy() for name in inputs})
    model = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(batches),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
    ov.save_model(model, folder / MODEL_FILES[0], compress_to_fp16=False)


def openvino_session(export: Callable[[], Path], preprocess: Callable, inputs: tuple[str, ...],
                     threads: int) -> OpenVINOSession:
    """The int8 twin of the cross-encoder's fp32 ONNX export (`export()` returns its path, exporting it when it
    is missing), converted once (cached) and compiled for CPU with `threads` threads; preprocess is the
    cross-encoder's tokenization of (question, passage) pairs. The caller verifies its scores against torch.
    Raises RagqaError when openvino or nncf is missing or the conversion fails."""
    missing = [name for name in missing_packages() if name in ("openvino", "nncf")]
    if missing:
        raise RagqaError(f"{' and '.join(missing)} not installed (pip install 'ragqa[fast]')")
    onnx_path = export()
    key = cache_key(onnx_path)
    folder = cache_folder(key)
    with no_telemetry():
        import openvino as ov

        if check_cache(folder, key) is not None:
            recover(folder)  # temp folders of a conversion that was killed
            for attempt in (1, 2):  # a damaged cached export is exported again, once
                try:
                    with atomic_dir(folder, option="RAGQA_CACHE folder") as tmp, stdout_to_stderr():
                        _quantize(onnx_path, tmp, preprocess, inputs)
                        write_manifest(tmp, key, f"reranker {onnx_path.name}, int8 (NNCF post-training quantization)")
                    break
                except RagqaError:
                    raise
                except Exception as exc:  # noqa: BLE001 - converter and nncf raise many types
                    if attempt == 2:
                        raise RagqaError(f"the openvino int8 reranker could not be made: {first_line(exc)[:300]}") \
                            from None
                    onnx_path.unlink(missing_ok=True)
                    onnx_path = export()
        compiled = ov.Core().compile_model(str(folder / MODEL_FILES[0]), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            # f32 where the graph is not int8, as the scores were checked with; bf16 was no faster here.
            "INFERENCE_PRECISION_HINT": "f32"})
    return OpenVINOSession(compiled, inputs)
