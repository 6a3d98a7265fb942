"""PEFT adapters for inference and export: checks, safe loading (right base model, safetensors only), cards.

Shared by ask, serve, eval and export (and training, which writes the card): it lives outside `ragqa.train`
so that inference and evaluation never import the training package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError, first_line
from ragqa.files import recover

CARD = "ragqa_card.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
COMBINED = "combined"
"""peft's name for the weighted combination of several adapters (also accepted by `:adapter`)."""
COMBINATION_TYPE = "cat"
"""How add_weighted_adapter combines: `cat` stacks the adapters' ranks, so the combined update is exactly
sum(w_i * delta_W_i) (what weights 0.7,0.3 promise) and adapters of different ranks combine. peft's `linear`
mixes the A and B matrices separately, which adds cross terms B_i A_j (peft's docs call it a rough
approximation) and needs equal ranks; `svd` is exact only up to its rank cut. The price of `cat` is a combined
rank of sum(r_i): for ragqa's adapters (r 8-64) that is a few MB and a slightly larger LoRA matmul."""


class WrongBase(RagqaError):
    """An adapter trained on another base model than the one it is loaded onto."""

    def __init__(self, message: str, trained_on: str):
        super().__init__(message)
        self.trained_on = trained_on


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter(s) to answer with: one directory, or several combined with one weight each."""

    paths: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    """None for one adapter used as trained; otherwise one weight per path (`combined`)."""

    def __post_init__(self):
        if not self.paths or (self.weights is None and len(self.paths) > 1) or (
                self.weights is not None and len(self.weights) != len(self.paths)):
            raise ValueError("AdapterSpec needs one weight per path when it has several (see adapter_spec)")

    @classmethod
    def of(cls, adapter: str | AdapterSpec | None) -> AdapterSpec | None:
        """None for no adapter (None, '', 'none'), a spec for one directory, or `adapter` itself."""
        if isinstance(adapter, AdapterSpec) or adapter is None:
            return adapter
        return None if adapter in ("", "none") else cls((str(adapter),))

    @property
    def combined(self) -> bool:
        return self.weights is not None

    @property
    def label(self) -> str:
        """How answers, reports and `:adapter` name it: the directory, or e.g. '0.7*adapters/a + 0.3*adapters/b'."""
        if self.weights is None:
            return self.paths[0]
        return " + ".join(f"{w:g}*{p}" for w, p in zip(self.weights, self.paths, strict=True))


def adapter_spec(adapters: Sequence[str] | None, weights: str | None = None,
                 weights_flag: str = "--adapter-weights", adapter_flag: str = "--adapter") -> AdapterSpec | None:
    """The spec for repeated --adapter values and --adapter-weights 'W1,W2,...' (checked here, before any model
    loads). Several adapters without weights get equal ones (1/n each: their mean update)."""
    paths = [str(a) for a in adapters or ()]
    if len(paths) > 1 and any(p in ("", "none") for p in paths):
        raise RagqaError(f"{adapter_flag} none means no adapter: it cannot be combined with other adapters")
    if len(paths) == 1 and paths[0] in ("", "none"):
        paths = []
    if weights is not None and not paths:
        raise RagqaError(f"{weights_flag} needs {adapter_flag}: give one weight per adapter, in the same order")
    if not paths:
        return None
    twice = next((p for i, p in enumerate(paths) if Path(p).resolve() in {Path(q).resolve() for q in paths[:i]}),
                 None)
    if twice is not None:
        raise RagqaError(f"{adapter_flag} {twice} is given twice: give each adapter once, with one weight")
    if weights is None:
        return AdapterSpec(tuple(paths), (1 / len(paths),) * len(paths) if len(paths) > 1 else None)
    values = []
    for item in weights.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise RagqaError(f"{weights_flag} {weights}: '{item.strip()}' is not a finite number; give one "
                             f"comma-separated number per {adapter_flag}, e.g. 0.7,0.3")
        values.append(value)
    if len(values) != len(paths):
        raise RagqaError(f"{weights_flag} gives {len(values)} weight(s) for {len(paths)} adapter(s): give one per "
                         f"{adapter_flag}, in the same order")
    return AdapterSpec(tuple(paths), tuple(values))


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
        raise WrongBase(
            f"adapter {path} was trained on base model '{shown}', not '{base_name}': "
            f"use --set model.base={shown} or an adapter trained on {base_name}", shown
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


def check_adapters(spec: AdapterSpec, base_name: str) -> list[dict[str, Any]]:
    """check_adapter_dir for every adapter of `spec`; a combination must also be LoRA adapters of one base."""
    configs, wrong = [], []
    for path in spec.paths:
        try:
            configs.append(check_adapter_dir(path, base_name))
        except WrongBase as exc:
            if len(spec.paths) == 1:
                raise
            wrong.append((path, exc))
    if wrong and configs:  # some fit the base and some do not: the adapters disagree among themselves
        fits = next(p for p in spec.paths if p not in {w for w, _ in wrong})
        path, exc = wrong[0]
        raise RagqaError(f"adapter {path} was trained on base model '{exc.trained_on}' and adapter {fits} on "
                         f"'{base_name}': only adapters of one base model can be combined")
    if wrong:
        raise wrong[0][1]
    if spec.combined:
        for path, config in zip(spec.paths, configs, strict=True):
            if config.get("peft_type", "LORA") != "LORA":
                raise RagqaError(f"adapter {path} is a {config.get('peft_type')} adapter: only LoRA adapters "
                                 "can be combined or weighted")
    return configs


def _load_one(model, path: str | Path, base_name: str, name: str):
    """`model` (a base model, or a PeftModel over it) with the adapter at `path` added under `name`."""
    from peft import PeftModel
    from safetensors import SafetensorError

    # peft reads adapter_model.safetensors whenever it exists, which check_adapter_dir guarantees.
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
    except SafetensorError:  # damaged after the header check (e.g. truncated while loading)
        raise damaged(Path(path) / ADAPTER_WEIGHTS) from None
    except (RuntimeError, ValueError, KeyError) as exc:
        first = first_line(exc)[:300]
        raise RagqaError(f"adapter {path} does not fit base model '{base_name}': {first}") from None


def load_adapter(model, path: str | Path, base_name: str, name: str = "default"):
    """Wrap `model` (the base named `base_name`) with the adapter at `path`, for inference; a PeftModel gets
    it added under `name` (not made active).

    Refuses an adapter trained on another base, a directory without adapter files, and pickle
    weights (`adapter_model.bin`): only `adapter_model.safetensors` is ever read.
    """
    check_adapter_dir(path, base_name)
    wrapped = _load_one(model, path, base_name, name)
    wrapped.eval()
    return wrapped


def load_adapters(model, spec: AdapterSpec, base_name: str):
    """`model` with the adapters of `spec` loaded, the combination (when several or weighted) active.

    Returns (model, {label: peft adapter name}): each directory under its path, the combination under
    spec.label; all stay loaded, so `Pipeline.switch_adapter` changes between them without reloading the base.
    """
    if not spec.combined:
        return load_adapter(model, spec.paths[0], base_name), {spec.paths[0]: "default"}
    check_adapters(spec, base_name)
    names: dict[str, str] = {}
    for i, path in enumerate(spec.paths):
        names[path] = f"adapter{i}"  # peft names are module keys: no '.' or '/', so not the path itself
        model = _load_one(model, path, base_name, names[path])
    # One adapter with a weight: peft uses `linear` for a single adapter, which is exact there (no cross terms).
    model.add_weighted_adapter(list(names.values()), list(spec.weights), COMBINED,
                               combination_type=COMBINATION_TYPE)
    model.set_adapter(COMBINED, inference_mode=True)
    model.eval()
    names[spec.label] = COMBINED
    return model, names
