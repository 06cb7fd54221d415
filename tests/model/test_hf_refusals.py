"""What genforge cannot import is refused with one line naming the field, never imported wrong and never a
traceback (the CLI prints the line and exits 2)."""

import json
import subprocess
import sys

import pytest
import torch
import transformers

from genforge.checkpoint import import_hf
from genforge.errors import CheckpointError
from genforge.model.hf import from_hf_config
from tests.model.test_hf_families import make_hf


def _edit(folder, **changes):
    f = folder / "config.json"
    cfg = json.loads(f.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    f.write_text(json.dumps(cfg))


LLAMA = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
             num_attention_heads=2)


@pytest.mark.parametrize("changes,field", [
    (dict(model_type="gpt2"), "'model_type'"),
    (dict(rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1], long_factor=[1])),
     "'rope_parameters.rope_type'"),
    (dict(rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=8.0)), "'rope_parameters.low_freq_factor'"),
    (dict(partial_rotary_factor=0.5), "'partial_rotary_factor'"),
    (dict(quantization_config={"quant_method": "gptq"}), "'quantization_config'"),
    (dict(attention_dropout=0.1), "'attention_dropout'"),
    (dict(hidden_act="relu"), "'hidden_act'"),
    (dict(sliding_window=16), "'sliding_window'"),  # Llama has no window: refusing beats ignoring it
    (dict(attn_logit_softcapping=30.0), "'attn_logit_softcapping'"),
    (dict(use_bidirectional_attention=True), "'use_bidirectional_attention'"),
])
def test_unsupported_fields_are_refused_by_name(changes, field):
    with pytest.raises(CheckpointError, match=field) as e:
        from_hf_config({**LLAMA, **changes}, where="x/config.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x/config.json: field")


def test_weights_that_contradict_the_config_name_the_cause(tmp_path):
    _, src = make_hf(tmp_path, "qwen2-bias")
    _edit(src, model_type="llama", architectures=["LlamaForCausalLM"], layer_types=None, use_sliding_window=None,
          sliding_window=None, max_window_layers=None)  # a Qwen2 folder mislabelled as Llama: biases left over
    with pytest.raises(CheckpointError, match="biases its config.json does not declare"):
        import_hf(src, tmp_path / "gf")


def test_head_dim_mismatch_is_an_error_not_a_crash(tmp_path):
    _, src = make_hf(tmp_path, "llama-head_dim-bias")  # head_dim 24 != 64 / 4
    _edit(src, head_dim=None)  # the crash: config without head_dim, weights with it
    with pytest.raises(CheckpointError, match=r"q_proj.weight has shape \(96, 64\) but config.json implies"):
        import_hf(src, tmp_path / "gf")


def test_cli_refusal_is_one_line_without_traceback(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    _edit(tmp_path / "hf", rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1] * 4,
                                                long_factor=[1] * 4))
    r = subprocess.run([sys.executable, "-m", "genforge", "import", str(tmp_path / "hf"), str(tmp_path / "gf")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "longrope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "gf").exists()


def test_import_is_exact_for_a_default_mistral_window_longer_than_the_context(tmp_path):
    # sliding_window >= every sequence: the window never binds, and the default (fast, unmasked) path runs
    cfg = transformers.MistralConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    from genforge.checkpoint import load_checkpoint

    import_hf(tmp_path / "hf", tmp_path / "gf")
    model, _, _ = load_checkpoint(tmp_path / "gf")
    assert model.config.sliding_window == 4096
    ids = torch.randint(0, 50, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)


# config.json key sets as the popular checkpoints publish them (sizes shrunk): every benign field is accepted
# and the ones that matter land in GPTConfig
SHAPES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)
PUBLISHED = {
    "llama-3.2-1b": dict(architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0,
                         bos_token_id=1, eos_token_id=[2, 3], head_dim=8, hidden_act="silu", initializer_range=0.02,
                         max_position_embeddings=131072, mlp_bias=False, model_type="llama", pretraining_tp=1,
                         rms_norm_eps=1e-05, rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                                               original_max_position_embeddings=8192,
                                                               rope_type="llama3"),
                         rope_theta=500000.0, tie_word_embeddings=True, torch_dtype="bfloat16",
                         transformers_version="4.45.0.dev0", use_cache=True),
    "qwen2.5-0.5b": dict(architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                         hidden_act="silu", initializer_range=0.02, max_position_embeddings=32768,
                         max_window_layers=24, model_type="qwen2", rms_norm_eps=1e-06, rope_theta=1000000.0,
                         sliding_window=32768, tie_word_embeddings=True, torch_dtype="bfloat16",
                         transformers_version="4.43.1", use_cache=True, use_sliding_window=False),
    "qwen3-0.6b": dict(architectures=["Qwen3ForCausalLM"], attention_bias=False, attention_dropout=0.0,
                       bos_token_id=1, eos_token_id=2, head_dim=16, hidden_act="silu", initializer_range=0.02,
                       max_position_embeddings=40960, max_window_layers=28, model_type="qwen3", rms_norm_eps=1e-06,
                       rope_scaling=None, rope_theta=1000000, sliding_window=None, tie_word_embeddings=True,
                       torch_dtype="bfloat16", transformers_version="4.51.0", use_cache=True,
                       use_sliding_window=False),
    "gemma-2-2b": dict(architectures=["Gemma2ForCausalLM"], attention_bias=False, attention_dropout=0.0,
                       attn_logit_softcapping=50.0, bos_token_id=2, cache_implementation="hybrid", eos_token_id=1,
                       final_logit_softcapping=30.0, head_dim=16, hidden_act="gelu_pytorch_tanh",
                       hidden_activation="gelu_pytorch_tanh", initializer_range=0.02, max_position_embeddings=8192,
                       model_type="gemma2", pad_token_id=0, query_pre_attn_scalar=16, rms_norm_eps=1e-06,
                       rope_theta=10000.0, sliding_window=4096, torch_dtype="float32",
                       transformers_version="4.42.4", use_cache=True),
    "phi-3-mini-4k": dict(architectures=["Phi3ForCausalLM"], attention_bias=False, attention_dropout=0.0,
                          auto_map={"AutoConfig": "configuration_phi3.Phi3Config"}, bos_token_id=1, embd_pdrop=0.0,
                          eos_token_id=32000, hidden_act="silu", initializer_range=0.02,
                          max_position_embeddings=4096, model_type="phi3", original_max_position_embeddings=4096,
                          pad_token_id=32000, resid_pdrop=0.0, rms_norm_eps=1e-05, rope_scaling=None,
                          rope_theta=10000.0, sliding_window=2047, tie_word_embeddings=False, torch_dtype="bfloat16",
                          transformers_version="4.40.2", use_cache=True),
    "mistral-7b-v0.1": dict(architectures=["MistralForCausalLM"], bos_token_id=1, eos_token_id=2, hidden_act="silu",
                            initializer_range=0.02, max_position_embeddings=32768, model_type="mistral",
                            rms_norm_eps=1e-05, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
                            torch_dtype="bfloat16", transformers_version="4.34.0.dev0", use_cache=True),
}
EXPECT = {
    "llama-3.2-1b": dict(rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                                       "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
                         tie_embeddings=True, head_dim=8, sliding_window=0),
    "qwen2.5-0.5b": dict(qkv_bias=True, o_bias=False, sliding_window=0, rope_theta=1e6),
    "qwen3-0.6b": dict(qk_norm=True, head_dim=16, n_head=4, qkv_bias=False, sliding_window=0),
    "gemma-2-2b": dict(sandwich_norm=True, norm_offset=1.0, embed_scale=True, mlp_act="gelu_tanh", attn_softcap=50.0,
                       final_softcap=30.0, sliding_window=4096, sliding_layers=[0], attn_scale=0.25,
                       tie_embeddings=True),
    "phi-3-mini-4k": dict(sliding_window=2047, sliding_layers=None, qkv_bias=False),
    "mistral-7b-v0.1": dict(sliding_window=4096, sliding_layers=None),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_config_shapes_import(name):
    cfg = from_hf_config({**PUBLISHED[name], **SHAPES}, where=f"{name}/config.json")
    for field, value in EXPECT[name].items():
        assert getattr(cfg, field) == value, field
