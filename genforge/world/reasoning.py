"""Reasoning task families: multi-step arithmetic, last-letter concatenation, coin-flip state tracking,
date arithmetic and 4-option multiple choice about world facts.

Each generator returns one row (see `genforge.world.tasks` for the row format) whose rationale is the
worked chain of thought and whose response is the rationale followed by "The answer is X.".
`genforge.world.tasks` registers them beside the other families and holds the answer extraction.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random

from genforge.world import names
from genforge.world.facts import World

LETTERS = "ABCD"

# How a question asks to be answered. Every reasoning row carries all its phrasings (`prompts`, `responses`);
# its own `prompt`/`response` pair uses one of them, so SFT on the train split teaches each format and the eval
# stage can ask the same test question each way (chain of thought vs direct answering needs a model that knows
# both formats). "l2m" (least-to-most) exists only where a task decomposes into growing subproblems.
STYLES = {
    "cot": "Think step by step.",
    "direct": "Give only the final answer.",
    "l2m": "Solve it part by part, each part building on the last.",
}
# Share of a task's rows in each phrasing: mostly worked solutions (the harder format to learn), enough direct
# answers that the direct format is learned too.
STYLE_WEIGHTS = {"default": {"cot": 0.6, "direct": 0.4}, "last_letter": {"cot": 0.4, "l2m": 0.4, "direct": 0.2}}


def styled_prompt(question: str, style: str) -> str:
    """The question with the instruction that asks for `style` on its own last line."""
    return f"{question}\n{STYLES[style]}"


def pick_style(task: str, question: str) -> str:
    """The phrasing a row uses, fixed by the question text (not by the generator's rng) so a question always gets
    the same prompt: the split builder's prompt dedup then keeps one question out of two splits."""
    weights = STYLE_WEIGHTS.get(task, STYLE_WEIGHTS["default"])
    x, acc = random.Random(f"{task}|{question}").random(), 0.0
    for style, w in weights.items():
        acc += w
        if x < acc:
            return style
    return next(iter(weights))


def make_row(task: str, prompt: str, rationale: str, answer: str, response: str | None = None, *,
             l2m: str = "", shown: str = "", **extra) -> dict:
    """One task row. With `response` None (a reasoning task) `prompt` is the bare question: the row gets
    `question`, `prompts`/`responses` per style (cot: rationale + "The answer is X."; direct: "The answer is X.";
    l2m: the least-to-most rationale, if given) and uses the phrasing `pick_style` chooses as prompt/response.
    shown: how the responses write the answer X when it differs from the gold `answer` (which every scorer compares
    the extracted answer with), e.g. "e-n-x" for the gold "enx"."""
    if response is not None:
        return {"task": task, "prompt": prompt, "response": response, "rationale": rationale, "answer": answer,
                **extra}
    final = f"The answer is {shown or answer}."
    responses = {"cot": f"{rationale}\n{final}", "direct": final}
    if l2m:
        responses["l2m"] = f"{l2m}\n{final}"
    prompts = {s: styled_prompt(prompt, s) for s in responses}
    style = pick_style(task, prompt)
    style = style if style in responses else "cot"
    return {"task": task, "prompt": prompts[style], "response": responses[style], "rationale": rationale,
            "answer": answer, "question": prompt, "style": style, "prompts": prompts, "responses": responses,
            **extra}


def addition_steps(a: int, b: int) -> list[str]:
    """Column addition from the right, one line per digit, always stating the carry (DESIGN.md: this rationale
    takes 3-digit addition from 0.03 to 1.00 after a short fine-tune, where answering directly stays near 0).

    Each line ends with the answer written so far, one digit longer than the line before (its first digit is the
    one the column writes): the final sum is then copied from the last line instead of being read back, digit by
    digit in reverse, from every line (what the chat model got wrong when it had copied every column right). Sums
    are written without spaces ("7+9=16"): each digit is one token either way, a space is one more, and a worked
    sum must fit the align stage's 128-token answer budget."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps, sofar = 0, [], ""
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        s = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry, sofar = s // 10, f"{s % 10}{sofar}"
        steps.append(f"{terms}={s}, carry {carry}, so far {sofar}.")
    if carry:
        steps.append(f"Last carry {carry}, so far {carry}{sofar}.")
    return steps


_ADD_TEMPLATES = (
    "{name} has {a} {it}. {Pr} gets {b} more. How many {it} does {first} have now?",
    "{name} collects {a} {it} on Monday and {b} {it} on Tuesday. How many {it} is that in all?",
    "A shop in {town} has {a} {it} and a cart brings {b} more. How many {it} does the shop have now?",
    "What is {a} + {b}?",
    "{name} walks {a} steps to the {place} and {b} steps back. How many steps is that?",
)


def arithmetic(rng: random.Random, w: World) -> dict:
    """Three-digit addition (carries in most columns) in a one-operation word problem. Calibrated to teach: a
    tiny model cannot add in one step (direct answers stay near 0) but can follow the column rationale."""
    p = rng.choice(w.people)
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    q = rng.choice(_ADD_TEMPLATES).format(name=p.name, first=p.first, Pr=p.pronoun.capitalize(), a=a, b=b,
                                          it=rng.choice(names.ITEMS), town=p.town, place=rng.choice(names.PLACES))
    steps = [f"Add {a} + {b} from the right.", *addition_steps(a, b), f"So {a} + {b} = {a + b}."]
    return make_row("arithmetic", q, "\n".join(steps), str(a + b))


def last_letter(rng: random.Random, w: World) -> dict:
    """Last-letter concatenation over 4-6 words (Wei et al. 2022). Chain of thought lists every letter, then joins
    them all at once; least-to-most (Zhou et al. 2023, their last-letter setup) solves the growing prefixes in order,
    each answer built from the previous one, so every step appends one letter.

    Written so that a BPE model can do it: each word follows a space both in the question and in the rationale, so
    it is the same tokens in both (a quoted word, '"Mosswick', splits into other tokens than ' Mosswick', and copying
    it would need the word's spelling); the answer is the letters joined by hyphens ("e-n-x"), one token each, since
    the joined string "enx" is BPE chunks whose spelling the model would have to know. The extractor drops the
    hyphens, so the gold answer stays "enx" (every scorer compares the extracted answer with it)."""
    pool = [p.first for p in w.people] + [t.name for t in w.towns] + list(names.ITEMS) + list(names.PETS)
    # ASCII last letters only: the "é" of "Renée" would not survive answer normalisation
    pool = sorted({x for x in pool if x[-1].lower() in "abcdefghijklmnopqrstuvwxyz"})
    ws = rng.sample(pool, rng.randint(4, 6))
    letters = [x[-1].lower() for x in ws]
    ans = "-".join(letters)  # what the model writes; the gold answer is the joined string
    prompt = f"Take the last letter of each of these words and join them together: {' '.join(ws)}."
    steps = [f"The last letter of {x} is {c}." for x, c in zip(ws, letters)]
    steps.append(f"Joining them gives {ans}.")
    l2m = [f"The last letter of {x} is {c}, so far {'-'.join(letters[:i + 1])}."
           for i, (x, c) in enumerate(zip(ws, letters))]
    return make_row("last_letter", prompt, "\n".join(steps), "".join(letters), l2m="\n".join(l2m), shown=ans)


def coin_flip(rng: random.Random, w: World) -> dict:
    people = [p.first for p in rng.sample(w.people, rng.randint(3, 6))]
    heads = True
    sents, steps = ["A coin is heads up."], ["The coin starts heads up."]
    for who in people:
        flip = rng.random() < 0.5
        heads = heads != flip
        side = "heads" if heads else "tails"
        sents.append(f"{who} {'flips' if flip else 'does not flip'} the coin.")
        # the question's own sentence, then the state: a copy of the prompt, not a paraphrase of it
        steps.append(f"{who} flips the coin, so it is now {side} up." if flip
                     else f"{who} does not flip the coin, so it stays {side} up.")
    sents.append("Is the coin still heads up?")
    ans = "yes" if heads else "no"
    steps.append(f"The coin ends {'heads' if heads else 'tails'} up.")
    return make_row("coin_flip", " ".join(sents), "\n".join(steps), ans)


def format_date(d: dt.date) -> str:
    return f"{names.MONTHS[d.month - 1]} {d.day}, {d.year}"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def date_arithmetic(rng: random.Random, w: World) -> dict:
    start = dt.date(rng.randint(1990, 2030), 1, 1) + dt.timedelta(days=rng.randrange(365))
    n = rng.randint(5, 150)
    end = start + dt.timedelta(days=n)
    steps, cur, left = [], start, n
    while left > 0:
        month_len = calendar.monthrange(cur.year, cur.month)[1]
        to_end = month_len - cur.day
        if left <= to_end:
            steps.append(f"{_days(left)} after {format_date(cur)} is {format_date(cur + dt.timedelta(days=left))}.")
            break
        nxt = cur + dt.timedelta(days=to_end + 1)
        left -= to_end + 1
        steps.append(f"{names.MONTHS[cur.month - 1]} {cur.year} has {month_len} days, so after {_days(to_end + 1)} "
                     f"it is {format_date(nxt)}; {_days(left)} left.")
        cur = nxt
    prompt = rng.choice(DATE_QUESTIONS).format(n=n, d=format_date(start))
    return make_row("date_arithmetic", prompt, "\n".join(steps), format_date(end))


DATE_QUESTIONS = ("What is the date {n} days after {d}?", "Which date comes {n} days after {d}?",
                  "If today is {d}, what will the date be in {n} days?")


def calendar_skills(rng: random.Random, w: World) -> dict:
    """The two pieces `date_arithmetic` is composed of, as a trainable skill (a drill, not a scored family):
    counting days inside one month ("8 days after November 1, 2001 is November 9, 2001.") and a month's length
    ("October 2001 has 31 days."). Most held-out questions cross a month end (about 1 in 12 stays inside one month,
    the trained piece; the drill never repeats a scored question), so they ask for the composition; what transfers
    at once is the answer's form, a date (issue 22's format row). The held-out generator is left as it was: making
    every question cross a month end changed the corpus's worked dates, and the chat model retrained on that corpus
    stopped copying the question's numbers into its column sums (arithmetic 0.46 -> 0.00 in one full run)."""
    start = dt.date(rng.randint(1990, 2030), 1, 1) + dt.timedelta(days=rng.randrange(365))
    month_len = calendar.monthrange(start.year, start.month)[1]
    month = f"{names.MONTHS[start.month - 1]} {start.year}"
    if rng.random() < 0.6 and start.day < month_len:
        n = rng.randint(1, month_len - start.day)
        end = start + dt.timedelta(days=n)
        prompt = rng.choice(DATE_QUESTIONS).format(n=n, d=format_date(start))
        return make_row("calendar", prompt, f"{_days(n)} after {format_date(start)} is {format_date(end)}.",
                        format_date(end))
    prompt = rng.choice(("How many days does {m} have?", "How many days are there in {m}?")).format(m=month)
    return make_row("calendar", prompt, f"{month} has {month_len} days.", str(month_len))


def multiple_choice(rng: random.Random, w: World) -> dict:
    p = rng.choice(w.people)
    kind = rng.randrange(6)
    if kind == 0:
        q, gold, pool, why = f"What is {p.name}'s job?", p.job, list(names.JOBS), [f"{p.name} works as a {p.job}."]
    elif kind == 1:
        q, gold, pool = f"Which town does {p.name} live in?", p.town, [t.name for t in w.towns]
        why = [f"{p.name} lives in {p.town}."]
    elif kind == 2:
        q, gold, pool = f"What kind of pet does {p.name} have?", p.pet_kind, list(names.PETS)
        why = [f"{p.name} has a {p.pet_kind} named {p.pet_name}."]
    elif kind == 3:
        river = w.town[p.town].river
        q, gold, pool = f"Which river flows through the town where {p.name} lives?", river, list(names.RIVERS)
        why = [f"{p.name} lives in {p.town}.", f"{p.town} lies on the River {river}."]
    else:
        x = rng.choice(w.things)
        if kind == 4:
            m = w.person[x.maker]
            q, gold, pool = f"What is the job of the person who made {x.name}?", m.job, list(names.JOBS)
            why = [f"{x.name[0].upper() + x.name[1:]} was made by {x.maker}.", f"{x.maker} is a {m.job}."]
        else:
            q, gold, pool = f"In which town is {x.name} kept?", x.town, [t.name for t in w.towns]
            why = [f"{x.name[0].upper() + x.name[1:]} is kept in {x.town}."]
    options = rng.sample(sorted(set(pool) - {gold}), 3) + [gold]
    rng.shuffle(options)
    gi = options.index(gold)
    prompt = q + "\n" + "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options)) + "\nAnswer with the letter."
    why.append(f"That is option {LETTERS[gi]}: {gold}.")
    return make_row("multiple_choice", prompt, "\n".join(why), LETTERS[gi], options=options, gold_index=gi)
