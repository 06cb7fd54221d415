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


def make_row(task: str, prompt: str, rationale: str, answer: str, response: str | None = None, **extra) -> dict:
    if response is None:
        response = f"{rationale}\nThe answer is {answer}."
    return {"task": task, "prompt": prompt, "response": response, "rationale": rationale, "answer": answer, **extra}


def arithmetic(rng: random.Random, w: World) -> dict:
    p, q = rng.sample(w.people, 2)
    it, pr, first = rng.choice(names.ITEMS), p.pronoun, p.first
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(100, 899), rng.randint(12, 399)
        c = rng.randint(12, a + b - 1)
        s1, ans = a + b, a + b - c
        prompt = (f"{p.name} has {a} {it}. {pr.capitalize()} buys {b} more and then gives {c} to {q.first}. "
                  f"How many {it} does {first} have now?")
        steps = [f"{first} starts with {a} {it}.", f"Buying {b} more gives {a} + {b} = {s1}.",
                 f"Giving away {c} leaves {s1} - {c} = {ans}."]
    elif kind == 1:
        a, b = rng.randint(3, 19), rng.randint(12, 75)
        c = rng.randint(10, a * b - 1)
        s1, ans = a * b, a * b - c
        prompt = (f"{p.name} packs {a} boxes with {b} {it} in each box. Then {pr} sells {c} {it}. "
                  f"How many {it} are left?")
        steps = [f"{a} boxes of {b} {it} make {a} * {b} = {s1}.", f"Selling {c} leaves {s1} - {c} = {ans}."]
    elif kind == 2:
        a, b = rng.randint(12, 95), rng.randint(3, 9)
        s1 = a * b
        c = (s1 // 100 + 1) * 100 + rng.choice((0, 0, 100, 400))
        ans = c - s1
        prompt = (f"A shop in {p.town} sells {it} at {a} coins each. {p.name} buys {b} of them and pays with {c} "
                  f"coins. How much change does {pr} get?")
        steps = [f"{b} {it} at {a} coins each cost {b} * {a} = {s1} coins.",
                 f"The change from {c} coins is {c} - {s1} = {ans}."]
    elif kind == 3:
        d, ans = rng.randint(2, 9), rng.randint(11, 120)
        total = d * ans
        a = rng.randint(1, total - 1)
        b = total - a
        prompt = (f"{p.name} collects {a} {it} on Monday and {b} on Tuesday. {pr.capitalize()} shares them equally "
                  f"among {d} friends. How many {it} does each friend get?")
        steps = [f"Together {first} has {a} + {b} = {total} {it}.", f"Shared among {d} friends: {total} / {d} = {ans}."]
    else:
        a, b, c, d = rng.randint(100, 700), rng.randint(20, 300), rng.randint(20, 300), rng.randint(10, 99)
        c = min(c, a + b - 1)
        s1, s2 = a + b, a + b - c
        ans = s2 + d
        prompt = (f"{p.name} had {a} coins. {pr.capitalize()} earned {b} coins at the {names.JOBS[p.job][1]}, "
                  f"spent {c} coins on {p.food}, and then found {d} coins. How many coins does {first} have now?")
        steps = [f"{first} starts with {a} coins.", f"After earning {b}: {a} + {b} = {s1}.",
                 f"After spending {c}: {s1} - {c} = {s2}.", f"After finding {d}: {s2} + {d} = {ans}."]
    return make_row("arithmetic", prompt, "\n".join(steps), str(ans))


def last_letter(rng: random.Random, w: World) -> dict:
    pool = [p.first for p in w.people] + [t.name for t in w.towns] + list(names.ITEMS) + list(names.PETS)
    ws = rng.sample(pool, rng.randint(3, 4))
    ans = "".join(x[-1] for x in ws).lower()
    prompt = f'Take the last letter of each word in "{" ".join(ws)}" and join them together.'
    steps = [f'The last letter of "{x}" is "{x[-1].lower()}".' for x in ws]
    steps.append(f'Joining them gives "{ans}".')
    return make_row("last_letter", prompt, "\n".join(steps), ans)


def coin_flip(rng: random.Random, w: World) -> dict:
    people = [p.first for p in rng.sample(w.people, rng.randint(3, 6))]
    heads = True
    sents, steps = ["A coin is heads up."], ["The coin starts heads up."]
    for who in people:
        flip = rng.random() < 0.5
        heads = heads != flip
        side = "heads" if heads else "tails"
        sents.append(f"{who} {'flips' if flip else 'does not flip'} the coin.")
        steps.append(f"{who} flips it, so it is now {side} up." if flip
                     else f"{who} does not flip it, so it stays {side} up.")
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
    prompt = rng.choice(("What is the date {n} days after {d}?", "Which date comes {n} days after {d}?",
                         "If today is {d}, what will the date be in {n} days?")).format(n=n, d=format_date(start))
    return make_row("date_arithmetic", prompt, "\n".join(steps), format_date(end))


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
