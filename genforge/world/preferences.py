"""Ranked completions from a simulated human, for reward models and preference tuning (DPO, PPO).

The oracle (`oracle_score`) is a documented stand-in for a human rater. It scores a completion in
[0, 1] as

    score = 0.60 * correct + 0.25 * helpful + 0.10 * polite + 0.05 * concise

* correct (0-1): for answer tasks, 1 if `extract_answer` matches the gold answer, else 0; for
  summaries and translations, the mean of unigram and bigram F1 against the reference (graded); for
  harmful requests, 1 if the completion refuses. Without a task row: 1/0 for refusing/complying with a
  harmful-looking prompt, otherwise 0.5 (unknown).
* helpful (0-1): for reasoning tasks, the share of the reference rationale's words the completion
  contains (showing the steps); for refusals, whether it says why or offers a safe alternative;
  for summaries/translations, whether it gives a non-empty answer. Without a row: 1 for two or more
  sentences, else 0.3.
* polite (0-1): 0.5, plus 0.5 if any courteous marker ("sure", "happy to", "hope this helps" ...),
  minus 0.5 per rude marker ("obviously", "figure it out yourself" ...).
* concise (0-1): 1 up to 1.3x the reference length + 60 characters, then falling linearly to 0 at
  twice that allowance.

The weights make the order lexicographic for all-or-nothing features: correct > helpful > polite >
concise (each weight exceeds the sum of those after it). Ranked rows order completions by this score
(ties, which the generator avoids, by shorter first).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from genforge.io import write_jsonl
from genforge.world import harmful
from genforge.world.tasks import REASONING_TASKS, extract_answer, is_correct

WEIGHTS = {"correct": 0.60, "helpful": 0.25, "polite": 0.10, "concise": 0.05}
POLITE = ("sure", "happy to", "glad to", "hope this helps", "of course", "thank you", "thanks", "let's", "please",
          "great question")
RUDE = ("obviously", "stupid", "dumb", "idiot", "figure it out yourself", "keep up", "whatever",
        "what is wrong with you", "waste of my time", "duh", "seriously?")
_HARMFUL_RE = re.compile(r"\b(" + "|".join(map(re.escape, harmful.HARMFUL_PHRASES)) + r")\b", re.IGNORECASE)
_WHY_RE = re.compile(r"\b(because|could|harm|hurt|risk|danger\w*|instead|helpline|happy to help)\b", re.IGNORECASE)
_TOKEN_RE = re.compile(r"\w+")

_OPENERS = ("Sure, let's work through it step by step.", "Happy to help! Here is my reasoning.",
            "Of course. Let's go one step at a time.")
_RUDE_OPENERS = ("Obviously this is easy.", "Ugh, fine. Keep up.", "Whatever. It's simple.")
_RUDE_CLOSERS = ("Try to keep up next time.", "Figure it out yourself next time.", "Don't waste my time again.")
_PADDING = ("I hope this helps! Please let me know if anything is unclear, and I would be glad to explain any of the "
            "steps again in more detail. Thank you for such a great question; questions like this are a lovely way "
            "to practise careful thinking, and it is always a pleasure to work through them together with you.")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def _f1(pred: list, ref: list) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def text_similarity(pred: str, ref: str) -> float:
    """Mean of unigram and bigram F1 (a cheap ROUGE/BLEU-like overlap in [0, 1])."""
    a, b = _tokens(pred), _tokens(ref)
    if not a or not b:
        return 0.0
    bi = lambda t: list(zip(t, t[1:]))  # noqa: E731 - tiny local helper
    return (_f1(a, b) + (_f1(bi(a), bi(b)) if len(a) > 1 and len(b) > 1 else _f1(a, b))) / 2


def _content(text: str) -> str:
    """The completion without courtesy/rudeness sentences, for comparing free text to a reference."""
    sents = re.split(r"(?<=[.!?])\s+|\n", text)
    keep = [s for s in sents if not any(m in s.lower() for m in POLITE + RUDE)]
    return " ".join(keep) if keep else text


def oracle_score(prompt: str, completion: str, task_row: dict | None = None) -> float:
    """Simulated-human score in [0, 1]: correctness dominates, then helpfulness, politeness, concision."""
    parts = oracle_parts(prompt, completion, task_row)
    return round(sum(WEIGHTS[k] * v for k, v in parts.items()), 6)


def oracle_parts(prompt: str, completion: str, task_row: dict | None = None) -> dict[str, float]:
    """The four parts of `oracle_score`, each in [0, 1] (the report shows "correct" beside win rates)."""
    low = completion.lower()
    task = task_row.get("task") if task_row else None
    if task is None and _HARMFUL_RE.search(prompt):
        task = "refusal"
    # correct
    if task_row is not None and task in ("summarization", "translation"):
        correct = text_similarity(_content(completion), task_row["answer"])
    elif task_row is not None and task is not None and "answer" in task_row:
        correct = float(is_correct(task, completion, task_row["answer"]))
    elif task == "refusal":
        correct = float(extract_answer("refusal", completion) == "refuse")
    else:
        correct = 0.5
    # helpful
    if task == "refusal":
        helpful = 1.0 if _WHY_RE.search(completion) else 0.0
    elif task in REASONING_TASKS and task_row and task_row.get("rationale"):
        ref = set(_tokens(task_row["rationale"]))
        helpful = len(ref & set(_tokens(completion))) / len(ref)
    elif task in ("summarization", "translation"):
        helpful = 1.0 if _tokens(_content(completion)) else 0.0
    else:
        helpful = 1.0 if len([s for s in re.split(r"[.!?\n]+", completion) if s.strip()]) >= 2 else 0.3
    # polite
    polite = 0.5 + (0.5 if any(m in low for m in POLITE) else 0.0) - 0.5 * sum(m in low for m in RUDE)
    polite = min(1.0, max(0.0, polite))
    # concise
    ref_len = len(task_row["response"]) if task_row and task_row.get("response") else 200
    allowed = 1.3 * ref_len + 60
    concise = 1.0 if len(completion) <= allowed else max(0.0, 1 - (len(completion) - allowed) / allowed)
    return {"correct": correct, "helpful": helpful, "polite": polite, "concise": concise}


def _wrong_answer(rng: random.Random, row: dict) -> str:
    task, ans = row["task"], row["answer"]
    if task == "arithmetic":
        return str(int(ans) + rng.choice((-1, 1)) * rng.randint(1, 30))
    if task == "multiple_choice":
        return rng.choice([c for c in "ABCD" if c != ans])
    if task == "coin_flip":
        return "no" if ans == "yes" else "yes"
    if task == "last_letter":
        i = rng.randrange(len(ans))
        return ans[:i] + rng.choice([c for c in "aeiorstnl" if c != ans[i]]) + ans[i + 1:]
    if task == "date_arithmetic":
        month, rest = ans.split(" ", 1)
        day, year = rest.split(", ")
        return f"{month} {rng.choice([d for d in range(1, 29) if d != int(day)])}, {year}"
    return ans


def _swap_details(rng: random.Random, text: str) -> str:
    """A wrong summary/translation: a few content words replaced and the order disturbed."""
    ws = text.rstrip(".").split(" ")
    for _ in range(max(2, len(ws) // 4)):
        i, j = rng.randrange(len(ws)), rng.randrange(len(ws))
        ws[i], ws[j] = ws[j], ws[i]
    return " ".join(ws) + "."


def completions_for(rng: random.Random, row: dict) -> list[str]:
    """Six completions spanning correct/incorrect x helpful/terse x polite/rude x concise/verbose."""
    task, resp = row["task"], row["response"]
    if task == "refusal":
        goal = rng.choice(harmful.HARMFUL_GOALS)
        return [resp, "I won't help with that.", "Absolutely not, what is wrong with you? I won't help with that.",
                f"{resp} {_PADDING}", f"Sure! Here is how to {goal}. Step 1: get [MATERIAL]. Step 2: [REDACTED].",
                f"Whatever. Step 1: [REDACTED]. Step 2: [REDACTED]. That's how you {goal}."]
    if task in ("summarization", "translation"):
        wrong = _swap_details(rng, resp)
        short_pad = _PADDING.split("! ", 1)[0] + "! " + _PADDING.split("! ", 1)[1].split(". ", 1)[0] + "."
        return [f"Sure! {resp}", f"Sure! {resp} {short_pad}", f"{resp} Obviously.", f"Sure! {wrong}",
                "Obviously nothing much happened." if task == "summarization" else "Whatever. vesk la.", resp]
    wrong = _wrong_answer(rng, row)
    # Make the wrong rationale end in the wrong answer, as a confused model's would.
    rationale_wrong = row["rationale"]
    if task == "multiple_choice":
        rationale_wrong = re.sub(r"option [ABCD]:.*$", f"option {wrong}.", rationale_wrong)
    elif row["answer"] in rationale_wrong:
        k = rationale_wrong.rfind(row["answer"])
        rationale_wrong = rationale_wrong[:k] + wrong + rationale_wrong[k + len(row["answer"]):]
    return [f"{rng.choice(_OPENERS)}\n{resp}", f"{rng.choice(_OPENERS)}\n{resp}\n{_PADDING}",
            f"{rng.choice(_RUDE_OPENERS)}\n{resp}\n{rng.choice(_RUDE_CLOSERS)}", f"The answer is {row['answer']}.",
            f"{rng.choice(_OPENERS)}\n{rationale_wrong}\nThe answer is {wrong}.",
            f"It's {wrong}, obviously. {rng.choice(_RUDE_CLOSERS)}"]


def rank(prompt: str, completions: list[str], task_row: dict | None = None) -> tuple[list[int], list[float]]:
    """Indices best -> worst by `oracle_score` (ties: shorter first), and the scores."""
    scores = [oracle_score(prompt, c, task_row) for c in completions]
    order = sorted(range(len(completions)), key=lambda i: (-scores[i], len(completions[i]), i))
    return order, scores


def make_preferences(task_rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` ranked rows from (training) task rows: `{"prompt", "task", "completions", "ranking", "scores"}`."""
    rng = random.Random(f"preferences-{seed}")
    rows = []
    for row in rng.sample(task_rows, min(n, len(task_rows))):
        comps = completions_for(rng, row)
        comps = list(dict.fromkeys(comps))  # drop accidental duplicates
        rng.shuffle(comps)
        ranking, scores = rank(row["prompt"], comps, row)
        rows.append({"prompt": row["prompt"], "task": row["task"], "answer": row["answer"], "completions": comps,
                     "ranking": ranking, "scores": scores})
    return rows


def to_pairs(rows: list[dict]) -> list[dict]:
    """Every (better, worse) pair from each ranked row: `{"prompt", "chosen", "rejected"}` (ties skipped)."""
    pairs = []
    for row in rows:
        r, comps, scores = row["ranking"], row["completions"], row.get("scores")
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                if scores is not None and scores[r[i]] == scores[r[j]]:
                    continue
                pairs.append({"prompt": row["prompt"], "chosen": comps[r[i]], "rejected": comps[r[j]]})
    return pairs


def write_preferences(out_dir: str | Path, task_rows: list[dict], n: int, seed: int) -> dict:
    """Write preferences.jsonl; return counts and the path."""
    rows = make_preferences(task_rows, n, seed)
    path = Path(out_dir) / "preferences.jsonl"
    write_jsonl(path, rows)
    return {"rows": len(rows), "pairs": len(to_pairs(rows)), "path": str(path)}
