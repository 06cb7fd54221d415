"""One scoring path: the SFT, eval and align lessons give the same checkpoint the same number on a world task,
and `genforge eval`'s per-item scorer agrees with it."""

import json
from pathlib import Path

import pytest
import torch

from genforge.speedrun.stage import read_outputs


@pytest.fixture(scope="module")
def world_and_model(data_run: Path, tmp_path_factory):
    """The smoke world, its tokenizer and a small model fine-tuned for a few steps (so its answers score > 0)."""
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.speedrun import sft as sft_lesson
    from genforge.speedrun import tokenizer, world
    from genforge.tokenizer import Tokenizer
    from genforge.train.sft import SFTConfig, run_sft
    from genforge.train.trainer import TrainConfig

    w = read_outputs(data_run, "world", world.Outputs)
    tok = Tokenizer.load(read_outputs(data_run, "tokenizer", tokenizer.Outputs).tokenizer)
    items = sft_lesson.load_items(Path(w.tasks_dir), sft_lesson.Config(eval_items=3))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, width=64, head_dim=16, max_seq_len=512))
    cfg = SFTConfig(out_dir=str(tmp_path_factory.mktemp("sft")))
    cfg.train = TrainConfig(max_steps=120, micro_batch=16, warmup_steps=3, lr=3e-3, eval_every=0, ckpt_every=0,
                            progress=False, resume=False)
    model, _ = run_sft(model, tok, sft_lesson.conversations(items.train), cfg)
    return w, tok, model.eval(), items


def test_sft_eval_and_align_lessons_score_a_checkpoint_identically(world_and_model, tmp_path):
    from genforge.eval.harness import EvalConfig
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import resolve_tasks
    from genforge.speedrun import align, sft
    from genforge.speedrun import eval as eval_lesson

    w, tok, model, items = world_and_model
    scores = sft._Scores()
    sft._measure(scores, "m", model, tok, items, None, extra=False, forgetting=False)
    from_sft = scores.tasks["m"]
    tasks = [t for t in resolve_tasks(list(items.eval), w.dir, "test") if t.metric != "mc"]  # mc: log-likelihood
    direct = eval_lesson.direct_results(GenforgeLM(model, tok, chat=True), tasks, 3, tmp_path, EvalConfig(seed=0))
    assert {"summarization", "translation", "refusal", "arithmetic"} <= {t.name for t in tasks}
    for task in tasks:
        rows = items.eval[task.name]
        assert [r["prompt"] for r in task.load(3)] == [r["prompt"] for r in rows]  # the same items everywhere
        from_eval = direct["tasks"][task.name]["score"]
        from_align = align.task_accuracy(model, tok, task.name, rows)
        assert from_sft[task.name] == from_eval == from_align, task.name
    # the lessons agree on multiple choice answered by generation too (SFT and align score it that way)
    assert from_sft["multiple_choice"] == align.task_accuracy(model, tok, "multiple_choice",
                                                              items.eval["multiple_choice"])
    assert any(v > 0 for v in from_sft.values()), from_sft  # not agreeing only because everything is zero
    assert align.refusal_rate(model, tok, items.eval["refusal"]) == from_sft["refusal"]


def test_eval_harness_scores_items_like_the_score_path(world_and_model):
    from genforge.eval.harness import _score_generative
    from genforge.eval.score import score_outputs, score_task_rows
    from genforge.eval.tasks import resolve_tasks

    w, tok, model, items = world_and_model
    for task in resolve_tasks(list(items.eval), w.dir, "test"):
        if task.metric == "mc":
            continue
        rows = task.load(3)
        s = score_task_rows(model, tok, task.name, rows)
        recs, agg = _score_generative(task, rows, [{"output": p} for p in s.predictions])
        assert [r["score"] for r in recs] == s.items, task.name
        assert agg == s.metrics, task.name
        gold = score_outputs(task.name, rows, [r["response"] for r in rows])  # the reference answers score 1
        assert gold.score == pytest.approx(1.0) and all(x == pytest.approx(1.0) for x in gold.items), task.name


def test_direct_results_write_items_like_genforge_eval(world_and_model, tmp_path):
    from genforge.eval.harness import EvalConfig
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import resolve_tasks
    from genforge.speedrun import eval as eval_lesson

    w, tok, model, items = world_and_model
    tasks = resolve_tasks("arithmetic,multiple_choice", w.dir, "test")
    res = eval_lesson.direct_results(GenforgeLM(model, tok, chat=True), tasks, 2, tmp_path, EvalConfig(seed=0))
    assert res["tasks"]["multiple_choice"]["strategy"] == "loglikelihood"
    assert res["tasks"]["arithmetic"]["metric"] == "exact_match" and res["tasks"]["arithmetic"]["n"] == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["tasks"]) == {"arithmetic", "multiple_choice"}
    lines = (tmp_path / "items" / "arithmetic.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {"prompt", "output", "answer", "score"} <= set(json.loads(lines[0]))


def test_exact_match_is_not_fooled_by_a_gold_letter_a():
    from genforge.eval.score import answers_match, score_outputs

    assert answers_match("A", "A") == 1.0 and answers_match("a", "A") == 1.0
    assert answers_match("", "A") == 0.0 and answers_match("the", "A") == 0.0 and answers_match("B", "A") == 0.0
    assert answers_match("1,000", "1000") == 1.0 and answers_match("March 3, 2024", "march 3 2024") == 1.0
    rows = [{"task": "multiple_choice", "prompt": "?", "response": "The answer is A.", "answer": "A"}] * 2
    s = score_outputs("multiple_choice", rows, ["zzz", "The answer is A."])  # nothing readable, then right
    assert s.items == [0.0, 1.0] and s.answers == ["", "A"]
