"""LoRA dropout on CPU: the same inverted dropout as torch's, one random draw per four elements."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ragqa.train.dropout import LoraDropout, use_lora_dropout  # noqa: E402


def test_drops_at_rate_p_in_every_lane_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = LoraDropout(0.05).train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.95))
    assert abs(1 - kept.float().mean().item() - 0.05) < 0.0015  # 1M draws: binomial std 0.0002
    # Each 64-bit draw gives four neighbouring elements their bits: every one of the four lanes drops at p.
    per_lane = 1 - kept.reshape(-1, 4).float().mean(0)
    assert torch.all((per_lane - 0.05).abs() < 0.003), per_lane
    # Neighbours are independent: both dropped about p^2 of the time, not p (shared bits) or 0.
    pairs = (~kept.reshape(-1, 4)[:, 0] & ~kept.reshape(-1, 4)[:, 1]).float().mean().item()
    assert abs(pairs - 0.0025) < 0.0006


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(1)
    x = torch.randn(64, 48, requires_grad=True)
    y = LoraDropout(0.3).train()(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad, kept.float() / 0.7)


def test_eval_mode_and_zero_probability_are_the_identity():
    x = torch.randn(8, 16)
    assert torch.equal(LoraDropout(0.5).eval()(x), x)
    assert torch.equal(LoraDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LoraDropout(1.0)


def test_masks_reproduce_under_a_seed_and_differ_between_seeds():
    layer, x = LoraDropout(0.1).train(), torch.ones(300, 7)  # 2,100 elements: not a multiple of 4
    torch.manual_seed(3)
    a, b = layer(x), layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), a) and not torch.equal(a, b)
    assert a.shape == x.shape


def test_replaces_the_dropout_of_every_lora_layer_and_keeps_eval_outputs():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.1, task_type="CAUSAL_LM",
                                                                target_modules=["q_proj", "v_proj", "down_proj"]))
    ids = torch.randint(0, 64, (2, 10))
    model.eval()
    before = model(input_ids=ids).logits
    assert use_lora_dropout(model) == 6  # three modules in each of two layers
    lora_dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert len(lora_dropouts) == 6 and all(isinstance(d, LoraDropout) for d in lora_dropouts)
    assert torch.allclose(model(input_ids=ids).logits, before)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
