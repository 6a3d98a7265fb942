"""Fast CPU generation (`ask.engine`): the generator converted once to an OpenVINO model with int8 weights and run
by OpenVINO GenAI, for `ask`, `eval` and `serve`; torch stays the reference path.

Why OpenVINO GenAI: on the 2-core machines this project runs on it decoded 2-3x faster than torch fp32 and ~1.6x
faster than CTranslate2 int8 (whose per-token overhead dominated at this model size), with a C++ generation loop,
greedy and repetition-penalty decoding like transformers', streaming, and batched generation of left-padded
prompts (benchmarks/engine.py measures them side by side).

Why our own export: optimum-intel's exporter pins transformers<5.6 (ragqa runs 5.2x) and pulls a torchvision that
does not match torch. The export here uses only openvino and nncf, which depend on neither: the loaded transformers
model (an adapter merged into it first, with peft's merge_and_unload) is traced by `openvino.convert_model` with
its KV cache as explicit inputs and outputs, made stateful the way OpenVINO GenAI expects (a `beam_idx` input and
ReadValue/Assign pairs, as optimum-intel does), each layer's parallel projections fused, and its weights
compressed by `nncf.compress_weights`. On CPU,
GenAI runs it with paged attention by default (rewriting its attention and KV state into its own) and falls back
to the stateful model; tests/test_engine.py checks both against torch. The prompt reaches the engine as the token
ids ragqa's own tokenizer made (never re-tokenized text), so special tokens that prompt.py defused stay defused,
and the ids are exactly the torch path's.

Converted models are cached under <cache>/engines/, keyed by hashes of the base weights, the adapter's weights and
config, the weight format, the openvino version and EXPORT_VERSION. A manifest records each file's size and sha256
and is checked on every load: a damaged or stale folder is converted again (atomically: ragqa/files.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ragqa.errors import RagqaError, first_line
from ragqa.files import atomic_dir, recover, sha256_file
from ragqa.terminal import printable

ENGINES = ("auto", "torch", "openvino")
WEIGHTS = ("int8", "int4", "fp32")
EXPORT_VERSION = "2"
"""Part of the cache key: bump when the export itself changes."""
MANIFEST = "ragqa_engine.json"
MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")
PACKAGES = ("openvino", "openvino_genai", "nncf")
INSTALL_HINT = "pip install 'ragqa[fast]'"


def note(text: str) -> None:
    """One line on stderr (stdout may carry `ragqa ask --json` answers)."""
    print(printable(text), file=sys.stderr, flush=True)


@contextlib.contextmanager
def no_telemetry():
    """openvino and nncf send usage telemetry unless the user opted out in a file in their home folder, or the
    process looks like CI: `import openvino` alone sends an event. ragqa is offline-first and never phones home,
    so every import and conversion happens with CI=true (their documented CI switch), restored afterwards. The
    telemetry object is a process-wide singleton, so once it is made declined it stays so."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


@contextlib.contextmanager
def stdout_to_stderr():
    """nncf draws its progress bars and tables on stdout, which may carry `ragqa ask --json` answers or a
    benchmark's JSON: while it runs, what it prints goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def missing_packages() -> list[str]:
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


def choose(engine: str, device: str, quantize: str, combined: bool = False) -> tuple[str, str | None]:
    """(engine to use, why `auto` fell back to torch or None). `openvino` named explicitly and not usable is a
    RagqaError naming the fix; `auto` takes openvino on CPU when it is installed, torch otherwise."""
    if engine == "torch":
        return "torch", None
    reason = None
    if device != "cpu":
        reason = f"model.device is {device}: the openvino engine runs on CPU only"
    elif combined:  # the cache is keyed by one adapter's weights; a weighted combination is not converted
        reason = "a combination of adapters runs on torch only"
    elif quantize != "none":
        reason = f"ask.quantize={quantize} is torch's dynamic quantization (the openvino engine has ask.engine_weights)"
    elif missing := missing_packages():
        reason = f"{', '.join(missing)} not installed ({INSTALL_HINT})"
    if reason is None:
        return "openvino", None
    if engine == "openvino":
        raise RagqaError(f"ask.engine=openvino: {reason}; use ask.engine=torch")
    return "torch", f"ask.engine=auto: generating with torch ({reason})"


# ------------------------------------------------------------------------------------ cache keys


def weights_digest(model) -> str:
    """sha256 of a torch model's tensors (names and bytes; tied weights once): keyed by the weights themselves,
    wherever they were loaded from (the query encoder's ONNX cache does the same)."""
    digest, seen = hashlib.sha256(), set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def adapter_digest(adapter: str | Path) -> str:
    """sha256 over the adapter's weights and its config (rank, alpha and targets change the merged model too)."""
    from ragqa.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    path = Path(adapter)
    return hashlib.sha256(
        f"{sha256_file(path / ADAPTER_WEIGHTS)} {sha256_file(path / ADAPTER_CONFIG)}".encode()).hexdigest()


def cache_key(base_sha: str, adapter_sha: str | None, weights: str) -> dict[str, str | None]:
    with no_telemetry():
        import openvino

    return {"export_version": EXPORT_VERSION, "openvino": openvino.__version__, "weights": weights,
            "base_sha256": base_sha, "adapter_sha256": adapter_sha}


def key_digest(key: dict) -> str:
    """A cache key's short hash: the name of the folder its conversion is cached in."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cache_folder(key: dict) -> Path:
    from ragqa.models import cache_dir

    return cache_dir() / "engines" / f"openvino-{key['weights']}-{key_digest(key)}"


def check_cache(folder: Path, key: dict) -> str | None:
    """None when `folder` holds a complete conversion for `key`; otherwise what is wrong with it."""
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{MANIFEST} is missing or unreadable"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "it was converted from other weights or by another version (stale)"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(MODEL_FILES) - set(files):
        return f"{MANIFEST} lists no model files"
    for name, want in files.items():
        path = folder / name
        try:
            if not isinstance(want, dict) or path.stat().st_size != want.get("size"):
                return f"{name} is missing or has the wrong size (damaged)"
            if sha256_file(path) != want.get("sha256"):
                return f"{name} does not match its recorded sha256 (damaged)"
        except OSError:
            return f"{name} is missing or unreadable (damaged)"
    return None


# ------------------------------------------------------------------------------------ export


def _traceable(model):
    """The model as a function of (input_ids, attention_mask, position_ids, *past keys and values) returning
    (logits, *present keys and values): the form OpenVINO's stateful transformation turns into internal state.

    The attention mask is built here as an explicit 4D additive mask (causal, and padding from the 2D mask), which
    transformers passes through untouched: its own mask helpers pick branches on tensor values (no padding -> no
    mask) that a trace would freeze."""
    import torch
    from transformers import DynamicCache

    layers = model.config.num_hidden_layers

    class Traceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for i, layer in enumerate(cache.layers):
                # Set directly: update() would start from an empty tensor, which does not trace to a fixed rank.
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.device, layer.dtype, layer.is_initialized = input_ids.device, past[0].dtype, True
            queries, keys = input_ids.shape[1], attention_mask.shape[1]
            key_pos = torch.arange(keys, device=input_ids.device)
            query_pos = torch.arange(queries, device=input_ids.device) + (keys - queries)
            allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & attention_mask[:, None, None, :].bool()
            mask = torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = out.past_key_values
            return (out.logits, *[t for i in range(layers) for t in (present.layers[i].keys,
                                                                      present.layers[i].values)])

    return Traceable().eval()


def _make_stateful(ov_model, kv_in: list[str], kv_out: list[str], kv_shape: list[int]) -> None:
    """The KV cache inputs/outputs become internal state, reordered by a `beam_idx` input and zero-initialised to
    the batch of input_ids: the model interface OpenVINO GenAI's LLMPipeline runs (optimum-intel's recipe)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    for name in kv_in:  # heads and head size fixed: the CPU plugin needs them to allocate the state
        ov_model.input(name).get_node().set_partial_shape(ov.PartialShape(kv_shape))
    ov_model.validate_nodes_and_infer_types()
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in kv_in:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()
        gather = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(kv_in, kv_out, strict=True)))
    rows = opset13.gather(opset13.shape_of(ov_model.input("input_ids"), output_type="i64"),
                          opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [rows] + [opset13.constant(np.array([d.min_length], dtype=np.int64))
                             for d in list(op.get_output_partial_shape(0))[1:]]
            zeros = opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                      opset13.concat(dims, axis=0))
            op.set_arguments([zeros])
    ov_model.validate_nodes_and_infer_types()


def _fuse_parallel_projections(ov_model) -> None:
    """MatMuls that read the same activation with constant weights (each layer's q/k/v projections, and the MLP's
    gate and up) become one MatMul over the weights concatenated along the output axis, then a split: the same
    products, fewer and larger kernels.

    Why here: decoding one token at a time on 2 cores is bound by per-kernel overhead, not arithmetic, and
    OpenVINO's CPU plugin fuses these projections only on AMX machines. Side by side in one process (int8, 2
    threads, 800-token context, AVX-512 VNNI), fusing both groups decoded 4-11 % faster than fusing none. The
    compression that follows quantizes per output channel (int8) or in groups along the input (int4), so the
    fused weights quantize exactly as the separate ones did."""
    import numpy as np
    from openvino import opset13

    groups: dict[tuple, list] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "MatMul" or op.get_attributes()["transpose_a"]:
            continue
        weight = op.input_value(1).get_node()
        if weight.get_type_name() != "Constant":
            continue
        source = op.input_value(0)
        key = (source.get_node().get_name(), source.get_index(), op.get_attributes()["transpose_b"])
        groups.setdefault(key, []).append((op, weight))
    for (_, _, transpose_b), members in groups.items():
        arrays = [weight.get_data() for _, weight in members]
        axis = 0 if transpose_b else 1  # the output axis of a [out, in] or [in, out] weight
        if len(members) < 2 or any(a.ndim != 2 or a.dtype != arrays[0].dtype for a in arrays):
            continue
        joined = opset13.matmul(members[0][0].input_value(0), opset13.constant(np.concatenate(arrays, axis=axis)),
                                False, transpose_b)
        split = opset13.variadic_split(joined, opset13.constant(np.int64(-1)),
                                       opset13.constant(np.array([a.shape[axis] for a in arrays], dtype=np.int64)))
        for i, (op, _) in enumerate(members):
            op.output(0).replace(split.output(i))
    ov_model.validate_nodes_and_infer_types()


def _compress(ov_model, weights: str):
    """nncf data-free weight compression of every MatMul and Gather weight (int8: symmetric per output channel;
    int4: asymmetric in groups of 64). Activations stay float.

    int8 is symmetric because the CPU kernels skip the zero point: side by side it decoded ~5 % faster than
    asymmetric, with the same next-token agreement with torch on SmolLM2 (0.954 against 0.952, 8 RAG prompts)."""
    if weights == "fp32":
        return ov_model
    import nncf

    mode = {"int8": nncf.CompressWeightsMode.INT8_SYM, "int4": nncf.CompressWeightsMode.INT4_ASYM}[weights]
    kwargs = {"group_size": 64, "ratio": 1.0} if weights == "int4" else {}
    return nncf.compress_weights(ov_model, mode=mode, **kwargs)


def export(model, tokenizer, folder: Path, weights: str) -> None:
    """Convert the (merged) torch model into `folder`: openvino_model.xml/.bin (stateful, weights compressed)."""
    import openvino as ov
    import torch

    config = model.config
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    batch, new, old = 2, 3, 4
    example = (torch.ones(batch, new, dtype=torch.long), torch.ones(batch, old + new, dtype=torch.long),
               torch.arange(old, old + new).repeat(batch, 1),
               *[torch.zeros(batch, heads, old, head_dim) for _ in range(2 * layers)])
    kv_in = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    kv_out = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notices: the converted model is checked against torch by the tests
        ov_model = ov.convert_model(_traceable(model), example_input=example)
    for port, name in zip(ov_model.inputs, ["input_ids", "attention_mask", "position_ids", *kv_in], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits", *kv_out], strict=True):
        port.get_tensor().set_names({name})
    _make_stateful(ov_model, kv_in, kv_out, [-1, heads, -1, head_dim])
    _fuse_parallel_projections(ov_model)
    ov_model = _compress(ov_model, weights)
    ov.save_model(ov_model, folder / MODEL_FILES[0], compress_to_fp16=False)
    config.save_pretrained(folder)  # OpenVINO GenAI reads the model type and defaults from these two
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def write_manifest(folder: Path, key: dict, what: str) -> None:
    """The manifest check_cache reads, written last into a conversion's (temp) folder: the key and each model
    file's size and sha256."""
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in MODEL_FILES}
    (folder / MANIFEST).write_text(json.dumps({"key": key, "files": files, "what": what,
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2),
                                   encoding="utf-8")


def build(model, tokenizer, key: dict, folder: Path, what: str) -> float:
    """Convert into `folder` atomically (a temp folder renamed into place, replacing a damaged one); returns the
    seconds it took. The manifest, written last, records the key and each file's size and sha256."""
    start = time.perf_counter()
    note(f"converting {what} for the openvino engine ({key['weights']} weights) once; cached in {folder} ...")
    recover(folder)  # temp folders of a conversion that was killed
    try:
        with atomic_dir(folder, option="RAGQA_CACHE folder") as tmp, no_telemetry(), stdout_to_stderr():
            export(model, tokenizer, tmp, key["weights"])
            write_manifest(tmp, key, what)
    except RagqaError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracer, converter and nncf raise many types
        raise RagqaError(f"converting {what} for the openvino engine failed: {first_line(exc)[:300]}; "
                         "use ask.engine=torch") from None
    seconds = time.perf_counter() - start
    note(f"converted {what} in {seconds:.1f} s")
    return seconds


# ------------------------------------------------------------------------------------ generation


class OpenVINOGenerator:
    """One converted model in an OpenVINO GenAI LLMPipeline, fed token ids."""

    def __init__(self, folder: Path, threads: int | None, weights: str, conversion_s: float | None = None,
                 properties: dict | None = None):
        """properties: OpenVINO GenAI device properties over ours (the tests pin ATTENTION_BACKEND with it)."""
        with no_telemetry():
            import openvino
            import openvino_genai

        self.folder = folder
        self.conversion_s = conversion_s
        props: dict = {}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        if weights == "fp32":
            # fp32 weights are for matching torch: no bf16 activations (the CPU default where the CPU has them)
            # and no u8 KV cache (the x86 default).
            props.update(INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
        elif weights == "int8" and "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            # Where the CPU computes in bf16 (its default there), int8 weights widened to bf16 decoded ~5 % faster
            # than the default of quantizing each activation to int8, and a bf16 KV cache 7-12 % faster than the
            # default u8 one in 4 of 5 runs (no slower in the fifth), whose per-token quantization and dequantization
            # cost more than its halved reads at these context lengths (side by side, AVX-512 BF16 + VNNI).
            # Elsewhere the defaults stay: not measured.
            props.update(DYNAMIC_QUANTIZATION_GROUP_SIZE=0, KV_CACHE_PRECISION="bf16")
        props.update(properties or {})
        self.pipe = openvino_genai.LLMPipeline(str(folder), "CPU", **props)
        self.lock = threading.Lock()  # one generate at a time (serve has one worker; tests may share a pipeline)

    def generate(self, input_ids, attention_mask, *, max_new_tokens: int, eos: set[int], repetition_penalty: float,
                 temperature: float, seed: int, on_ids: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """Generated ids per row of the left-padded batch. on_ids (single row only) gets each new id list and
        returns True to stop."""
        import openvino as ov
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.repetition_penalty = repetition_penalty
        config.eos_token_id = min(eos)
        config.stop_token_ids = set(eos)
        if temperature > 0:
            config.do_sample, config.temperature, config.rng_seed = True, temperature, seed
        else:
            config.do_sample = False
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(input_ids), ov.Tensor(attention_mask))
        streamer = None
        if on_ids is not None:
            class Streamer(openvino_genai.StreamerBase):
                def write(self, token):
                    ids = list(token) if isinstance(token, list | tuple) else [int(token)]
                    stop = on_ids(ids)
                    return openvino_genai.StreamingStatus.STOP if stop else openvino_genai.StreamingStatus.RUNNING

                def end(self):
                    pass

            streamer = Streamer()
        with self.lock:
            result = self.pipe.generate(inputs, config, streamer=streamer)
        return [list(row) for row in result.tokens]


class OpenVINOEngine:
    """The converted variants of one Pipeline's generator: the base, and the base with the adapter merged.
    Each is converted (or loaded from the cache) on first use; the default one (the adapter's, when there is one)
    at start-up."""

    def __init__(self, cfg, model, tokenizer, base_sha: str, adapter: str | None):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.base_sha, self.adapter = base_sha, adapter
        self.weights = cfg.ask.engine_weights
        self.variants: dict[bool, OpenVINOGenerator] = {}
        self.variant(adapter is not None)

    def key(self, use_adapter: bool) -> dict:
        return cache_key(self.base_sha, adapter_digest(self.adapter) if use_adapter else None, self.weights)

    def variant(self, use_adapter: bool) -> OpenVINOGenerator:
        use_adapter = use_adapter and self.adapter is not None
        if use_adapter in self.variants:
            return self.variants[use_adapter]
        key = self.key(use_adapter)
        folder = cache_folder(key)
        problem = check_cache(folder, key)
        seconds = None
        if problem is not None:
            if problem != "missing":
                note(f"the cached openvino model {folder} is not usable ({problem}): converting it again")
            what = f"{self.cfg.model.base}" + (f" + adapter {self.adapter} (merged)" if use_adapter else "")
            seconds = build(self._torch_model(use_adapter), self.tokenizer, key, folder, what)
        self.variants[use_adapter] = OpenVINOGenerator(folder, self.cfg.ask.threads, self.weights, seconds)
        return self.variants[use_adapter]

    def _torch_model(self, use_adapter: bool):
        """The plain transformers model to convert: the adapter merged into a copy of the base (the Pipeline's
        model stays as it is), or the base without it."""
        model = self.model
        if not hasattr(model, "merge_and_unload"):
            return model
        copied = copy.deepcopy(model)  # merge_and_unload and unload change the model they are given
        return copied.merge_and_unload() if use_adapter else copied.unload()
