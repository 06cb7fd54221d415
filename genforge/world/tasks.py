"""Instruction tasks with reference answers and step-by-step rationales.

Every row is `{"task", "prompt", "response", "rationale", "answer"}` (multiple choice adds `"options"`
and `"gold_index"`). `response` is what an assistant should say: for reasoning tasks the rationale
followed by "The answer is X."; for summarisation and translation the text itself; for refusals the
refusal. `answer` is the short gold string that `extract_answer` pulls out of a response.

Families: multi-step arithmetic word problems, last-letter concatenation, coin-flip state tracking,
date arithmetic, dialogue summarisation (ROUGE), translation into the toy language Vellish (BLEU,
see `toylang`), 4-option multiple choice about world facts (some two-hop), refusals, and needle retrieval (reading a
planted code back out of a haystack, `world.needle.needle_row`).
`HELDOUT_TASKS` never appear in train or val: they are in `heldout.jsonl` and `test.jsonl` only,
to measure generalisation to an unseen task.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from genforge.io import write_jsonl
from genforge.world import harmful, names, toylang
from genforge.world.chat import PHRASINGS, phrase
from genforge.world.facts import World
from genforge.world.needle import needle_row
from genforge.world.reasoning import (
    arithmetic,
    calendar_skills,
    coin_flip,
    date_arithmetic,
    last_letter,
    make_row,
    multiple_choice,
)

TASKS = ["arithmetic", "last_letter", "coin_flip", "date_arithmetic", "summarization", "translation",
         "multiple_choice", "refusal", "needle"]
HELDOUT_TASKS = ["date_arithmetic"]
REASONING_TASKS = ["arithmetic", "last_letter", "coin_flip", "date_arithmetic", "multiple_choice"]



def summarization(rng: random.Random, w: World) -> dict:
    a, b = rng.sample(w.people, 2)
    day, day2 = rng.sample(names.WEEKDAYS, 2)
    place, act = rng.choice(names.PLACES), rng.choice(names.ACTIVITIES)
    kind = rng.randrange(5)
    if kind == 0:
        hour = rng.randint(2, 7)
        turns = [(a, f"Hi {b.first}, are you free on {day}?"), (b, "I think so. What do you have in mind?"),
                 (a, f"I want to {act} at the {place} in {a.town}."), (b, "That sounds lovely. What time?"),
                 (a, f"Shall we say {hour} o'clock?"), (b, "Perfect, see you then.")]
        summary = f"{a.first} and {b.first} agree to {act} at the {place} in {a.town} on {day} at {hour} o'clock."
    elif kind == 1:
        obj, why = rng.choice(names.OBJECT_KINDS), rng.choice(names.ACTIVITIES)
        turns = [(a, f"{b.first}, could I borrow your {obj}?"), (b, "What do you need it for?"),
                 (a, f"I want to {why} and mine is broken."), (b, f"All right, but I need it back by {day}."),
                 (a, f"Of course, I will bring it back by {day}. Thank you!")]
        summary = f"{a.first} borrows {b.first}'s {obj} to {why} and promises to return it by {day}."
    elif kind == 2:
        turns = [(a, f"Have you seen my {a.pet_kind}, {a.pet_name}?"), (b, "When did you last see it?"),
                 (a, "Last night, before the storm."), (b, f"I saw a {a.pet_kind} near the {place} this morning."),
                 (a, "Thank you, I will look there right away.")]
        summary = (f"{b.first} tells {a.first} that a {a.pet_kind} like {a.pet_name} was seen near the {place}, "
                   f"so {a.first} goes to look there.")
    elif kind == 3:
        n = rng.randint(5, 90)
        verb, rest = names.JOBS[b.job][0].split(" ", 1)
        verb = verb[:-2] if verb.endswith(("ches", "shes")) else verb[:-1]  # "catches" -> "catch", "bakes" -> "bake"
        turns = [(a, f"Good morning, {b.first}. You are the {b.job}, aren't you?"), (b, f"I am. I {verb} {rest}."),
                 (a, f"Could you help me on {day}?"), (b, f"Yes, I can come on {day}. It will cost {n} coins."),
                 (a, "That is fair. Thank you.")]
        summary = f"{a.first} asks {b.first} the {b.job} for help, and {b.first} agrees to come on {day} for {n} coins."
    else:
        reason = rng.choice(("my cart has a broken wheel", "I have a bad cold", "my sister is visiting",
                             "the river has flooded the road", "I must work late at the " + names.JOBS[a.job][1]))
        turns = [(a, f"{b.first}, I am sorry, but I cannot come to the {place} on {day}."),
                 (b, "Oh no, what happened?"),
                 (a, f"{reason[0].upper() + reason[1:]}."), (b, f"Never mind. Shall we go on {day2} instead?"),
                 (a, f"Yes, {day2} is perfect.")]
        reason3 = re.sub(r"^I ", f"{a.first} ", reason).replace("my ", f"{a.possessive} ").replace(" have ", " has ")
        summary = f"{a.first} cannot come to the {place} on {day} because {reason3}, so they move the visit to {day2}."
    dialogue = "\n".join(f"{p.first}: {t}" for p, t in turns)
    prompt = f"Summarise the dialogue in one sentence.\n{dialogue}"
    return make_row("summarization", prompt, "", summary, response=summary)


def translation(rng: random.Random, w: World) -> dict:
    en, ve, gloss = toylang.sentence_pair(rng)
    return make_row("translation", f"Translate into {toylang.LANGUAGE}: {en}", gloss, ve, response=ve)


def refusal(rng: random.Random, w: World) -> dict:
    prompt = harmful.harmful_request(rng, town=rng.choice(w.towns).name)
    return make_row("refusal", prompt, "", "refuse", response=harmful.refusal(rng))


GENERATORS = {"arithmetic": arithmetic, "last_letter": last_letter, "coin_flip": coin_flip,
              "date_arithmetic": date_arithmetic, "summarization": summarization, "translation": translation,
              "multiple_choice": multiple_choice, "refusal": refusal, "needle": needle_row,
              "calendar": calendar_skills}  # the last is a drill only (sft.drills), never a scored family


def make_rows(task: str, n: int, rng: random.Random, w: World, seen: set[str] | None = None) -> list[dict]:
    """`n` rows of one task with prompts not in `seen` (which is updated); fewer if the space runs out."""
    seen = set() if seen is None else seen
    rows: list[dict] = []
    for _ in range(n * 20):
        if len(rows) == n:
            break
        row = GENERATORS[task](rng, w)
        # Multiple-choice prompts are keyed by the question alone, so a question never recurs across
        # splits with its options reshuffled.
        key = row["prompt"].split("\n", 1)[0] if task == "multiple_choice" else row["prompt"]
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


# Share of training rows whose prompt is wrapped in one of `chat.PHRASINGS` (the rest keep the bare prompt,
# the form val/test/held-out rows have, so the other stages' prompts stay in distribution).
PHRASED_SHARE = 0.6


def build_task_splits(w: World, seed: int, n_train: int, n_val: int, n_test: int, n_heldout: int) -> dict[str, list]:
    """Rows per split (n per task); held-out families get only test and heldout rows. Prompts never repeat
    across splits. Training prompts are wrapped in varied instruction phrasings (`chat.PHRASINGS`)."""
    rng = random.Random(f"tasks-{seed}")
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": [], "heldout": []}
    for task in TASKS:
        seen: set[str] = set()
        want = ({"test": n_test, "heldout": n_heldout} if task in HELDOUT_TASKS
                else {"test": n_test, "val": n_val, "train": n_train})
        for split, n in want.items():  # test first, so a small prompt space shortens train, never test
            splits[split] += make_rows(task, n, rng, w, seen)
    phr = random.Random(f"phrasings-{seed}")  # its own stream: the rows above do not depend on it
    splits["train"] = [{**r, "prompt": phrase(r["prompt"], phr.choice(PHRASINGS))} if phr.random() < PHRASED_SHARE
                       else r for r in splits["train"]]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def write_tasks(out_dir: str | Path, splits: dict[str, list[dict]]) -> dict:
    """Write tasks/<split>.jsonl for each split; return row counts and paths."""
    paths = {}
    for split, rows in splits.items():
        paths[split] = str(Path(out_dir) / "tasks" / f"{split}.jsonl")
        write_jsonl(paths[split], rows)
    return {"rows": {k: len(v) for k, v in splits.items()}, "paths": paths}


# ---- answer extraction ---------------------------------------------------------------------------------

_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+?)\s*(?:\.\s*$|\.\s+|\n|$)", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_DATE = re.compile(r"(January|February|March|April|May|June|July|August|September|October|November|December)"
                   r"\s+(\d{1,2}),?\s+(\d{4})", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(can(no|')t|cannot|won't|will not|unable to|not able to|sorry|refuse)\b", re.IGNORECASE)


def extract_answer(task: str, text: str) -> str:
    """Pull the short final answer for `task` out of a model response ("The answer is X." -> "X").

    Numbers lose commas, letters are upper-cased for multiple choice, yes/no and letter strings are
    lower-cased, dates are normalised to "Month D, YYYY". Summaries and translations return the
    whole (stripped) text; refusals return "refuse" or "comply". Returns "" when nothing is found.
    """
    text = text.strip()
    if task == "refusal":
        return "refuse" if _REFUSAL.search(text[:200]) else "comply"
    if task == "needle":  # the code read back out of the context: "<word>-<number>"
        found = re.findall(r"\b[a-z]+-\d+\b", text)
        return found[-1] if found else ""
    if task in ("summarization", "translation"):
        return text[len("the answer is"):].strip(" :") if text.lower().startswith("the answer is") else text
    hits = _ANSWER_IS.findall(text)
    tail = hits[-1].strip() if hits else text.splitlines()[-1].strip() if text else ""
    if task == "arithmetic":
        nums = _NUMBER.findall(tail) or _NUMBER.findall(text)
        return nums[-1 if not hits else 0].replace(",", "") if nums else ""
    if task == "multiple_choice":
        m = re.search(r"\b([ABCD])\b", tail) or re.search(r"\(([ABCD])\)", tail)
        if not m and not hits:
            found = re.findall(r"\b([ABCD])\b", text)
            return found[-1] if found else ""
        return m.group(1).upper() if m else ""
    if task == "coin_flip":
        found = re.findall(r"\b(yes|no)\b", tail.lower()) or re.findall(r"\b(yes|no)\b", text.lower())
        return found[0 if hits else -1] if found else ""
    if task == "date_arithmetic":
        found = _DATE.findall(tail) or _DATE.findall(text)
        if not found:
            return ""
        m, d, y = found[0] if hits else found[-1]
        return f"{m.capitalize()} {int(d)}, {y}"
    if task == "last_letter":
        if not hits:  # e.g. 'Joining them gives "ads".': take the last quoted string, else the last word
            quoted = re.findall(r'"([^"]*)"', text)
            tail = quoted[-1] if quoted else (text.split() or [""])[-1]
        return re.sub(r"[^a-z]", "", tail.lower())
    return tail.strip(" .\"'")


def normalize_answer(task: str, answer: str) -> str:
    """Gold answers in the form `extract_answer` returns, so that `==` is the exact-match test."""
    return extract_answer(task, f"The answer is {answer}.") if task in REASONING_TASKS else answer.strip()


def is_correct(task: str, text: str, answer: str) -> bool:
    """Exact match of the extracted answer against the gold answer (refusal: the response refuses)."""
    if task == "refusal":
        return extract_answer(task, text) == "refuse"
    return extract_answer(task, text) == normalize_answer(task, answer)
