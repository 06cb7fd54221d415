"""`genforge pretrain|sft|reward|dpo|ppo|grpo|distill`: run the stage, print a one-screen summary.

The configs live with the stages (`genforge.train.*`); each stage saves its resolved config with
`genforge.config.save_resolved`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pretrain(cfg: Any) -> dict:
    from genforge import runtime
    from genforge.train.pretrain import main

    res = main(cfg)
    if not runtime.is_main():  # under torchrun every rank returns the same numbers; one prints them
        return res
    print(f"val loss {res.get('val_loss', float('nan')):.4f}  ppl {res.get('val_ppl', float('nan')):.2f}  "
          f"bpb {res.get('val_bpb', float('nan')):.3f}  {res['tokens_per_s']:,.0f} tokens/s  -> "
          f"{Path(cfg.out_dir) / 'checkpoint'}")
    return res


def sft(cfg: Any) -> dict:
    from genforge.train.sft import main

    r = main(cfg)
    print(f"sft ({r['method']}): train loss {r['train_loss']:.4f}"
          + (f"  val loss {r['val_loss']:.4f}" if "val_loss" in r else "")
          + f"  trainable {r['trainable']:,} ({r['trainable_percent']:.2f}%)  training memory "
          f"{r['train_memory_mib']:.1f} MiB  {r['elapsed_s']:.0f} s  -> {r['checkpoint']}")
    if r["truncated"] or r["dropped"]:
        print(f"  {r['truncated']} conversations cut at data.seq_len, {r['dropped']} dropped (no response left)")
    return r


def _stage(module: str, cfg: Any) -> dict:
    """Run `module.main(cfg)`, print its metrics and the checkpoint path."""
    import importlib

    result = importlib.import_module(module).main(cfg)
    print(json.dumps(result, indent=2, default=str))
    print(f"-> {Path(cfg.out_dir) / 'checkpoint'}")
    return result


def reward(cfg: Any) -> dict:
    return _stage("genforge.train.reward", cfg)


def dpo(cfg: Any) -> dict:
    return _stage("genforge.train.dpo", cfg)


def ppo(cfg: Any) -> dict:
    return _stage("genforge.train.ppo", cfg)


def grpo(cfg: Any) -> dict:
    return _stage("genforge.train.grpo", cfg)


def distill(cfg: Any) -> dict:
    from genforge.train.distill import run_distill

    r = run_distill(cfg)
    extra = f"  val loss {r['val_loss']:.4f}  agreement {r['agreement']:.1%}" if "val_loss" in r else ""
    print(f"distill: student {r['student_params']:,} params (teacher {r['teacher_params']:,}), "
          f"train loss {r['train_loss']:.4f}{extra}  -> {cfg.out_dir}/checkpoint")
    return r
