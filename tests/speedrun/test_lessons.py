"""Fast tests of the lesson modules' pieces (the slow smoke run covers them end to end)."""

import json
from pathlib import Path

import pytest
import torch

from genforge.errors import ConfigError
from genforge.speedrun import align, engine, peft, pretrain, sft, tokenizer, world
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
    assert peft.shortest_task(items) == "b"
    names = [v.key for v in peft.make_variants(peft.Config(steps=10), [], [], "b")]
    assert names == ["full", "lora", "prompt", "adapter", "scratch", "single"]
    vs = peft.make_variants(peft.Config(steps=10, selective=True), [], [], "b")
    assert [v.key for v in vs] == ["full", "lora", "prompt", "adapter", "selective", "scratch", "single"]
    assert all(v.steps == 10 for v in vs)
    assert {v.key: v.peft for v in vs if v.peft} == {"lora": {"r": 9}}  # no token rows given: a plain LoRA
    rows = peft.make_variants(peft.Config(steps=10, lora_r=4), [], [], "b", [4, 9])
    assert {v.key: v.peft for v in rows if v.peft} == {"lora": {"r": 4, "trainable_token_indices": [4, 9]}}
    with pytest.raises(ConfigError, match="chat_steps=0"):
        sft.Config(chat_steps=0)
    assert sft.drill_counts(["arithmetic:40", "coin_flip: 3"]) == {"arithmetic": 40, "coin_flip": 3}
    with pytest.raises(ConfigError, match="task:count"):
        sft.drill_counts(["arithmetic"])


@pytest.fixture
def sft_inputs(tmp_path, tok, base_ckpt):  # noqa: F811
    """A tiny world's task files, shards and the pretrained checkpoint, as the sft and peft stages read them."""
    from genforge.data.shards import pack_shards

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
    return dict(world=world.Outputs(str(tmp_path / "world"), str(tasks), 0, 0, 0, 0.0),
                tokenizer=tokenizer.Outputs(str(shards), str(shards), tok.vocab_size, 0),
                pretrain=pretrain.Outputs(str(base_ckpt), 0.0, 0.0, 0.0))


def test_sft_lesson_on_a_tiny_world(tmp_path, sft_inputs):
    from genforge.report import StageReport

    ctx = StageContext(tmp_path / "run", size="smoke", progress=False)
    report = StageReport("sft", "SFT")
    cfg = sft.Config(chat_steps=4, eval_items=4, train_items=400, micro_batch=8, drills=[])
    out = sft.run(ctx, cfg, report, **sft_inputs)
    assert isinstance(out, sft.Outputs)
    assert (Path(out.checkpoint) / "model.safetensors").exists() and Path(out.checkpoint).parent.name == "chat"
    assert set(out.per_task["base"]) == {"add", "last_letters", "summarize", "translate"}
    assert set(out.scores) == {"base", "chat"} and all(0.0 <= v <= 1.0 for v in out.scores.values())
    assert set(out.benign_refusal) == {"base", "chat"} and set(out.phrasing) == {"base", "chat"}
    assert any("held-out" in r.metric for r in report.rows)
    assert len(report.plots) == 1 and all((ctx.run_dir / p).exists() for p, _ in report.plots)
    claims = [les.claim for les in report.lessons]
    assert sum("lifts the trained task" in c for c in claims) == 4  # one per trained task
    for want in ("unseen phrasings", "held-out task family", "benign"):
        assert any(want in c for c in claims), want
    assert not any("LoRA" in c or "random init" in c for c in claims)  # the peft stage's claims
    assert all(les.low is not None and les.low <= les.effect <= les.high for les in report.lessons)


def test_peft_lesson_on_a_tiny_world(tmp_path, sft_inputs):
    from genforge.report import StageReport

    ctx = StageContext(tmp_path / "run", size="smoke", progress=False)
    report = StageReport("peft", "PEFT")
    cfg = peft.Config(steps=4, eval_items=4, train_items=400, micro_batch=8, ppl_batches=2)
    out = peft.run(ctx, cfg, report, **sft_inputs)
    assert isinstance(out, peft.Outputs)
    assert (Path(out.full) / "model.safetensors").exists()
    assert (Path(out.lora_adapter) / "adapter_config.json").exists() and "peft" in Path(out.lora_adapter).parts
    assert set(out.scores) == {"base", "full", "lora", "prompt", "adapter", "scratch", "single"}
    assert out.val_ppl["base"] > 1 and out.val_ppl["full"] > 1
    metrics = [r.metric for r in report.rows]
    assert any("LoRA: mean task score" in m for m in metrics) and any(m.startswith("forgetting") for m in metrics)
    assert len(report.plots) == 3 and all((ctx.run_dir / p).exists() for p, _ in report.plots)
    assert out.trainable_percent["lora"] < out.trainable_percent["full"] == 100.0
    adapter = json.loads((Path(out.lora_adapter) / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"]["embed_tokens"]  # the chat template's tokens pretraining never saw
    claims = [les.claim for les in report.lessons]
    for want in ("random init", "LoRA", "forgets more"):
        assert any(want in c for c in claims), want
    assert not any("lifts the trained task" in c for c in claims)  # the sft stage's claims
    assert all(les.low is not None and les.low <= les.effect <= les.high for les in report.lessons)


def test_lora_token_rows_are_the_tokens_pretraining_lacks():
    # ids: 0 common in both; 1 never in pretraining, often in fine-tuning; 2 rare in pretraining (ratio 1e3 / 11);
    # 3 never in pretraining but used only 5 times (too few); 4 unused
    pre = [10_000, 0, 10, 0, 50]
    ft = [1_000, 100, 100, 5, 0]
    assert peft.pick_new_tokens(ft, pre, ratio=100.0, max_rows=8) == [1]
    assert peft.pick_new_tokens(ft, pre, ratio=5.0, max_rows=8) == [1, 2]
    assert peft.pick_new_tokens(ft, pre, ratio=5.0, max_rows=1) == [1]  # the highest ratio first
    assert peft.pick_new_tokens(ft, pre, ratio=5.0, max_rows=8, min_count=1) == [1, 2, 3]


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
    from genforge.speedrun import overopt

    assert overopt._smooth([0.0, 3.0, 0.0, 3.0]) == [1.5, 1.0, 2.0, 1.5]


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


def test_drills_reach_the_chat_model_only(data_run):
    """sft.drills add fresh reasoning rows to the chat model's mix; the peft stage trains on the world's split."""
    tasks = data_run / "world" / "tasks"
    items = sft.load_items(tasks, sft.Config(drills=["arithmetic:30", "coin_flip:5"], closings=0.0))
    extra = items.chat_train[len(items.train):]
    assert items.chat_train[:len(items.train)] == items.train and len(extra) == 35
    # courteous closings (on by default) change only some answers of the chat model's mix, never a prompt
    closed = sft.load_items(tasks, sft.Config(drills=["arithmetic:30", "coin_flip:5"])).chat_train
    assert [r["prompt"] for r in closed] == [r["prompt"] for r in items.chat_train]
    changed = [(a, b) for a, b in zip(items.chat_train, closed) if a != b]
    assert changed and all(b["response"].startswith(a["response"] + "\n") for a, b in changed)
    assert {r["task"] for r in extra} == {"arithmetic", "coin_flip"}
    scored = {r["prompt"] for f in ("val", "test", "heldout") for r in sft._read_rows(tasks / f"{f}.jsonl")}
    assert not scored & {r["prompt"] for r in extra}
    assert sft.load_items(tasks, peft.Config()).chat_train == []
