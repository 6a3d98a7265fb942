"""A tuned query encoder at inference: find it, check that it belongs to the index's embedder, load it.

The index's passage vectors were made by the base embedder; the tuned encoder was trained to put questions near
THOSE vectors, so it is only meaningful beside an index built with the very weights it started from. The card
records the base embedder's name, dimension and a hash of its weights; `check_compatible` refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError, first_line
from ragqa.query_tuning.registry import CARD, DEFAULT, TRAIN_COMMAND, find_query_encoder, query_encoder_roots

log = logging.getLogger(__name__)

OFF = (None, "", "none")


def weights_digest(model) -> str:
    """sha256 of a torch module's parameters and buffers (names and bytes): the same weights, wherever they were
    loaded from, give the same digest (~0.1 s for MiniLM)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def query_encoder_location(name: str) -> Path:
    """The folder of a tuned query encoder given by name (`default`: query_encoders/default) or path."""
    found = find_query_encoder(name)
    if found is not None:
        return found
    if name == DEFAULT:
        looked = " and ".join(str(root / DEFAULT) for root in query_encoder_roots())
        raise RagqaError(f"retrieval.query_encoder_weights=default: no tuned query encoder (looked in {looked}); "
                         f"train it with `{TRAIN_COMMAND}`, or set retrieval.query_encoder_weights=none")
    path = Path(name).expanduser()
    if path.is_dir() and (path / CARD).is_file():
        return path
    if path.is_dir():
        raise RagqaError(f"retrieval.query_encoder_weights={name}: {path} has no {CARD}, so it is not a query "
                         f"encoder ragqa tuned; train one with `{TRAIN_COMMAND}`")
    raise RagqaError(f"retrieval.query_encoder_weights={name}: not found (a tuned query encoder name from "
                     f"`ragqa models`, or its folder); train one with `{TRAIN_COMMAND}`, or set it to none")


def read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads((path / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RagqaError(f"{path / CARD}: unreadable ({first_line(exc)}); retrain with `{TRAIN_COMMAND}`") from None
    if not isinstance(card, dict) or not isinstance(card.get("base"), dict):
        raise RagqaError(f"{path / CARD}: no 'base' section; retrain with `{TRAIN_COMMAND}`")
    return card


def check_compatible(path: Path, card: dict[str, Any], index: Path, manifest: dict[str, Any], base_digest: str) -> None:
    """Refuse a tuned encoder whose base is not the embedder that built `index` (its vectors would be compared with
    vectors of another space); note when it was trained against another build of the index."""
    from ragqa.retrieve import same_embedder

    base = card["base"]
    built = manifest["embedder"]
    retrain = (f"retrain it against this index with `ragqa query-encoder train --index {index}`, or set "
               "retrieval.query_encoder_weights=none")
    if base.get("dim") != built["dim"]:
        raise RagqaError(f"query encoder {path} gives {base.get('dim')}-d vectors but index {index} holds "
                         f"{built['dim']}-d ones (embedder '{built['name']}'): {retrain}")
    if not same_embedder(str(base.get("embedder")), built["name"]) or base.get("weights_sha256") != base_digest:
        raise RagqaError(f"query encoder {path} was tuned from embedder '{base.get('embedder')}' (weights "
                         f"{str(base.get('weights_sha256'))[:12]}), not from the '{built['name']}' weights "
                         f"({base_digest[:12]}) that built index {index}: {retrain}")
    trained_on = card.get("index", {}).get("manifest_checksum")
    if trained_on and trained_on != manifest.get("checksum"):
        log.warning("query encoder %s was trained against another build of an index (%s); index %s was rebuilt "
                    "since: it still works (same embedder) but may have drifted; retrain to match", path,
                    card.get("index", {}).get("path"), index)


def load_query_encoder_weights(name: str, index: Path, manifest: dict[str, Any], embedder):
    """(folder, card, SentenceTransformer) of the tuned query encoder `name` for `index`, whose base embedder (already
    loaded) is `embedder`; a RagqaError when it is missing, unreadable or tuned from other weights."""
    from sentence_transformers import SentenceTransformer

    from ragqa.index.embed import dimension

    path = query_encoder_location(name)
    card = read_card(path)
    check_compatible(path, card, index, manifest, weights_digest(embedder))
    if not any(path.glob("*.safetensors")):
        raise RagqaError(f"query encoder {path}: no safetensors weights (ragqa never loads pickle .bin files); "
                         f"retrain it with `{TRAIN_COMMAND}`")
    try:
        model = SentenceTransformer(str(path), device=str(embedder.device), trust_remote_code=False,
                                    local_files_only=True, model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as exc:
        raise RagqaError(f"query encoder {path} could not be loaded ({first_line(exc)}); retrain it with "
                         f"`{TRAIN_COMMAND}`") from None
    if dimension(model) != manifest["embedder"]["dim"]:
        raise RagqaError(f"query encoder {path} gives {dimension(model)}-d vectors but index {index} holds "
                         f"{manifest['embedder']['dim']}-d ones: retrain it with `{TRAIN_COMMAND}`")
    model.eval()
    if not isinstance((card.get("abstention") or {}).get("threshold"), int | float):
        log.warning("query encoder %s has no abstention cut of its own (trained by an older ragqa): abstention "
                    "uses the index's, fitted with the base encoder; retrain it to calibrate", path)
    return path, card, model
