"""The training-memory profiler: weights + grads + optimizer state + saved activations, smaller under LoRA."""

import torch

from genforge.model.gpt import GPT
from genforge.model.peft import apply_lora
from genforge.train.losses import lm_loss
from genforge.train.memory import training_memory


def test_training_memory_is_smaller_for_peft(tiny_cfg):
    def make_model():
        torch.manual_seed(0)
        return GPT(tiny_cfg)

    x = torch.randint(0, tiny_cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": x, "labels": x}
    model = make_model()
    full = training_memory(model, lm_loss, batch)
    assert all(p.grad is None for p in model.parameters()), "the probe step must leave no gradients behind"
    lora = training_memory(apply_lora(make_model(), r=4), lm_loss, batch)
    assert full["activations_mib"] > 0 and lora["activations_mib"] > 0
    assert lora["grads_mib"] < full["grads_mib"] / 10
    assert lora["total_mib"] < full["total_mib"]
