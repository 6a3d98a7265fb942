"""Give a model folder (config.json + tokenizer files) random bf16 safetensors weights.

For memory and throughput benchmarks on machines the real weights cannot reach (the GPU machine
here takes at most 64 MiB of files): a model with the same architecture and random weights uses the
same memory and compute per token. Its losses mean nothing; report only memory and speed from it.

    python benchmarks/random_model.py DIR [--device cuda]
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.folder, trust_remote_code=False)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.folder, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.folder}: {config.model_type}, {n / 1e6:.0f}M parameters (random, bf16)")


if __name__ == "__main__":
    main()
