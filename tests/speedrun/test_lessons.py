"""Fast tests of the lesson modules' pieces (the slow smoke run covers them end to end)."""

from pathlib import Path

import pytest
import torch

from genforge.errors import ConfigError
from genforge.speedrun import align, engine, pretrain, sft, tokenizer, world
from genforge.speedrun.stage import StageContext
from tests.train.test_sft import base_ckpt, corpus, heldout_rows, make_tasks, tok, write_jsonl  # noqa: F401


# ---- pretrain -------------------------------------------------------------------------------------------------
def test_pretrain_config_takes_the_section_and_the_run_seed(tmp_path):
    cfg = pretrain.Config()
    cfg.train.max_steps, cfg.model.depth = 7, 2
    pc = pretrain.pretrain_config(StageContext(tmp_path, seed=5, progress=False), cfg, "shards")
    assert (pc.train.max_steps, pc.model.depth, pc.train.seed, pc.train.progress) == (7, 2, 5, False)
    assert pc.out_dir == str(tmp_path / "pretrain") and pc.shards == "shards"
    pc.train.max_steps = 1
    assert cfg.train.max_steps == 7  # the stage's config is not changed by the run


# ---- sft ------------------------------------------------------------------------------------------------------
ROWS = [{"task": "a", "prompt": "p" * 9, "response": "r"}, {"task": "b", "prompt": "p", "response": "r"},
        {"task": "a", "prompt": "q", "response": "s"}, {"task": "b", "prompt": "q", "response": "s"}]


def test_sft_items_variants_and_single_task():
    assert {t: len(v) for t, v in sft.by_task(ROWS, 1).items()} == {"a": 1, "b": 1}
    items = sft._Items(ROWS, sft.by_task(ROWS, 2), {})
    assert sft.shortest_task(items) == "b"
    names = [v.key for v in sft.make_variants(sft.Config(steps=10, chat_steps=0), [], [], "b")]
    assert names == ["full", "lora", "prompt", "adapter", "scratch", "single"]
    vs = sft.make_variants(sft.Config(steps=10, chat_steps=40, selective=True), [], [], "b")
    assert [v.key for v in vs] == ["full", "lora", "prompt", "adapter", "selective", "scratch", "single", "chat"]
    assert vs[-1].steps == 40 and vs[0].steps == 10
    train, mix = [["t"]], [["t"], ["drill"]]
    vs = sft.make_variants(sft.Config(steps=10, chat_steps=40), train, [], "b", chat=mix)
    # drills reach the chat model only
    assert all(v.data is train for v in vs if v.key not in ("single", "chat")) and vs[-1].data is mix
    assert sft.drill_counts(["arithmetic:40", "coin_flip: 3"]) == {"arithmetic": 40, "coin_flip": 3}
    with pytest.raises(ConfigError, match="task:count"):
        sft.drill_counts(["arithmetic"])


def test_sft_lesson_on_a_tiny_world(tmp_path, tok, base_ckpt):  # noqa: F811
    from genforge.data.shards import pack_shards
    from genforge.report import StageReport

    tasks = tmp_path / "world" / "tasks"
    tasks.mkdir(parents=True)
    write_jsonl(tasks / "train.jsonl", make_tasks(3, 30))
    write_jsonl(tasks / "test.jsonl", make_tasks(4, 6))
    write_jsonl(tasks / "heldout.jsonl", heldout_rows(5, 6))
    chat = [{"task": "chat", "prompt": f"Where does {p} live?", "response": f"{p} lives in {t}.", "answer": t}
            for p in ("Ann", "Bo", "Cy") for t in ("Oakford", "Elm")]
    write_jsonl(tasks / "chat_train.jsonl", chat[:4])
    write_jsonl(tasks / "chat_test.jsonl", chat[4:])
    shards = tmp_path / "shards"
    pack_shards(corpus(), tok, shards, val_fraction=0.3)
    ctx = StageContext(tmp_path / "run", size="smoke", progress=False)
    cfg = sft.Config(steps=4, eval_items=4, chat_steps=0, train_items=400, micro_batch=8, ppl_batches=2)
    report = StageReport("sft", "SFT")
    out = sft.run(ctx, cfg, report,
                  world=world.Outputs(str(tmp_path / "world"), str(tasks), 0, 0, 0, 0.0),
                  tokenizer=tokenizer.Outputs(str(shards), str(shards), tok.vocab_size, 0),
                  pretrain=pretrain.Outputs(str(base_ckpt), 0.0, 0.0, 0.0))
    assert isinstance(out, sft.Outputs)
    assert (Path(out.checkpoint) / "model.safetensors").exists()
    assert (Path(out.lora_adapter) / "adapter_config.json").exists()
    assert set(out.per_task["base"]) == {"add", "last_letters", "summarize", "translate"}
    assert set(out.scores) >= {"base", "full", "lora", "prompt", "adapter", "scratch", "single"}
    assert all(0.0 <= v <= 1.0 for v in out.scores.values())
    assert out.val_ppl["base"] > 1 and out.val_ppl["full"] > 1
    metrics = [r.metric for r in report.rows]
    assert any("LoRA: mean task score" in m for m in metrics)
    assert any(m.startswith("forgetting") for m in metrics) and any("held-out" in m for m in metrics)
    assert len(report.plots) == 3 and all((ctx.run_dir / p).exists() for p, _ in report.plots)
    assert out.trainable_percent["lora"] < out.trainable_percent["full"] == 100.0
    assert out.checkpoint == out.align_base  # no longer chat run at chat_steps=0
    assert set(out.benign_refusal) == {"base", "full", "lora"} and set(out.phrasing) == {"base", "full", "lora"}
    claims = [les.claim for les in report.lessons]
    assert sum("lifts the trained task" in c for c in claims) == 4  # one per trained task
    for want in ("random init", "LoRA", "forgets more", "unseen phrasings", "held-out task family", "benign"):
        assert any(want in c for c in claims), want
    assert all(les.low is not None and les.low <= les.effect <= les.high for les in report.lessons)


# ---- align ----------------------------------------------------------------------------------------------------
def test_align_helpers():
    import random

    assert align.win_rate([1, 0, 0.5], [0, 1, 0.5]) == pytest.approx(0.5)
    rows = [{"task": t, "prompt": f"{t}{i}"} for t in "abc" for i in range(5)]
    picked = align.per_task(rows, 2, random.Random(0), skip=("c",))
    assert [r["task"] for r in picked] == ["a", "a", "b", "b"]

    def reward(prompts, responses, rows):
        return [1.0 for _ in responses]

    assert align.length_bias(reward, 0) is reward
    assert align.length_bias(reward, 0.5)([], [[1, 2], [1]], []) == [2.0, 1.5]
    spread = align.spread(rows, 5, random.Random(0), skip=("c",))
    assert len(spread) == 5 and {r["task"] for r in spread} == {"a", "b"}
    assert align._smooth([0.0, 3.0, 0.0, 3.0]) == [1.5, 1.0, 2.0, 1.5]


def test_align_keeps_prompts_that_fit(tok):  # noqa: F811
    rows = [{"prompt": "What is 2 plus 2?"}, {"prompt": "apple " * 200}]
    assert align.fits(tok, rows, 64) == rows[:1]


# ---- engine ---------------------------------------------------------------------------------------------------
def test_recompute_baseline_matches_the_cached_engine(tiny_cfg):
    from genforge.infer.engine import Engine
    from genforge.infer.sampling import SamplingParams
    from genforge.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval()
    prompt = [1, 5, 9, 13]
    cached = Engine(model).generate([prompt], SamplingParams(max_new_tokens=8))[0]
    assert engine.recompute_greedy(model, prompt, 8) == cached
