"""The generic checkpoint core: a non-GPT family (a tiny encoder with a dataclass config) saves, loads and
resumes like GPT does; the HF-Llama family is picked from the folder; unknown families are clear errors."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from genforge.checkpoint import (
    ModuleFamily,
    load_checkpoint,
    load_model,
    read_meta,
    register_family,
    save_checkpoint,
    write_checkpoint_files,
)
from genforge.errors import CheckpointError
from genforge.model.gpt import GPT
from genforge.train.trainer import TrainConfig, Trainer


@dataclass
class TinyEncoderConfig:
    vocab_size: int = 50
    width: int = 16
    n_classes: int = 3


class TinyEncoder(nn.Module):
    """Bidirectional toy encoder: ids (B, T) -> class logits (B, n_classes); the MLM head is tied to the embedding."""

    def __init__(self, config: TinyEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.mix = nn.Linear(config.width, config.width)
        self.mlm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.mlm_head.weight = self.embed.weight  # tied: stored once
        self.cls = nn.Linear(config.width, config.n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(ids))).mean(1)  # (B, C)
        return self.cls(h)


register_family(ModuleFamily("tiny_encoder", TinyEncoder, TinyEncoderConfig))


def test_non_gpt_module_round_trips(tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder(TinyEncoderConfig(width=12))
    path = save_checkpoint(tmp_path / "enc", model, run_config={"lr": 1e-3}, meta={"step": 7})
    meta = read_meta(path)
    assert meta["family"] == "tiny_encoder" and meta["model"]["width"] == 12 and meta["step"] == 7
    back, tok, _ = load_checkpoint(path)
    assert isinstance(back, TinyEncoder) and tok is None and back.config.width == 12
    assert back.mlm_head.weight.data_ptr() == back.embed.weight.data_ptr(), "tie lost on load"
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(back(ids), model.eval()(ids))


def test_non_gpt_module_resumes_in_the_trainer(tmp_path):
    ids = torch.randint(0, 50, (64, 6), generator=torch.Generator().manual_seed(1))
    labels = ids[:, 0] % 3

    class Data:
        fail_at = None

        def get_batch(self, step, micro, rank, world):
            if step == self.fail_at:
                raise KeyboardInterrupt("simulated kill")
            i = (step * 8) % 64
            return {"ids": ids[i:i + 8], "y": labels[i:i + 8]}

    def loss(model, batch):
        return nn.functional.cross_entropy(model(batch["ids"]), batch["y"], reduction="sum"), len(batch["y"]), {}

    def run(out, fail_at=None):
        torch.manual_seed(0)
        model = TinyEncoder(TinyEncoderConfig())
        cfg = TrainConfig(max_steps=10, warmup_steps=0, ckpt_every=5, eval_every=0, progress=False, seed=0)
        data = Data()
        data.fail_at = fail_at
        t = Trainer(model, cfg, loss, data, out, default_lr=1e-2,
                    save_fn=lambda folder: write_checkpoint_files(folder, model))
        t.fit()
        return t

    ref = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", fail_at=7)
    resumed = run(tmp_path / "run")  # continues from the step-5 checkpoint
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 10
    for a, b in zip(ref.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    saved = load_model(tmp_path / "run" / "checkpoint")
    torch.testing.assert_close(saved.cls.weight, resumed.model.cls.weight)


def test_gpt_family_chosen_from_folder(tmp_path, tiny_cfg):
    save_checkpoint(tmp_path / "g", GPT(tiny_cfg))
    assert read_meta(tmp_path / "g")["family"] == "gpt"
    assert (tmp_path / "g" / "config.json").exists()  # the HF layout
    assert isinstance(load_model(tmp_path / "g"), GPT)


def test_unregistered_model_and_family_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="register_family"):
        save_checkpoint(tmp_path / "x", nn.Linear(2, 2))
    save_checkpoint(tmp_path / "enc", TinyEncoder(TinyEncoderConfig()))
    meta = read_meta(tmp_path / "enc")
    (tmp_path / "enc" / "genforge.json").write_text(json.dumps({**meta, "family": "nope"}))
    with pytest.raises(CheckpointError, match="family 'nope' is not registered"):
        load_model(tmp_path / "enc")
