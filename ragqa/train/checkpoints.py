"""Training checkpoints: where they live, what must match to resume, and atomic save / exact load.

A checkpoint `OUTPUT.checkpoints/step-NNNNNNN/` holds the adapter weights (safetensors), the optimizer,
scheduler and random state (STATE_FILE, read back with weights_only=True) and the loop's position and history
(STATE_JSON). It is written into a temp dir and renamed, so a killed save leaves only a `.step-*` temp dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError
from ragqa.files import atomic_dir

STATE_FILE = "trainer_state.pt"
STATE_JSON = "state.json"


def checkpoint_root(output: str | Path) -> Path:
    """Checkpoints live beside the output (`adapters/NAME.checkpoints/`), never inside it."""
    output = Path(output)
    return output.with_name(output.name + ".checkpoints")


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (temp dirs of an interrupted save start with '.' and are ignored)."""
    done = sorted(p for p in root.glob("step-*") if (p / STATE_JSON).is_file() and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def check_checkpoint_root(root: Path, overwrite: bool) -> None:
    """OUTPUT.checkpoints is removed after a finished run: refuse one that holds anything ragqa does not put
    there (checkpoints step-*, their temp dirs .step-*, tensorboard logs), unless --overwrite."""
    if overwrite or not root.is_dir():
        return
    foreign = sorted(p.name for p in root.iterdir()
                     if not (p.is_dir() and (p.name.startswith(("step-", ".step-")) or p.name == "tensorboard")))
    if foreign:
        raise RagqaError(f"{root} is not a ragqa checkpoint folder (it holds {foreign[0]}): choose another "
                         "--output, or pass --overwrite to replace it and everything in it")


def resume_signature(cfg, data, processes: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this run."""
    t = cfg.train
    return {"data": data.cache_key, "method": t.method, "base": cfg.model.base, "lora": cfg.lora.model_dump(),
            "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr, "seed": t.seed,
            "max_steps": t.max_steps, "epochs": t.epochs, "lr_scheduler": t.lr_scheduler, "processes": processes,
            "optim": t.optim}


def rng_state() -> dict:
    """torch's random state (and CUDA's, when there is a GPU), as a checkpoint stores it."""
    import torch

    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], *,
                    rng: dict | None = None, keep: int) -> Path:
    """Checkpoint `state` (step, micro, history, signature, ...) with the peft `model`'s adapter weights, the
    optimizer, scheduler and `rng` (default: now) into root/step-NNNNNNN; keep the newest `keep` checkpoints."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    target = root / f"step-{step:07d}"
    with atomic_dir(target, prefix=f".step-{step:07d}-") as tmp:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(tmp / "adapter_model.safetensors"))
        rng = rng or rng_state()
        # Our own file, read back with weights_only=True (tensors and plain containers only).
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng}, tmp / STATE_FILE)
        (tmp / STATE_JSON).write_text(json.dumps(state), encoding="utf-8")
    kept = sorted(p for p in root.glob("step-*"))
    # Older checkpoints, and temp dirs left by a save that was killed, go.
    for old in [*kept[: -keep], *root.glob(".step-*")]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(root: Path, signature: dict[str, Any], model, optimizer, scheduler, *,
                    device: str) -> dict[str, Any]:
    """Load the newest checkpoint in `root` into the peft `model`, `optimizer`, `scheduler` and torch's random
    state; returns its saved state (step, micro, history, ...). Refused when it was made with other settings."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(root)
    if ckpt is None:
        raise RagqaError(f"--resume: no checkpoint in {root}; run without --resume to start fresh")
    state = json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))
    # Checkpoints written before train.optim existed were all made with adamw.
    saved = {"optim": "adamw", **state["signature"]}
    if saved != signature:
        changed = sorted(k for k in signature if saved.get(k) != signature[k])
        raise RagqaError(f"--resume: {ckpt} was made with different settings ({', '.join(changed)}); "
                         "restore them or run without --resume")
    weights = load_file(str(ckpt / "adapter_model.safetensors"), device=device)
    set_peft_model_state_dict(model, weights)
    blob = torch.load(ckpt / STATE_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return state
