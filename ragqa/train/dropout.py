"""LoRA dropout on CPU from one random draw per four elements.

torch's CPU dropout draws one random number per element from its single-threaded generator
(`bernoulli_`). With LoRA dropout on the seven projections of every layer that was 17% of a CPU
training step of SmolLM2-135M (torch.profiler, the recipe's batch of 4 x 441 tokens), more than the
attention. A mask needs far fewer random draws: `LoraDropout` cuts four 16-bit numbers from each
64-bit draw and drops where one falls below `p` rounded to 1/65536; it is otherwise the same inverted
dropout (kept inputs scaled by 1/(1-p), the boolean mask saved for backward, the same seeded global
generator, so runs reproduce and resume exactly). Other devices use torch's dropout as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoraDropout(nn.Module):
    """Inverted dropout with probability `p`; on CPU each element's keep bit comes from 16 random bits."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = -32768 + round(p * 65536)  # a uniform int16 drops below this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training)
        n = x.numel()
        draws = torch.empty(-(-n // 4), dtype=torch.int64).random_(-2**63, 2**63 - 1)  # all 64 bits random
        keep = (draws.view(torch.int16)[:n] >= self.threshold).view(x.shape)
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_lora_dropout(model) -> int:
    """Put a `LoraDropout` in place of every nn.Dropout of the model's LoRA layers; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in dropouts.items():
            if type(layer) is nn.Dropout:
                dropouts[name] = LoraDropout(layer.p)
                replaced += 1
    return replaced
