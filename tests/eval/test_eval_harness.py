"""The harness end to end: task registry over the tiny world and user JSONL, strategies, saved results,
comparison, report rows, contamination, needle, and the `genforge eval` command."""

import json
import re
from pathlib import Path

import pytest

from genforge.errors import ConfigError, DataError
from genforge.eval import harness
from genforge.eval.compare import compare
from genforge.eval.contamination import NgramIndex, check_contamination
from genforge.eval.harness import EvalConfig, evaluate, report_rows
from genforge.eval.lm import StubLM
from genforge.eval.needle import make_case, needle_grid, plot_needle, world_case
from genforge.eval.tasks import mc_stem, resolve_tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from genforge.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, size="smoke")
    return out


def _rows(world: Path, split: str = "test") -> list[dict]:
    return [json.loads(line) for line in (world / "tasks" / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def eval_cli(argv: list[str]):
    """`genforge eval ...` through the CLI table (errors raise instead of printing one line)."""
    from genforge.cli import run

    return run(["eval", *argv])


def oracle(world: Path, wrong: bool = False) -> StubLM:
    """Answers every test prompt with its reference response and prefers the gold option (or neither, if wrong)."""
    rows = _rows(world)
    answers = {r["prompt"]: r["response"] for r in rows}
    gold = {mc_stem(r["prompt"], r["options"]): r["options"][r["gold_index"]] for r in rows if "options" in r}

    def respond(prompt, i, rng):
        return "I do not know." if wrong else answers.get(prompt, "")

    def score(ctx, cont):
        return -right(ctx, cont) - 5.0 if wrong else right(ctx, cont)

    def right(ctx, cont):
        lines = ctx.splitlines()
        letter = {ln[0]: ln[3:] for ln in lines if re.match(r"^[A-D]\. ", ln)}
        if letter:  # letter formulation: the letter whose line holds the gold option
            stem = "\n".join(ln for ln in lines if not re.match(r"^[A-D]\. ", ln) and ln != "Answer:")
            return 0.0 if letter[cont.strip()] == gold[stem] else -5.0
        return 0.0 if cont.strip() == gold[ctx.removesuffix("\nAnswer:")] else -5.0 - len(cont)

    return StubLM(respond=respond, score=score, chat=True)


# ---- the registry ---------------------------------------------------------------------------------------

def test_world_tasks_discovered_with_metrics(world):
    from genforge.world import TASKS

    tasks = {t.name: t for t in resolve_tasks("all", world)}
    assert set(tasks) == set(TASKS)
    assert {n: t.metric for n, t in tasks.items() if t.metric != "exact_match"} == {
        "summarization": "rouge", "translation": "bleu", "multiple_choice": "mc", "refusal": "refusal"}
    assert tasks["arithmetic"].extract("so 3 + 4 = 7.\nThe answer is 1,207.") == "1207"  # the world's extractor


def test_unknown_task_lists_known_ones(world):
    with pytest.raises(ConfigError) as e:
        resolve_tasks("arithmetic,arithmetc", world)
    msg = str(e.value)
    assert "unknown task 'arithmetc'" in msg
    for name in ("arithmetic", "summarization", "multiple_choice", "refusal"):
        assert name in msg
    with pytest.raises(ConfigError, match="no --tasks-dir"):
        resolve_tasks("arithmetic", None)


def test_eval_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "2+2?", "answer": "4"}\n{"question": "3+3?", "answer": "6"}\n')
    (task,) = resolve_tasks(str(f))
    with pytest.raises(DataError, match=re.escape(f"{f}:2: missing field prompt")):
        task.load()
    f.write_text('{"prompt": "2+2?", "answer": "4"}\n\n{"prompt": "3+3?"}\n')
    with pytest.raises(DataError, match=re.escape(f"{f}:3: missing field \"answer\" or \"response\"")):
        task.load()
    f.write_text('{"prompt": "2+2?", "answer": "4"}\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=re.escape(f"{f}:2: invalid JSON")):
        task.load()
    g = tmp_path / "mc.jsonl"
    g.write_text('{"prompt": "Pick", "options": ["a", "b"], "gold_index": 0}\n'
                 '{"prompt": "Pick", "options": ["a", "b"], "gold_index": 5}\n')
    (mc,) = resolve_tasks(str(g))
    assert mc.metric == "mc"
    with pytest.raises(DataError, match=re.escape(f"{g}:2: gold_index 5")):
        mc.load()
    with pytest.raises(DataError, match="not found"):
        resolve_tasks(str(tmp_path / "nope.jsonl"))


def test_world_file_missing_field_names_line(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "test.jsonl").write_text('{"task": "arithmetic", "prompt": "1+1?", "answer": "2"}\n'
                                  '{"task": "arithmetic", "answer": "3"}\n')
    (task,) = resolve_tasks("arithmetic", tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{d / 'test.jsonl'}:2: missing field prompt")):
        task.load()


# ---- evaluate --------------------------------------------------------------------------------------------

def test_oracle_scores_perfectly_and_results_are_saved(world, tmp_path):
    lm = oracle(world)
    res = evaluate(lm, resolve_tasks("all", world), strategy="direct", limit=5, out_dir=tmp_path)
    t = res["tasks"]
    for name in ("arithmetic", "last_letter", "coin_flip", "date_arithmetic"):
        assert t[name]["metric"] == "exact_match" and t[name]["score"] == 1.0, name
    assert t["summarization"]["score"] == pytest.approx(1.0) and t["summarization"]["metrics"]["rouge2"] == 1.0
    assert t["translation"]["score"] == pytest.approx(1.0)  # corpus BLEU / 100: every score is in [0, 1]
    assert t["refusal"]["score"] == 1.0
    mc = t["multiple_choice"]["metrics"]
    assert mc["acc"] == 1.0 and mc["flip_rate"] == 0.0 and mc["order_consistency"] == 1.0 and mc["chance"] == 0.25
    assert t["multiple_choice"]["strategy"] == "loglikelihood"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["arithmetic"]["score"] == 1.0
    items = [json.loads(x) for x in (tmp_path / "items" / "arithmetic.jsonl").read_text().splitlines()]
    assert len(items) == t["arithmetic"]["n"] == 5
    assert re.search(r"test\.jsonl:\d+$", items[0]["line"]) and items[0]["score"] == 1.0


def test_wrong_model_scores_zero_and_compare_shows_deltas(world, tmp_path, capsys):
    tasks = resolve_tasks("arithmetic,refusal", world)
    evaluate(oracle(world), tasks, limit=3, out_dir=tmp_path / "good")
    evaluate(oracle(world, wrong=True), tasks, limit=3, out_dir=tmp_path / "bad")
    bad = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert bad["tasks"]["arithmetic"]["score"] == 0.0 and bad["tasks"]["refusal"]["score"] == 0.0
    table = compare(tmp_path / "bad", tmp_path / "good")
    line = next(ln for ln in table.splitlines() if ln.startswith("arithmetic") and "exact_match" in ln)
    assert line.split()[-3:] == ["0.000", "1.000", "+1.000"]
    assert eval_cli(["compare", str(tmp_path / "bad"), str(tmp_path / "good")]) == table
    assert "+1.000" in capsys.readouterr().out
    with pytest.raises(DataError, match="no eval results"):
        eval_cli(["compare", str(tmp_path / "bad"), str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="needs two result folders"):
        eval_cli(["compare", str(tmp_path / "bad")])


def test_cot_uses_train_rationales_and_falls_back(world):
    lm = oracle(world)
    res = evaluate(lm, resolve_tasks("arithmetic,date_arithmetic,summarization", world), strategy="cot", limit=2,
                   cfg=EvalConfig(shots=2))
    prompts = [p for ps, kw in lm.calls for p in ps]
    train = [r for r in _rows(world, "train") if r["task"] == "arithmetic"]
    arith = [p for p in prompts if train[0]["rationale"].splitlines()[0] in p]
    assert len(arith) == 2 and all(p.count("Question:") == 3 for p in arith)
    assert all(kw["stop"] == ("\nQuestion:",) for ps, kw in lm.calls if ps[0] in arith)
    # date arithmetic is held out of train: no rationales, so zero-shot "Let's think step by step"
    assert sum(p.endswith("Let's think step by step.") for p in prompts) == 2
    assert res["tasks"]["summarization"]["strategy"] == "fewshot"  # CoT does not apply to ROUGE tasks
    assert res["tasks"]["arithmetic"]["strategy"] == "cot"


def test_self_consistency_and_tot_strategies_run(world):
    answers = {r["prompt"]: r["answer"] for r in _rows(world)}

    def respond(prompt, i, rng):  # 3 of 5 samples right, the rest scattered
        q = next((p for p in answers if p in prompt), None)
        if prompt.endswith("Rating:"):
            return "5"
        return f"The answer is {answers[q] if i % 5 in (0, 2, 4) else 'x' + str(i)}." if q else ""

    lm = StubLM(respond=respond, chat=True)
    cfg = EvalConfig(samples=5, tot_depth=2, tot_beam=2, tot_branching=2)
    res = evaluate(lm, resolve_tasks("coin_flip", world), strategy="self_consistency", limit=3, cfg=cfg)
    assert res["tasks"]["coin_flip"]["score"] == 1.0
    res = evaluate(lm, resolve_tasks("last_letter", world), strategy="tot", limit=2, cfg=cfg)
    assert res["tasks"]["last_letter"]["score"] == 1.0 and res["tasks"]["last_letter"]["expansions_per_item"] == 1
    with pytest.raises(ConfigError, match="unknown strategy"):
        evaluate(lm, [], strategy="magic")


def test_user_jsonl_with_metric_suffix_and_holdout(tmp_path):
    f = tmp_path / "notes.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Summarise note {i}", "response": f"note {i} is short"}) + "\n"
                         for i in range(4)))
    (task,) = resolve_tasks(f"{f}:rouge", shots=1)
    assert task.name == "notes" and task.metric == "rouge" and len(task.load()) == 3  # first row held for examples
    lm = StubLM(respond=lambda p, i, rng: p.rsplit("Summarise ", 1)[1].split("\n")[0] + " is short")
    res = evaluate(lm, [task], strategy="fewshot", cfg=EvalConfig(shots=1))
    assert res["tasks"]["notes"]["score"] == pytest.approx(1.0)
    assert lm.calls[0][0][0].startswith("Question: Summarise note 0\nAnswer: note 0 is short")


def test_report_rows(world):
    tasks = resolve_tasks("arithmetic,multiple_choice", world)
    base = evaluate(oracle(world, wrong=True), tasks, limit=2, cfg=EvalConfig(option_order=False))
    res = evaluate(oracle(world), tasks, limit=2, strategy="fewshot")
    rows = report_rows(res)
    assert all(set(r) == {"metric", "value", "baseline", "note"} for r in rows)
    by = {r["metric"].split()[0]: r for r in rows}
    assert by["multiple_choice"]["baseline"] == 0.25 and by["multiple_choice"]["value"] == 1.0
    assert by["arithmetic"]["baseline"] is None and "(fewshot)" in by["arithmetic"]["metric"]
    rows = report_rows(res, baseline=base)
    assert {r["metric"].split()[0]: r["baseline"] for r in rows} == {"arithmetic": 0.0, "multiple_choice": 0.0}


# ---- contamination -------------------------------------------------------------------------------------------

ITEMS = [{"task": "t", "prompt": "Mara Quill packs 7 boxes with 12 pears in each box and then she sells 30 pears "
                                 "at the market in Oakmere", "response": "The answer is 54."},
         {"task": "t", "prompt": "Tobin Reed walks his dog along the river Sill every morning before work",
          "response": "He walks it every morning."},
         {"task": "t", "prompt": "Heads or tails?", "response": "tails"}]


def test_contamination_flags_planted_overlap_only(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = ["A story about the village. " + ITEMS[0]["prompt"] + ". Then she went home.",
            "Nothing to see here but bees and boats and a long quiet road to the mill."]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    for n in (13, 8):
        res = check_contamination(ITEMS, NgramIndex.from_files([corpus], n=n))
        assert [f["index"] for f in res["flagged"]] == [0]
        assert 0 < res["flagged"][0]["overlap"] < 1  # the prompt matches, the response does not
        assert res["rate"] == pytest.approx(1 / 3) and res["n"] == n
    clean = tmp_path / "clean.txt"
    clean.write_text(docs[1] + "\n" + "Mara Quill packs boxes. " * 3)
    assert check_contamination(ITEMS, NgramIndex.from_files([clean], n=8))["n_flagged"] == 0
    # an item shorter than n counts only if it appears verbatim
    short = NgramIndex.from_texts(["He asked: heads or tails? Tails, she said."], n=13)  # prompt + response
    assert check_contamination(ITEMS, short)["flagged"][0]["index"] == 2
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'bad.jsonl'}:1: no text field")):
        (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
        NgramIndex.from_files([tmp_path / "bad.jsonl"])


# ---- needle in a haystack --------------------------------------------------------------------------------------

def test_needle_grid_and_heatmap(tmp_path):
    def respond(prompt, i, rng):  # a model that only remembers the first half of its context
        hay = prompt.split("\nQuestion:")[0]
        m = re.search(r"secret number of [a-z ]+ is (\d+)", hay)
        return f" {m.group(1)}." if m and m.start() < len(hay) / 2 else " 1234."

    res = needle_grid(StubLM(respond=respond), context_lengths=(40, 80), depths=(0.0, 0.25, 0.75, 1.0), trials=2)
    assert res["accuracy"] == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert res["mean_accuracy"] == 0.5 and len(res["items"]) == 16
    png = plot_needle(res, tmp_path / "needle.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    case = make_case(60, 0.5, __import__("random").Random(0), lambda t: len(t.split()))
    assert 50 <= len(case.prompt.split("\nQuestion:")[0].split()) <= 60 and case.answer in case.prompt
    wc = world_case(60, 1.0, __import__("random").Random(0), lambda t: len(t.split()))
    assert wc.answer in wc.prompt and wc.prompt.splitlines()[-1].startswith("What is the secret code for the ")


# ---- a real checkpoint through main() and the CLI -----------------------------------------------------------------

def test_main_and_cli_on_a_tiny_checkpoint(world, tmp_path, capsys):
    import torch

    from genforge.checkpoint import save_checkpoint
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    texts = [r["prompt"] + " " + r["response"] for r in _rows(world, "train")]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=400))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, width=32, head_dim=16, max_seq_len=160))
    ckpt = save_checkpoint(tmp_path / "run" / "sft", model, tok)
    out = tmp_path / "eval"
    cfg = EvalConfig(checkpoint=str(ckpt), tasks="arithmetic,multiple_choice", tasks_dir=str(world), limit=2,
                     max_new_tokens=4, out=str(out), needle=True, needle_lengths=[32, 512], needle_depths=[0.0, 1.0],
                     needle_trials=1, contamination=[str(world / "corpus.jsonl")], ngram=8,
                     perplexity=[str(world / "corpus.txt")] if (world / "corpus.txt").exists() else [])
    res = harness.main(cfg)
    assert set(res["tasks"]) == {"arithmetic", "multiple_choice"}
    assert res["needle"]["context_lengths"] == [32]  # 512 does not fit a 160-token context
    assert (out / "needle.png").exists() and (out / "contamination.json").exists()
    assert res["contamination"]["n_items"] == 4
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["strategy"] == "direct" and "needle" in saved
    assert 0.0 <= saved["tasks"]["multiple_choice"]["metrics"]["acc_norm"] <= 1.0
    rows = report_rows(saved)
    assert any(r["metric"] == "needle-in-a-haystack accuracy" for r in rows)
    capsys.readouterr()

    # the CLI: the world folder is found beside the run; the checkpoint is a positional shorthand and
    # every other setting a key=value override; the resolved config is saved beside the results
    (tmp_path / "run" / "world").symlink_to(world, target_is_directory=True)
    eval_cli([str(ckpt), "tasks=coin_flip", "limit=1", "strategy=fewshot", f"out={tmp_path / 'cli'}",
              "max_new_tokens=3", "shots=1"])
    cli_res = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli_res["tasks"]["coin_flip"]["strategy"] == "fewshot" and cli_res["config"]["shots"] == 1
    assert "shots: 1" in (tmp_path / "cli" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="unknown task 'nonsense'; known tasks in .*arithmetic"):
        eval_cli([str(ckpt), "tasks=nonsense", f"out={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="unknown config key 'shot'"):
        eval_cli([str(ckpt), "shot=2"])
