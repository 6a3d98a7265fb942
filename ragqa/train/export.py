"""`ragqa export ADAPTER [ADAPTER ...] --merge --output DIR`: fold a LoRA adapter (or a weighted combination)
into its base as a standalone model."""

from __future__ import annotations

import json
from pathlib import Path

from ragqa.errors import RagqaError
from ragqa.files import atomic_dir, check_output_dir
from ragqa.adapters import COMBINATION_TYPE, AdapterSpec, check_adapters, load_adapters, read_card

CARD = "ragqa_merged.json"
"""Written into every export: marks the folder as one ragqa may replace (and says what was merged)."""


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on (its card, else adapter_config.json)."""
    card = read_card(adapter)
    if card and card.get("base_model"):
        return card["base_model"]
    config_path = Path(adapter) / "adapter_config.json"
    if config_path.is_file():
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return base
    raise RagqaError(f"{adapter}: cannot tell its base model (no ragqa_card.json or adapter_config.json)")


def export_merged(adapter: str | Path | AdapterSpec, output: str | Path, base: str | None = None, *,
                  overwrite: bool = False) -> Path:
    """Merge `adapter` (a directory, or several combined: an AdapterSpec) into an fp32 (unquantized) copy of its
    base; save safetensors + tokenizer atomically.

    A QLoRA adapter merges into the full-precision base: merging into 4-bit weights would re-quantize them.
    A combination merges its weighted sum (ragqa.adapters.load_adapters), the same model `ask` answers with.
    An existing `output` that is not a ragqa export is refused unless `overwrite` (--overwrite).
    """
    from ragqa.models import load_generator

    spec = AdapterSpec.of(str(adapter)) if not isinstance(adapter, AdapterSpec) else adapter
    output = Path(output)
    for path in spec.paths:
        if output.resolve() == Path(path).resolve():
            raise RagqaError("--output must differ from the adapter directory")
    check_output_dir(output, "export", (CARD,), overwrite=overwrite)
    first = spec.paths[0]
    base = base or adapter_base(first)
    check_adapters(spec, base)
    model, tokenizer = load_generator(base, device="cpu", dtype="float32")
    merged = load_adapters(model, spec, base)[0].merge_and_unload()
    with atomic_dir(output) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        card = read_card(first) or {}
        about = {"merged_from": first, "base_model": base, "method": card.get("method"), "split": card.get("split"),
                 "template_version": card.get("template_version")}
        if spec.combined:
            # Each adapter's split: `ragqa eval` of the export must not score questions any of them trained on.
            about.update(merged_from=list(spec.paths), weights=list(spec.weights), combination=COMBINATION_TYPE,
                         method=[(read_card(p) or {}).get("method") for p in spec.paths],
                         split=[(read_card(p) or {}).get("split") for p in spec.paths])
        (tmp / CARD).write_text(json.dumps(about, indent=2), encoding="utf-8")
    return output
