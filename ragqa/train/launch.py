"""`ragqa train --launcher accelerate`: run the same train command under `accelerate launch` (data parallel).

ragqa does not start or coordinate processes itself: accelerate (torchrun underneath) does, and the
trainer's `Accelerator` picks up the process group it set up.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from ragqa.errors import RagqaError


def default_num_processes(device: str) -> int:
    """All visible GPUs when training on CUDA, else 1."""
    if not device.startswith("cuda"):
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def accelerate_command(train_args: list[str], num_processes: int, *, cpu: bool = False) -> list[str]:
    """The argv running `ragqa train TRAIN_ARGS` under this venv's `accelerate launch` on `num_processes` processes.

    The settings accelerate would otherwise take from a stray `accelerate config` file are given explicitly:
    one machine, no accelerate-side mixed precision (ragqa sets the dtype itself), no dynamo; --quiet
    keeps accelerate's own traceback out when a training process fails (that process prints the error).
    """
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--quiet"]
    if cpu:
        argv.append("--cpu")
    elif num_processes > 1:
        argv.append("--multi_gpu")
    return [*argv, "-m", "ragqa", "train", *train_args]


def launch(train_args: list[str], num_processes: int, device: str) -> int:
    """Run `ragqa train TRAIN_ARGS` through `accelerate launch`; returns its exit code (130 after Ctrl-C)."""
    if importlib.util.find_spec("accelerate") is None:
        raise RagqaError("--launcher accelerate: accelerate is not installed (pip install accelerate)")
    cpu = device == "cpu"
    if num_processes > 1:
        if not device.startswith("cuda"):
            raise RagqaError(f"--num-processes {num_processes}: several processes need CUDA GPUs "
                             f"(model.device is {device}); use --num-processes 1")
        import torch

        if num_processes > torch.cuda.device_count():
            raise RagqaError(f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s) visible")
    proc = subprocess.Popen(accelerate_command(train_args, num_processes, cpu=cpu))
    interrupted = False
    while True:
        try:
            code = proc.wait()
            return 130 if interrupted else code
        except KeyboardInterrupt:
            # Ctrl-C reached accelerate and the training processes too (one process group): the main one saves
            # a checkpoint; wait for accelerate to end, then exit 130 like an interrupted `ragqa train`.
            interrupted = True
