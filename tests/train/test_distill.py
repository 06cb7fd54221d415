import json

import pytest
import torch
import torch.nn.functional as F

from genforge.checkpoint import load_checkpoint, save_checkpoint
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import Tokenizer
from genforge.train.distill import DistillConfig, distill_loss, run_distill, student_from_teacher
from genforge.train.losses import IGNORE
from genforge.train.trainer import TrainConfig

from tests.helpers import make_shards


def test_distill_loss_limits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert torch.allclose(distill_loss(s, t, y, alpha=0.0), ce)
    kl = F.kl_div(F.log_softmax(s, -1).flatten(0, 1), F.log_softmax(t, -1).flatten(0, 1), log_target=True,
                  reduction="batchmean")  # KL(teacher || student) per position
    assert torch.allclose(distill_loss(s.flatten(0, 1), t.flatten(0, 1), y.flatten(), T=1.0, alpha=1.0), kl,
                          atol=1e-6)
    # student == teacher: no soft loss at any temperature
    assert distill_loss(t, t, y, T=3.0, alpha=1.0).abs() < 1e-6
    # T^2 scaling (Hinton et al.): soft term at T equals T^2 x KL of the softened distributions
    T = 2.0
    soft = F.kl_div(F.log_softmax(s / T, -1).flatten(0, 1), F.log_softmax(t / T, -1).flatten(0, 1),
                    log_target=True, reduction="batchmean")
    assert torch.allclose(distill_loss(s, t, y, T=T, alpha=1.0), T * T * soft, atol=1e-6)
    # masked and IGNORE positions do not count; sum = mean * count
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, :3] = False
    y2 = y.clone()
    y2[1, 4] = IGNORE
    kept = distill_loss(s[0, 3:], t[0, 3:], y[0, 3:]) * 2 + distill_loss(s[1, :4], t[1, :4], y[1, :4]) * 4
    assert torch.allclose(distill_loss(s, t, y2, mask, reduction="sum"), kept, atol=1e-5)
    assert torch.allclose(distill_loss(s, t, y2, mask) * 6, kept, atol=1e-5)


def test_student_from_teacher_copies_layers():
    teacher = GPT(GPTConfig(vocab_size=50, depth=4, width=64, head_dim=16, max_seq_len=32))
    student = student_from_teacher(teacher, GPTConfig(depth=2, width=0, vocab_size=0, max_seq_len=0))
    assert student.config.vocab_size == 50 and student.config.width == 64 and student.config.depth == 2
    assert torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight)
    assert torch.equal(student.layers[1].mlp.up_proj.weight, teacher.layers[3].mlp.up_proj.weight)
    small = student_from_teacher(teacher, GPTConfig(depth=1, width=32, head_dim=16, vocab_size=0, max_seq_len=0))
    assert small.config.width == 32 and small.config.vocab_size == 50


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"), n_docs=120)


def test_run_distill_end_to_end(shards, tmp_path):
    tok = Tokenizer.load(shards)
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=64,
                            init_std=0.5, tie_embeddings=False))
    save_checkpoint(tmp_path / "teacher", teacher, tok)
    cfg = DistillConfig(teacher=str(tmp_path / "teacher"), shards=str(shards), out_dir=str(tmp_path / "student"),
                        seq_len=32, init="random", eval_batches=2, alpha=1.0, temperature=1.0,
                        model=GPTConfig(depth=1, width=32, head_dim=16, vocab_size=0, max_seq_len=0),
                        train=TrainConfig(max_steps=30, micro_batch=8, warmup_steps=3, eval_every=0, ckpt_every=0,
                                          log_every=1, lr=1e-2, progress=False))
    res = run_distill(cfg)
    assert res["student_params"] < res["teacher_params"]
    rows = [json.loads(x) for x in open(tmp_path / "student" / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["agreement"] > train[0]["agreement"]
    student, stok, meta = load_checkpoint(tmp_path / "student" / "checkpoint")
    assert student.config.width == 32 and stok is not None and meta["stage"] == "distill"
    assert 0.0 <= res["agreement"] <= 1.0
