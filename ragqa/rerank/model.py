"""A cross-encoder reranker at inference: P(passage answers question) for (question, passage) pairs, batched.

Backends, as for the query encoder (ragqa.query_encoder, whose export and cache this shares):
- torch: sentence-transformers' CrossEncoder.predict.
- onnx: the same BertForSequenceClassification through ONNX Runtime on CPU, exported once from the loaded
  safetensors weights, cached by a hash of them and checked against torch on probe pairs before use. `auto` takes
  onnx on CPU when that all works, torch otherwise.
- onnx-int8: the export's int8 twin (ONNX Runtime dynamic quantization), for machines whose int8 kernels are fast
  (AVX-512 VNNI); checked against torch with a looser bound (MAX_DIFF_INT8), since its scores move by design.
- openvino-int8: the export quantized statically (weights and activations; ragqa.rerank.openvino) and run by
  OpenVINO, the fastest of them on those machines; checked like onnx-int8.

Scores are the model's sigmoid (one logit, a trained ragqa reranker or a hub ms-marco-style cross-encoder); the
answer_relevance metric uses them as P(relevant). A passage is read as its title line and text (`passage_text`), as
the embedder reads it at ingest.

A ragqa reranker whose card has a `first_stage_temperature` T (ragqa.rerank.train) ranks candidates by its logit
+ their dense cosine / T (`Reranker.rank_logits`): the cross-encoder's reading and the first stage's, summed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragqa.errors import RagqaError, first_line
from ragqa.rerank.registry import CARD, DEFAULT, TRAIN_COMMAND, find_reranker, reranker_roots

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PROBES = (
    ("What causes acne?", "Acne develops when oil and dead skin cells plug the hair follicles."),
    ("Is psoriasis contagious?", "Scabies is caused by a mite that burrows into the skin and spreads by contact."),
    ("x", "y"),
)
MAX_DIFF = 1e-4
"""An exported graph whose probe scores stray further from torch's (in probability) is not used."""
MAX_DIFF_INT8 = 0.1
"""The same for the int8 graphs (onnx-int8, openvino-int8), whose scores move by design: a graph further off is
broken. Real pairs move by about 0.01-0.04; the degenerate probe ('x', 'y') by up to 0.06 under openvino-int8,
whose activation scales were fitted on real question-passage pairs."""
COMPILED = ("onnx", "onnx-int8", "openvino-int8")
"""The backends that run the cross-encoder outside torch (`auto` takes onnx when it works)."""
BATCH = 32


def sigmoid(x) -> np.ndarray:
    """The logistic function in float64, so that combined rank logits whose sigmoids are near 1 keep their order."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return sigmoid(x).astype(np.float32)


def passage_text(passage) -> str:
    """What the reranker reads of a passage (training and inference alike): its title line, then its text."""
    title = (getattr(passage, "title", "") or "").strip()
    return f"{title}\n{passage.text}" if title else passage.text


class Reranker:
    """A one-logit cross-encoder; `scores` runs it through a compiled graph (`backend` in COMPILED) or torch.

    first_stage_temperature: None, or T to rank candidates by logit + dense cosine / T (`rank_logits`).
    abstention: None, or the card's relevance calibration (ragqa.abstain.calibrate_relevance) of the best
    passage's rank logit."""

    def __init__(self, model, name: str, backend: str = "auto", batch_size: int = BATCH,
                 first_stage_temperature: float | None = None, abstention: dict | None = None):
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.first_stage_temperature = first_stage_temperature
        self.abstention = abstention
        self.session = None
        self.direct = False
        self.inputs: tuple[str, ...] = ()
        self.backend = "torch"
        if backend == "torch":
            return
        try:
            self._use_compiled(backend)
        except RagqaError as exc:
            if backend in COMPILED:
                raise RagqaError(f"retrieval.rerank_backend={backend}: {exc}; use retrieval.rerank_backend=torch") \
                    from None
            log.info("reranker: torch (%s)", exc)

    def _structure(self) -> tuple[object, tuple[str, ...]]:
        import torch

        model = self.model
        if model.device.type != "cpu":
            raise RagqaError(f"the reranker runs on {model.device.type}; ONNX Runtime is used on CPU only")
        names = [type(module).__name__ for module in model]
        if names != ["Transformer"] or model.num_labels != 1:
            raise RagqaError(f"reranker modules {names} with {model.num_labels} labels are not one Transformer "
                             "with one logit")
        if not isinstance(model.activation_fn, torch.nn.Sigmoid):
            raise RagqaError(f"reranker activation {type(model.activation_fn).__name__} is not Sigmoid")
        features = model.preprocess([PROBES[0]])
        inputs = tuple(name for name in INPUTS if name in features)
        extra = {k for k, v in features.items() if hasattr(v, "shape")} - set(inputs)
        if "input_ids" not in inputs or "attention_mask" not in inputs or extra:
            raise RagqaError(f"tokenizer inputs {sorted(features)} are not {', '.join(INPUTS)}")
        return model.model, inputs

    def _use_compiled(self, backend: str) -> None:
        """Run the cross-encoder as `backend` (auto: onnx) once its probe scores match torch's."""
        from ragqa.query_encoder import onnx_export, onnx_session

        backend = "onnx" if backend == "auto" else backend
        hf_model, inputs = self._structure()
        example = self.model.preprocess([PROBES[0], ("acne", "a short passage")])  # padded: the mask stays
        threads = os.cpu_count() or 1
        if backend == "openvino-int8":
            from ragqa.rerank.openvino import openvino_session

            session = openvino_session(lambda: onnx_export(hf_model, example, inputs, "logits", "reranker"),
                                       self.model.preprocess, inputs, threads)
        else:
            session = onnx_session(hf_model, example, inputs, "logits", "reranker", threads=threads,
                                   int8=backend == "onnx-int8")
        self.session, self.inputs = session, inputs
        self.direct = self._direct_matches()
        want = _sigmoid(self._torch_logits(PROBES))
        got = _sigmoid(self._compiled_logits(PROBES))
        diff = float(np.abs(got - want).max())
        limit = MAX_DIFF if backend == "onnx" else MAX_DIFF_INT8
        if diff > limit:
            self.session = None
            raise RagqaError(f"{backend} reranker scores differ from torch's (max {diff:.2e} > {limit})")
        self.backend = backend

    def _torch_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch

        out = self.model.predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False,
                                 convert_to_numpy=True, activation_fn=torch.nn.Identity())
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _features(self, pairs: Sequence[tuple[str, str]], direct: bool | None = None) -> dict[str, np.ndarray]:
        """The compiled graph's inputs for `pairs`: CrossEncoder's tokenization and truncation. CrossEncoder.preprocess
        checks modalities and returns torch tensors, 1-4 ms of a 40 ms rerank of 20 candidates; its tokenizer
        called directly with the same settings gives the same ids (`direct`, default self.direct: checked on probe
        pairs at load)."""
        if self.direct if direct is None else direct:
            encoded = self.model.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True,
                                           truncation=True, max_length=self.model.max_length, return_tensors="np")
            return {name: np.asarray(encoded[name], dtype=np.int64) for name in self.inputs}
        features = self.model.preprocess(list(pairs))
        return {name: features[name].numpy() for name in self.inputs}

    def _direct_matches(self) -> bool:
        probes = [*PROBES, (PROBES[0][0], " ".join(["Psoriasis is an immune condition."] * 40))]  # truncated
        want = self._features(probes, direct=False)
        try:
            got = self._features(probes, direct=True)
        except Exception:  # noqa: BLE001 - a tokenizer without pair or numpy support: use preprocess
            return False
        return all(got[name].shape == want[name].shape and (got[name] == want[name]).all() for name in self.inputs)

    def _compiled_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        # Batches of similar length (sorted by characters): less padding, the same scores.
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            logits = self.session.run(None, self._features([pairs[i] for i in rows]))[0]
            out[rows] = logits[:, 0]
        return out

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The relevance logit of each (question, text) pair, as float32."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return self._compiled_logits(pairs) if self.session is not None else self._torch_logits(pairs)

    def scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(relevant) in [0, 1] for each (question, text) pair, as float32."""
        return _sigmoid(self.logits(pairs))

    def rank_logits(self, query: str, passages: Sequence) -> np.ndarray:
        """The logit to rank first-stage candidates (ragqa Passages) by, float64: the cross-encoder's logit of the
        passage read as `passage_text`, plus, with a first_stage_temperature T, the passage's dense cosine / T
        (Passage.scores['dense'], which the Retriever sets on every candidate). The best one is what relevance-based
        abstention scores (ragqa.abstain.relevance)."""
        pairs = [(query, passage_text(p)) for p in passages]
        logits = self.logits(pairs).astype(np.float64)
        if self.first_stage_temperature is not None:
            logits = logits + np.array([p.scores.get("dense", 0.0) for p in passages]) / self.first_stage_temperature
        return logits

    def rank_scores(self, query: str, passages: Sequence) -> np.ndarray:
        """The sigmoid of rank_logits, float64 (so that combined scores near 1 keep their order)."""
        return sigmoid(self.rank_logits(query, passages))

def reranker_location(name: str) -> tuple[str, str]:
    """(where to load from, display name) for a trained reranker name, a folder or a hub id."""
    if name == DEFAULT and find_reranker(DEFAULT) is None:
        looked = " and ".join(str(root / DEFAULT) for root in reranker_roots())
        raise RagqaError(f"no trained reranker (looked in {looked}); train it with `{TRAIN_COMMAND}`, "
                         "or set retrieval.rerank to a cross-encoder folder or hub id")
    trained = find_reranker(name)
    if trained is not None:
        return str(trained), name
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), path.name
    if path.exists():
        raise RagqaError(f"reranker {path} is a file; give a cross-encoder folder (with safetensors weights)")
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        return name, name
    raise RagqaError(f"reranker '{name}' not found: a trained reranker name (`ragqa models`), a cross-encoder "
                     f"folder, or a hub id such as cross-encoder/ms-marco-MiniLM-L6-v2 (needs network); "
                     f"train one with `{TRAIN_COMMAND}`")


def load_reranker(name: str, device: str = "cpu", backend: str = "auto") -> Reranker:
    """A Reranker from a trained name (`default`: rerankers/default), a local folder or a hub id (safetensors)."""
    from sentence_transformers import CrossEncoder

    location, shown = reranker_location(name)
    local = Path(location).is_dir()
    if local and not any(Path(location).glob("*.safetensors")):
        raise RagqaError(f"reranker {location}: no safetensors weights (ragqa never loads pickle .bin files); "
                         f"retrain it with `{TRAIN_COMMAND}`")
    try:
        model = CrossEncoder(location, device=device, trust_remote_code=False, local_files_only=local,
                             model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise RagqaError(f"reranker '{name}' could not be loaded ({first}); give a trained reranker name, a local "
                         "folder, or a hub id with network access") from None
    if model.num_labels != 1:
        raise RagqaError(f"reranker '{name}' has {model.num_labels} output labels; a reranker has one relevance "
                         "logit (an NLI judge is not a reranker)")
    temperature, abstention = _card_settings(location)
    return Reranker(model, shown, backend, first_stage_temperature=temperature, abstention=abstention)


def read_card(folder: str | Path) -> dict | None:
    """The reranker.json card of a ragqa reranker folder as a dict (None for other folders and hub ids)."""
    import json

    card = Path(folder) / CARD
    if not card.is_file():
        return None
    try:
        value = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RagqaError(f"reranker card {card} is unreadable ({first_line(exc)}); retrain it with "
                         f"`{TRAIN_COMMAND}`") from None
    if not isinstance(value, dict):
        raise RagqaError(f"reranker card {card} is not a JSON object; retrain it with `{TRAIN_COMMAND}`")
    return value


def _card_settings(location: str) -> tuple[float | None, dict | None]:
    """The card's first_stage_temperature and relevance calibration (`abstention`) of a ragqa reranker folder
    (None for others and for older cards)."""
    card = read_card(location) or {}
    where = Path(location) / CARD
    value = card.get("first_stage_temperature")
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise RagqaError(f"reranker card {where}: first_stage_temperature {value!r} is not a positive number")
    abstention = card.get("abstention")
    if abstention is not None and not (isinstance(abstention, dict) and all(
            isinstance(abstention.get(key), int | float) and not isinstance(abstention.get(key), bool)
            for key in ("scale", "bias", "threshold"))):
        raise RagqaError(f"reranker card {where}: abstention has no numeric scale, bias and threshold; recalibrate "
                         "it with `ragqa rerank calibrate`")
    return (None if value is None else float(value)), abstention
