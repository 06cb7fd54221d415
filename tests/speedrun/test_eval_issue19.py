"""Issue 19's eval rows on scripted models: prompt search finds the instruction a stub needs, the variant table
shows the one variant that helps, the judge's biases are measured, contamination by asking separates memorised
items, the false-belief lesson needs belief tracking, and diversity rises with temperature."""

import json
import random

import pytest

from genforge.eval.lm import StubLM
from genforge.report import StageReport
from genforge.speedrun import eval as ev
from genforge.speedrun.stage import StageContext
from genforge.world import tom


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from genforge.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, size="smoke")
    return out


@pytest.fixture(scope="module")
def tasks(world_dir):
    from genforge.eval.tasks import resolve_tasks

    return {t.name: t for t in resolve_tasks("all", world_dir, "test")}


def answer_of(tasks):
    """prompt (any phrasing, any split) -> the row's answer, for coin_flip."""
    out = {}
    for split in ("train", "val", "test"):
        path = tasks["coin_flip"].path.parent / f"{split}.jsonl"
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["task"] == "coin_flip":
                for p in [r["prompt"], *r.get("prompts", {}).values()]:
                    out[p] = r["answer"]
    return out


def needs(tasks, phrase: str):
    """A chat stub that answers coin_flip right only when `phrase` is in the prompt (anywhere)."""
    answers = answer_of(tasks)

    def respond(prompt, i, rng):
        for p, a in answers.items():
            if p in prompt:
                return f"The answer is {a if phrase in prompt else 'maybe'}."
        return "I gave a friend an instruction: think step by step."
    return StubLM(respond, chat=True)


def test_prompt_search_finds_the_instruction_the_model_needs(tasks, tmp_path):
    cfg = ev.Config(lesson_limit=12, ape_dev=8, ape_generated=2, rl_group=4, rl_batch=2)
    rep = StageReport("eval", "t")
    found = ev.prompt_search_lessons(StageContext(tmp_path), rep, needs(tasks, "step by step"), tasks["coin_flip"],
                                     cfg, tmp_path, transfer=tasks["date_arithmetic"])
    (ape,) = [les for les in rep.lessons if les.claim.startswith("APE")]
    assert "step by step" in found["ape"] and ape.holds and ape.effect == pytest.approx(1.0)
    data = json.loads((tmp_path / "prompt_search.json").read_text())
    assert data["rl_calls"] <= data["ape_calls"] + cfg.rl_group * cfg.rl_batch  # about equal model calls
    assert (tmp_path / "plots" / "rl_prompt_search.png").exists()
    assert any(r.metric.startswith("APE's instruction transferred") for r in rep.rows)
    assert any(r.metric.startswith("RL search, best-rewarded") for r in rep.rows)


def test_variants_table_shows_the_variant_that_helps(tasks, tmp_path):
    cfg = ev.Config(variant_limit=10, variants=["trigger", "tip"])
    rep = StageReport("eval", "t")
    lm = needs(tasks, "deep breath")
    ev.variants_lesson(StageContext(tmp_path), rep, {"SFT": lm, "aligned": lm}, tasks["coin_flip"], cfg, tmp_path)
    table = "\n".join(rep.text)
    trig = next(line for line in table.splitlines() if "OPRO" in line)
    tip = next(line for line in table.splitlines() if "tip" in line)
    assert trig.count("1.000 [1.000, 1.000]") == 2 and tip.count("0.000 [0.000, 0.000]") == 2


def test_judge_that_always_says_a_is_all_position(world_dir, tmp_path):
    rep = StageReport("eval", "t")
    # the forced-choice judge reads ' A' vs ' B'; this stub scores every continuation alike, so A wins every tie
    ev.judge_lesson(rep, StubLM(lambda p, i, rng: "", chat=True), str(world_dir), ev.Config(judge_pairs=12), 0,
                    tmp_path)
    (les,) = rep.lessons
    assert les.effect == pytest.approx(0.5) and not les.holds  # every verdict flips with the order: all ties
    rows = {r.metric.split(":")[0]: r.value for r in rep.rows}
    assert rows["judge position bias"] == 1.0 and rows["judge length bias"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "judge.json").read_text())["invalid_rate"] == 0.0


def test_judge_position_calibration_finds_a_judge_that_knows_the_better_answer(world_dir, tmp_path):
    """A judge that prefers position A by 2 nats and the oracle's better answer by 1: raw verdicts are all
    order-dependent (0.5), the position-calibrated agreement is 1."""
    best = set()
    for line in (world_dir / "preferences.jsonl").read_text().splitlines():
        r = json.loads(line)
        best.add(" ".join(r["completions"][r["ranking"][0]].split()[:ev.Config().judge_words]))

    def score(context, continuation):
        a = context.split("Response A: ", 1)[1].split("\n\nResponse B: ")[0]
        good = "A" if a in best else "B"
        # a chat model's verdict is scored right after its assistant tag: "A", not " A"
        return (2.0 if continuation == "A" else 0.0) + (1.0 if continuation == good else 0.0)

    rep = StageReport("eval", "t")
    ev.judge_lesson(rep, StubLM(score=score, chat=True), str(world_dir), ev.Config(judge_pairs=12), 0, tmp_path)
    assert rep.lessons[0].effect == pytest.approx(0.5) and rep.lessons[0].n == 12
    cal = next(r for r in rep.rows if "position-calibrated" in r.metric)
    assert cal.value.startswith("1.000 [1.000, 1.000]")


def test_contamination_by_asking_and_the_leaked_false_belief_items(world_dir, tmp_path):
    rows = [json.loads(line) for line in (world_dir / "contamination.jsonl").read_text().splitlines()]
    seen = [r["text"] for r in rows if r["split"] == "planted"]

    def respond(prompt, i, rng):
        return next((t[len(prompt):] for t in seen if t.startswith(prompt)), " and a cat.")

    def score(context, continuation):  # knows the answers of the planted stories only
        gold = next((r["answer"] for r in rows if r["split"] == "planted" and r["prompt"] == context), None)
        return 0.0 if gold and gold in continuation else -1.0

    lm = StubLM(respond, score=score)
    rep = StageReport("eval", "t")
    corpus = world_dir / "corpus.jsonl"
    ev.contamination_lesson(rep, lm, str(world_dir), str(corpus), ev.Config(contam_words=6), tmp_path)
    (les,) = rep.lessons
    assert les.holds and les.effect == pytest.approx(1.0)
    rep2 = StageReport("eval", "t")
    ev.tom_lesson(rep2, {"SFT": lm, "pretrained": lm}, str(world_dir), str(corpus), ev.Config(tom_items=9), 0,
                  tmp_path)
    leak = next(r for r in rep2.rows if r.metric.startswith("false belief, pretrained"))
    assert leak.note.startswith("accuracy 1.00 vs") and float(leak.value.split()[0]) > 0.2
    assert next(r for r in rep2.rows if "public Sally-Anne" in r.metric).value == "no"


def test_false_belief_needs_belief_tracking(tmp_path, world_dir):
    items = {it["prompt"]: it for it in tom.false_belief_items(30, 0)}

    def tracker(context, continuation):  # the protagonist's belief, or where the object is for "now"
        it = items.get(context)
        return 0.0 if it and it["answer"] in continuation else -1.0

    def first_container(context, continuation):  # the container the story names first
        it = items.get(context)
        first = it["story"].split(" in the ")[2].split(".")[0] if it else ""  # [1] is the room
        return 0.0 if it and continuation.endswith(f"the {first}.") else -1.0

    for score, holds in ((tracker, True), (first_container, False)):
        rep = StageReport("eval", "t")
        fb = ev.tom_lesson(rep, {"SFT": StubLM(score=score)}, str(world_dir), str(world_dir / "corpus.jsonl"),
                           ev.Config(tom_items=30), 0, tmp_path)
        assert rep.lessons[0].holds is holds and len(fb) == 10
        if not holds:
            assert "false belief 1.00" in rep.lessons[0].note and "true belief 0.00" in rep.lessons[0].note


def test_diversity_rises_with_temperature(world_dir, tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

    def respond(prompt, i, rng):  # greedy-ish at low T: the stub reads T from the seed it is given via calls
        return " ".join(rng.choice(words) for _ in range(8))

    class TempStub(StubLM):
        def generate(self, prompts, *, temperature=0.0, n=1, seed=None, **kw):
            if temperature < 0.75:  # low temperature: every sample the same
                return [[" ".join(words[:8])] * n for _ in prompts]
            return super().generate(prompts, temperature=temperature, n=n, seed=seed, **kw)

    rep = StageReport("eval", "t")
    lm = TempStub(respond)
    ev.diversity_lesson(StageContext(tmp_path), rep, {"SFT": lm, "aligned": lm}, str(world_dir),
                        ev.Config(div_prompts=3, div_samples=3, div_temperatures=[0.5, 1.0]), tmp_path)
    d = json.loads((tmp_path / "diversity.json").read_text())
    assert d["SFT"]["0.5"]["self_bleu"] == pytest.approx(100.0) and d["SFT"]["1.0"]["self_bleu"] < 60
    assert d["SFT"]["1.0"]["distinct_2"] > d["SFT"]["0.5"]["distinct_2"]
    random.seed(0)


def test_ape_compares_a_found_instruction_when_the_hand_written_prompt_wins(tasks, tmp_path):
    """The hand-written prompt is the baseline, not a candidate: a model that is right only without any added
    instruction makes every found instruction lose (-1), where comparing the dev winner with itself gave 0 [0, 0]."""
    answers = answer_of(tasks)

    def respond(prompt, i, rng):
        a = answers.get(prompt)  # exactly a world prompt: no instruction added
        return f"The answer is {a}." if a else "The answer is maybe."

    cfg = ev.Config(lesson_limit=8, ape_dev=6, ape_generated=1, rl_group=2, rl_batch=2)
    rep = StageReport("eval", "t")
    found = ev.prompt_search_lessons(StageContext(tmp_path), rep, StubLM(respond, chat=True), tasks["coin_flip"],
                                     cfg, tmp_path)
    (ape,) = [les for les in rep.lessons if les.claim.startswith("APE")]
    assert found["ape"] and "(none)" not in ape.measured and ape.effect == pytest.approx(-1.0) and not ape.holds
    assert json.loads((tmp_path / "prompt_search.json").read_text())["ape"]["dev_winner"] == ""


def test_wrong_labels_note_says_how_often_flipping_changes_a_prediction(world_dir, tmp_path):
    """A model that ignores its context: flipping every label changes no prediction, and the note says so."""
    import torch

    class Sized(StubLM):
        def __init__(self, n, **kw):
            super().__init__(**kw)
            self.model = torch.nn.Linear(n, 1)

    def town(context, continuation):
        return 1.0 if continuation == " town" else 0.0

    rep = StageReport("eval", "t")
    models = {"a": Sized(2, score=town), "b": Sized(4, score=town)}
    ev.wrong_labels_lesson(rep, models, str(world_dir), ev.Config(wrong_label_items=9), 0, tmp_path)
    assert "changes 0% of the predictions" in rep.lessons[0].note
    assert "Flipping every label changes 0% (b), 0% (a)" in rep.lessons[1].note
    assert "| 0.00 |" in "\n".join(rep.text)


def test_fact_sentence_accuracy_reads_the_fact_as_the_corpus_states_it(tasks):
    rows = tasks["multiple_choice"].load(8)
    gold_after = {}  # the fact sentence's start -> its true option
    for r in rows:
        first, gold = r["rationale"].split("\n")[0], r["options"][r["gold_index"]]
        if first.count(gold) == 1 and not first.startswith(gold):  # two-hop rows state another fact first
            gold_after[first[:first.index(gold)].rstrip(" ")] = gold

    def knows(context, continuation):
        return 0.0 if continuation.startswith(f" {gold_after.get(context)}") else -5.0

    acc = ev.fact_sentence_accuracy(StubLM(score=knows), rows)
    assert len(acc) == len(gold_after) > 0 and all(x == 1.0 for x in acc)
    assert sum(ev.fact_sentence_accuracy(StubLM(), rows)) < len(acc)  # by length alone it is not always right


def test_judge_skips_pairs_whose_prompt_passes_the_trained_context(world_dir, tmp_path):
    """Judge prompts past the trained context are read at untrained positions: such pairs are skipped, and said so."""
    seen = []

    class Counting(StubLM):
        def count_tokens(self, text):
            return len(text.split())

    def score(context, continuation):
        seen.append(context)
        return 0.0

    rep = StageReport("eval", "t")
    ev.judge_lesson(rep, Counting(score=score, chat=True), str(world_dir),
                    ev.Config(judge_pairs=6, trained_context=130), 0, tmp_path)
    assert seen and all(len(c.split()) <= 130 - 16 for c in seen)
    assert "skipped whose judge prompt would pass the 130-token" in rep.lessons[0].note
