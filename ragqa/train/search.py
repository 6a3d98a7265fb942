"""`ragqa train --search N`: an Optuna study over lr, LoRA r/alpha/dropout and the RAFT gold probability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ragqa.files import write_text_atomic


def suggest(trial, cfg):
    """A copy of `cfg` with one trial's hyper-parameters."""
    r = trial.suggest_categorical("lora.r", [4, 8, 16, 32])
    overrides = {
        "train": {"lr": trial.suggest_float("train.lr", 5e-5, 1e-3, log=True),
                  "raft_gold_prob": trial.suggest_float("train.raft_gold_prob", 0.5, 1.0)},
        "lora": {"r": r, "alpha": r * trial.suggest_categorical("lora.alpha_over_r", [1, 2, 4]),
                 "dropout": trial.suggest_float("lora.dropout", 0.0, 0.2)},
    }
    data = cfg.to_dict()
    for section, values in overrides.items():
        data[section].update(values)
    return type(cfg).model_validate(data)


def run_search(cfg, n_trials: int, *, use_cache: bool = True, show_progress: bool = True,
               retriever=None) -> tuple[dict[str, Any], Path]:
    """Minimize validation loss over `n_trials` short runs (median pruning); write the best recipe as YAML.

    Returns (best params with their val loss, path of the YAML written beside train.output).
    """
    import optuna

    from ragqa.train.trainer import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))

    def objective(trial) -> float:
        trial_cfg = suggest(trial, cfg)
        result = train(trial_cfg, use_cache=use_cache, show_progress=show_progress, trial=trial,
                       save_output=False, checkpoints=False, retriever=retriever)
        if result.val_loss is None:
            raise ValueError("no validation examples: raise train.val_fraction")
        return result.val_loss

    study.optimize(objective, n_trials=n_trials, catch=())
    best_cfg = suggest(optuna.trial.FixedTrial(study.best_params), cfg)
    out = Path(cfg.train.output)
    path = out.with_name(out.name + ".best.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# ragqa train --search {n_trials}: best validation loss {study.best_value:.4f}\n"
              f"# trials: {len(study.trials)} ({sum(t.state.name == 'PRUNED' for t in study.trials)} pruned)\n")
    write_text_atomic(path, header + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    return {**study.best_params, "val_loss": study.best_value, "trials": len(study.trials)}, path
