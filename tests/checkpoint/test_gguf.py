"""GGUF export: the file read back with the `gguf` package has llama.cpp's tensor names and shapes and the
checkpoint's values (exact in f32, f16-rounded in f16, Q8_0 within its block error); a model rebuilt from it
generates the same greedy tokens; unsupported features are refused by name."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from genforge.checkpoint import import_hf, load_checkpoint, save_checkpoint
from genforge.errors import ConfigError
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.hf import to_hf_state_dict

gguf = pytest.importorskip("gguf")
from genforge.checkpoint.gguf_file import load_gguf, read_gguf, write_gguf  # noqa: E402


def _model(tie: bool = True, vocab: int = 400) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64,
                          tie_embeddings=tie)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_read_back_names_shapes_values(tmp_path, tiny_tokenizer, quant):
    model = _model(tie=False, vocab=tiny_tokenizer.vocab_size)
    path = write_gguf(tmp_path / "m.gguf", model, tiny_tokenizer, quant)
    # raw file: llama.cpp's names, GGUF's reversed shapes, 1-D tensors in f32
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight",
            "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"} <= set(raw)
    assert len(raw) == 2 + 1 + 9 * 2
    assert list(raw["blk.0.attn_k.weight"].shape) == [64, 32]  # (in, out): GGUF lists the innermost dim first
    assert raw["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert raw["blk.0.ffn_up.weight"].tensor_type.name == quant.upper()
    # read back: every checkpoint tensor under its HF name, same shape, same values
    meta, tensors, _ = read_gguf(path)
    want = to_hf_state_dict(model)
    assert set(tensors) == set(want)
    for name, w in want.items():
        got = tensors[name]
        assert got.shape == w.shape, name
        if quant == "f32" or w.ndim == 1:
            assert torch.equal(got, w.float()), name
        elif quant == "f16":
            assert torch.equal(got, w.half().float()), name
        else:
            # Q8_0: each block of 32 values shares one scale d = max|w|/127, stored in f16 (relative error
            # <= 2^-11), so |error| <= d/2 + 127 * d * 2^-11 < 0.57 d
            step = w.reshape(-1, 32).abs().amax(-1, keepdim=True) / 127
            err = (got - w).reshape(-1, 32).abs()
            assert bool((err <= 0.57 * step + 1e-8).all()), name
            ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0),
                                         gguf.GGMLQuantizationType.Q8_0)
            assert torch.equal(got, torch.from_numpy(ref)), name  # the stored blocks are the reference Q8_0
            assert not torch.equal(got, w)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.context_length"] == 64
    assert meta["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_id and meta["tokenizer.ggml.add_bos_token"]
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == tiny_tokenizer.vocab_size and tokens[tiny_tokenizer.bos_id] == "<|bos|>"


def test_llama_q_k_rows_are_permuted_to_llama_cpp_pairs(tmp_path):
    model = _model()
    path = write_gguf(tmp_path / "m.gguf", model, None, "f32")
    raw = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    q = torch.from_numpy(np.array(raw["blk.0.attn_q.weight"].data)).reshape(64, 64)
    ours = model.layers[0].self_attn.q_proj.weight.detach()
    # head 0, llama.cpp's row 2i is our row i and row 2i+1 our row i + D/2 (D = 16)
    assert torch.equal(q[0], ours[0]) and torch.equal(q[1], ours[8]) and torch.equal(q[2], ours[1])
    assert torch.equal(q[16 + 1], ours[16 + 8])  # head 1


@pytest.mark.parametrize("quant,agree", [("f32", 1.0), ("q8_0", 0.9)])
def test_model_rebuilt_from_gguf_generates_the_same(tmp_path, quant, agree):
    model = _model()
    back = load_gguf(write_gguf(tmp_path / "m.gguf", model, None, quant))
    prompts = [[1, 5, 9, 77], [1, 300, 2, 4, 8, 16]]
    ids = torch.tensor([prompts[1]])
    with torch.no_grad():
        if quant == "f32":
            assert torch.equal(back(ids), model(ids))
    ours = Engine(model).generate(prompts, SamplingParams(max_new_tokens=20))
    theirs = Engine(back).generate(prompts, SamplingParams(max_new_tokens=20))
    same = np.mean([a == b for o, t in zip(ours, theirs) for a, b in zip(o, t)])
    assert same >= agree


def test_qwen_families_export_without_permutation(tmp_path):
    from tests.model.test_hf_families import make_hf

    for name in ("qwen2-bias", "qwen3-qknorm"):
        make_hf(tmp_path / name, name)
        import_hf(tmp_path / name / "hf", tmp_path / name / "gf")
        model, _, _ = load_checkpoint(tmp_path / name / "gf")
        back = load_gguf(write_gguf(tmp_path / name / "m.gguf", model, None, "f32"))
        ids = torch.randint(0, 100, (1, 12))
        with torch.no_grad():
            torch.testing.assert_close(back(ids), model(ids), atol=1e-5, rtol=0)
        raw = {t.name for t in gguf.GGUFReader(str(tmp_path / name / "m.gguf")).tensors}
        assert "blk.0.attn_q.bias" in raw or name == "qwen3-qknorm"
        assert "blk.0.attn_q_norm.weight" in raw or name == "qwen2-bias"


def test_unsupported_models_are_refused_by_field(tmp_path):
    cfg = GPTConfig(vocab_size=50, depth=1, width=32, head_dim=16, max_seq_len=32)
    for field, value in [("sliding_window", 8), ("norm_offset", 1.0), ("rope_scaling", {"rope_type": "linear",
                                                                                         "factor": 2.0})]:
        c = copy.deepcopy(cfg)
        setattr(c, field, value)
        with pytest.raises(ConfigError, match=field):
            write_gguf(tmp_path / "x.gguf", GPT(c), None)
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_format_gguf(tmp_path, tiny_tokenizer):
    save_checkpoint(tmp_path / "ck", _model(vocab=tiny_tokenizer.vocab_size), tiny_tokenizer)
    r = subprocess.run([sys.executable, "-m", "genforge", "export", str(tmp_path / "ck"), str(tmp_path / "m.gguf"),
                        "format=gguf", "quant=q8_0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _, tensors, types = read_gguf(tmp_path / "m.gguf")
    assert types["model.layers.0.mlp.up_proj.weight"] == "Q8_0" and len(tensors) == 1 + 1 + 9 * 2


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, depth=1, width=48, head_dim=16, max_seq_len=32)).eval()  # 48 % 32 != 0
    _, tensors, types = read_gguf(write_gguf(tmp_path / "m.gguf", model, None, "q8_0"))
    assert types["model.layers.0.self_attn.q_proj.weight"] == "F16"  # rows of 48 inputs
    assert types["model.layers.0.mlp.down_proj.weight"] == "Q8_0"  # rows of 128 inputs
    assert types["model.norm.weight"] == "F32"
    w = model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(tensors["model.layers.0.self_attn.q_proj.weight"], w.half().float())
