"""PEFT methods: LoRA (identity at init, merge/unmerge, several adapters), prompt tuning, bottleneck
adapters, selective tuning, trainable counts, memory accounting, errors and save/load."""

import copy

import pytest
import torch

from genforge.errors import ConfigError
from genforge.infer.sampling import SamplingParams
from genforge.model import peft
from genforge.model.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64)


def make_model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def randomize_lora(model, name="default", seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in peft.lora_modules(model).values():
            if name in m.lora_B:
                m.lora_A[name].weight.copy_(torch.randn(m.lora_A[name].weight.shape, generator=g) * 0.1)
                m.lora_B[name].weight.copy_(torch.randn(m.lora_B[name].weight.shape, generator=g) * 0.1)


def ids(B=2, T=10, seed=0):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_lora_starts_as_identity_and_counts_trainables():
    base = make_model()
    model = peft.apply_lora(copy.deepcopy(base), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    x = ids()
    assert torch.equal(model(x), base(x))  # B = 0
    c = model.config
    per_layer = (c.width * 4 + 4 * c.width) + (c.width * 4 + 4 * c.n_kv_head * c.head_dim)
    s = peft.trainable_summary(model)
    assert s["trainable"] == c.depth * per_layer
    assert s["total"] == base.num_params() + s["trainable"]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    m = model.layers[0].self_attn.q_proj
    assert isinstance(m, peft.LoRALinear) and m.scaling["default"] == 2.0
    assert torch.count_nonzero(m.lora_A["default"].weight) > 0  # kaiming-uniform A, zero B
    randomize_lora(model)
    assert not torch.allclose(model(x), base(x))


def test_lora_gradients_reach_only_the_adapter():
    model = peft.apply_lora(make_model(), r=4, target_modules=["q_proj", "v_proj"])
    randomize_lora(model)
    model(ids()).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)


def test_merge_unmerge_and_unload_keep_outputs():
    model = peft.apply_lora(make_model(), r=4, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"])
    randomize_lora(model)
    x = ids()
    before = model(x)
    w0 = model.layers[0].mlp.up_proj.base_layer.weight.clone()
    peft.merge_lora(model)
    assert not torch.equal(model.layers[0].mlp.up_proj.base_layer.weight, w0)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    peft.unmerge_lora(model)
    torch.testing.assert_close(model.layers[0].mlp.up_proj.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    plain = peft.merge_and_unload(model)
    assert not peft.lora_modules(plain) and isinstance(plain.layers[1].self_attn.q_proj, torch.nn.Linear)
    torch.testing.assert_close(plain(x), before, atol=1e-5, rtol=1e-5)


def test_merging_a_tied_lm_head_is_refused():
    model = peft.apply_lora(make_model(), r=2, target_modules=["lm_head"])
    with pytest.raises(ConfigError, match="tie_embeddings"):
        peft.merge_lora(model)


def test_several_adapters_selected_per_call_and_per_row():
    base = make_model()
    only_a = peft.apply_lora(copy.deepcopy(base), r=4, target_modules=["q_proj", "v_proj"], adapter_name="a")
    randomize_lora(only_a, "a", seed=1)
    only_b = peft.apply_lora(copy.deepcopy(base), r=2, target_modules=["up_proj"], adapter_name="b")
    randomize_lora(only_b, "b", seed=2)
    both = copy.deepcopy(only_a)
    peft.apply_lora(both, r=2, target_modules=["up_proj"], adapter_name="b")
    randomize_lora(both, "b", seed=2)
    assert peft.adapter_names(both) == ["a", "b"]
    x = ids()
    assert torch.equal(both(x), only_b(x))  # the last added is active
    peft.set_adapter(both, "a")
    torch.testing.assert_close(both(x), only_a(x))
    with peft.use_adapter(both, "b"):
        torch.testing.assert_close(both(x), only_b(x))
    torch.testing.assert_close(both(x), only_a(x))  # restored
    with peft.use_adapter(both, None):
        torch.testing.assert_close(both(x), base(x))
    # one adapter per batch row: row 0 -> a, row 1 -> b, row 2 -> the base
    x3 = ids(B=3)
    with peft.use_adapter(both, ["a", "b", None]):
        mixed = both(x3)
    torch.testing.assert_close(mixed[0], only_a(x3[:1])[0])
    torch.testing.assert_close(mixed[1], only_b(x3[1:2])[0])
    torch.testing.assert_close(mixed[2], base(x3[2:])[0])
    with pytest.raises(ConfigError, match="loaded adapters"):
        peft.set_adapter(both, "c")


def test_target_that_matches_nothing_lists_module_names():
    with pytest.raises(ConfigError) as e:
        peft.apply_lora(make_model(), target_modules=["q_proj", "qkv"])
    msg = str(e.value)
    assert "qkv" in msg and "q_proj" in msg and "down_proj" in msg and "lm_head" in msg
    with pytest.raises(ConfigError, match="matches no module"):
        peft.apply_lora(make_model(), target_modules=r"layers\.9\..*")


def test_lora_generation_with_kv_cache_matches_recompute():
    from genforge.infer.engine import generate

    model = peft.apply_lora(make_model(), r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    randomize_lora(model)
    prompt = ids(B=1, T=5)[0].tolist()
    fast = generate(model, [prompt], SamplingParams(max_new_tokens=6))[0]
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert fast == seq[len(prompt):]


def test_prompt_tuning_prepends_trainable_tokens_and_freezes_base():
    base = make_model()
    pt = peft.PromptTuning(copy.deepcopy(base), num_virtual_tokens=5)
    assert peft.trainable_summary(pt)["trainable"] == 5 * CFG.width
    assert pt.config.max_seq_len == CFG.max_seq_len - 5
    x = ids()
    emb = torch.cat([pt.prompt_embeddings.detach().expand(2, 5, -1), base.embed_tokens(x)], dim=1)
    want = base(inputs_embeds=emb)[:, 5:]
    torch.testing.assert_close(pt(x), want)
    # the model is otherwise unchanged: the same base weights, no grad for them
    pt(x).sum().backward()
    assert pt.prompt_embeddings.grad is not None
    assert all(p.grad is None for p in pt.base_model.parameters())


def test_prompt_tuning_generation_with_kv_cache_matches_recompute():
    from genforge.infer.engine import generate

    pt = peft.PromptTuning(make_model(), num_virtual_tokens=4, seed=3)
    prompts = [ids(B=1, T=7, seed=1)[0].tolist(), ids(B=1, T=3, seed=2)[0].tolist()]  # left-padded batch
    fast = generate(pt, prompts, SamplingParams(max_new_tokens=5))
    for p, got in zip(prompts, fast):
        seq = list(p)
        for _ in range(5):
            seq.append(int(pt(torch.tensor([seq]))[0, -1].argmax()))
        assert got == seq[len(p):]


def test_bottleneck_adapters_start_as_identity_with_right_count():
    base = make_model()
    model = peft.apply_adapters(copy.deepcopy(base), size=8)
    x = ids()
    assert torch.equal(model(x), base(x))  # zero up-projection
    C = CFG.width
    assert peft.trainable_summary(model)["trainable"] == CFG.depth * 2 * (C * 8 + 8 + 8 * C + C)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.up.weight.normal_()
    assert not torch.allclose(model(x), base(x))
    with pytest.raises(ConfigError, match="choose from"):
        peft.apply_adapters(make_model(), where=["ffn"])


def test_selective_tuning_freezes_all_but_chosen():
    model = make_model()
    names = peft.select_trainable(model, ["norms", "layers.-1"])
    assert "norm.weight" in names and "layers.0.input_layernorm.weight" in names
    assert "layers.1.mlp.up_proj.weight" in names and "layers.0.mlp.up_proj.weight" not in names
    assert peft.trainable_summary(model)["trainable"] == sum(p.numel() for n, p in model.named_parameters()
                                                             if n in names)
    with pytest.raises(ConfigError, match="no bias"):
        peft.select_trainable(model, ["biases"])
    with pytest.raises(ConfigError, match="selects no parameter"):
        peft.select_trainable(model, ["attention_gate"])


def test_lora_token_rows_train_only_their_rows_and_switch_with_the_adapter():
    base = make_model()
    model = peft.apply_lora(copy.deepcopy(base), r=2, alpha=4, target_modules=["q_proj"],
                            trainable_token_indices=[7, 3])
    lora_only = peft.trainable_summary(peft.apply_lora(copy.deepcopy(base), r=2, alpha=4, target_modules=["q_proj"]))
    assert peft.trainable_summary(model)["trainable"] == lora_only["trainable"] + 2 * CFG.width
    assert isinstance(model.lm_head, peft.TokenRows) and model.lm_head.owner is model.embed_tokens  # tied head
    x = torch.tensor([[7, 3, 11, 7]])
    torch.testing.assert_close(model(x), base(x))  # fresh rows are the base rows: nothing changes
    model(x).logsumexp(-1).sum().backward()
    rows = model.embed_tokens.trainable_tokens_delta["default"]
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    assert model.embed_tokens.base_layer.weight.grad is None  # the embedding matrix itself stays frozen
    with torch.no_grad():
        rows.add_(1.0)
    out = model(x).detach()
    assert not torch.allclose(out, base(x), atol=1e-3)
    with peft.use_adapter(model, None):
        torch.testing.assert_close(model(x), base(x))  # no adapter: the base rows
        assert not rows.requires_grad
    assert rows.requires_grad
    torch.testing.assert_close(model(x), out)
    with pytest.raises(ConfigError, match="per-row"):
        peft.set_adapter(model, ["default"])
        model(x)
    peft.set_adapter(model, "default")
    peft.merge_lora(model)
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
    peft.unmerge_lora(model)
    torch.testing.assert_close(model.embed_tokens.weight, base.embed_tokens.weight)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        peft.apply_lora(copy.deepcopy(base), r=2, target_modules=["q_proj"], trainable_token_indices=[CFG.vocab_size])
