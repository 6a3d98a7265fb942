"""PEFT adapters for inference and export: checks, safe loading (right base model, safetensors only), cards.

Shared by ask, serve, eval and export (and training, which writes the card): it lives outside `ragqa.train`
so that inference and evaluation never import the training package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError, first_line
from ragqa.files import recover

CARD = "ragqa_card.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_card(path: str | Path) -> dict[str, Any] | None:
    """The ragqa_card.json of an adapter directory, or None when it has none."""
    if not Path(path).exists():
        recover(path)  # see check_adapter_dir
    card = Path(path) / CARD
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RagqaError(f"{card}: not valid JSON; retrain the adapter or remove the damaged card") from None


def _base_aliases(base_name: str) -> set[str]:
    """Every spelling that names `base_name`: registry name, hub id, resolved folder."""
    from ragqa.models import REGISTRY, generator_dir

    given = Path(base_name).expanduser()
    names = {base_name, str(given.resolve()) if given.exists() else base_name}
    if base_name in REGISTRY:
        names.add(REGISTRY[base_name].hub_id)
    try:
        location = generator_dir(base_name)
        names.update({location, str(Path(location).resolve())})
    except RagqaError:
        pass
    return names


def check_adapter_dir(path: str | Path, base_name: str) -> dict[str, Any]:
    """Refuse what must not be loaded; return the adapter's config. Reads no weights."""
    path = Path(path)
    if not path.exists():
        recover(path)  # a run killed while replacing it left the adapter under its backup name: put it back
    if not path.is_dir():
        raise RagqaError(f"adapter {path} not found (train one with `ragqa train --output {path}`)")
    card = read_card(path)
    if card is not None and card.get("method") == "none":
        raise RagqaError(f"{path} holds a method=none run (the base model, no adapter): drop --adapter to use the base")
    if not (path / ADAPTER_WEIGHTS).is_file():
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise RagqaError(
                f"{path}: only a pickle adapter (.bin/.pt) found; ragqa loads safetensors only "
                f"(convert it to {ADAPTER_WEIGHTS} with peft's save_pretrained(safe_serialization=True))"
            )
        raise RagqaError(f"{path} is not an adapter directory: {ADAPTER_WEIGHTS} is missing")
    if not (path / ADAPTER_CONFIG).is_file():
        raise RagqaError(f"{path} is not an adapter directory: {ADAPTER_CONFIG} is missing")
    check_safetensors(path / ADAPTER_WEIGHTS)
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RagqaError(f"{path / ADAPTER_CONFIG}: not valid JSON") from None
    aliases = _base_aliases(base_name)
    trained_on = [card.get("base_model")] if card else []
    trained_on += [card.get("base_model_location")] if card else []
    trained_on.append(config.get("base_model_name_or_path"))
    trained_on = [t for t in trained_on if t]
    if trained_on and not aliases.intersection(trained_on):
        shown = card.get("base_model") if card else config.get("base_model_name_or_path")
        raise RagqaError(
            f"adapter {path} was trained on base model '{shown}', not '{base_name}': "
            f"use --set model.base={shown} or an adapter trained on {base_name}"
        )
    return config


def damaged(weights: Path) -> RagqaError:
    return RagqaError(f"{weights} is damaged or not a safetensors file: re-train or re-download the adapter")


def check_safetensors(weights: Path) -> None:
    """Refuse a weights file whose safetensors header is unreadable or points past the end of the file.

    Only the header is read (safe_open maps the file lazily), so this costs nothing before the model loads;
    without it, a damaged file surfaces as safetensors' own "header too small" after the base model loaded.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError):
        raise damaged(weights) from None


def load_adapter(model, path: str | Path, base_name: str):
    """Wrap `model` (the base named `base_name`) with the adapter at `path`, for inference.

    Refuses an adapter trained on another base, a directory without adapter files, and pickle
    weights (`adapter_model.bin`): only `adapter_model.safetensors` is ever read.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    check_adapter_dir(path, base_name)
    # peft reads adapter_model.safetensors whenever it exists, which check_adapter_dir guarantees.
    try:
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except SafetensorError:  # damaged after the header check (e.g. truncated while loading)
        raise damaged(Path(path) / ADAPTER_WEIGHTS) from None
    except (RuntimeError, ValueError, KeyError) as exc:
        first = first_line(exc)[:300]
        raise RagqaError(f"adapter {path} does not fit base model '{base_name}': {first}") from None
    wrapped.eval()
    return wrapped
