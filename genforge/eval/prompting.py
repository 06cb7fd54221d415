"""Prompting strategies as small functions over a generate function.

A generate function has the signature of `LM.generate`:
    gen(prompts, *, max_new_tokens, temperature, stop, n, seed) -> list[list[str]]
so `lm.generate` plugs in directly, and tests pass scripted stubs. Strategies compose: few-shot
chain-of-thought prompts feed self-consistency; an instruction found by prompt search prefixes
any of them.

Sources: in-context examples (Brown et al. 2020); chain of thought (Wei et al. 2022) and zero-shot
"Let's think step by step" (Kojima et al. 2022); self-consistency (Wang et al. 2023);
least-to-most (Zhou et al. 2023); self-verification (Weng et al. 2023); tree of thoughts, BFS
variant (Yao et al. 2023); automatic prompt search, APE (Zhou et al. 2023).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from genforge.eval.metrics import extract_answer, normalize_answer

GenerateFn = Callable[..., list[list[str]]]
Extract = Callable[[str], str]


# ---- in-context examples -------------------------------------------------------------------------

@dataclass
class Example:
    """One solved task shown to the model. `rationale` is the worked reasoning, if any."""

    prompt: str
    response: str
    rationale: str = ""
    answer: str = ""


QUESTION, ANSWER = "Question:", "Answer:"
FEW_SHOT_STOP = ("\n" + QUESTION,)  # a few-shot continuation ends where the next made-up question starts


def shot(prompt: str, response: str | None = None) -> str:
    """One "Question: ... / Answer: ..." block; response None leaves the answer open for the model."""
    head = f"{QUESTION} {prompt.strip()}\n{ANSWER}"
    return head if response is None else f"{head} {response.strip()}"


def cot_response(ex: Example) -> str:
    """The worked answer for a CoT example: rationale, then "The answer is X." (unless already there)."""
    if not ex.rationale:
        return ex.response
    if "answer is" in ex.rationale.lower():
        return ex.rationale.strip()
    return f"{ex.rationale.strip()} The answer is {ex.answer or extract_answer(ex.response)}."


def few_shot_prompt(prompt: str, examples: Sequence[Example] = (), *, cot: bool = False,
                    instruction: str = "") -> str:
    """Zero-, one- or few-shot prompt: optional instruction, k solved examples, then the question.

    With no examples and no instruction the prompt is returned unchanged, so "zero-shot" means
    exactly the format a fine-tuned model was trained on.
    """
    if not examples and not instruction:
        return prompt
    blocks = [instruction.strip()] if instruction else []
    blocks += [shot(ex.prompt, cot_response(ex) if cot else ex.response) for ex in examples]
    blocks.append(shot(prompt) if examples else prompt)
    return "\n\n".join(blocks)


# ---- chain of thought ----------------------------------------------------------------------------

STEP_BY_STEP = "Let's think step by step."


def zero_shot_cot(gen: GenerateFn, prompts: list[str], *, extract: Extract = extract_answer,
                  max_new_tokens: int = 128, answer_tokens: int = 16) -> list[dict]:
    """Kojima et al.'s two stages: elicit reasoning with "Let's think step by step.", then ask for
    the answer given that reasoning ("Therefore, the answer is"), which makes extraction reliable.
    """
    first = [f"{p}\n{STEP_BY_STEP}" for p in prompts]
    reasoning = [o[0] for o in gen(first, max_new_tokens=max_new_tokens, temperature=0.0, stop=(), n=1, seed=None)]
    second = [f"{f} {r.strip()}\nTherefore, the answer is" for f, r in zip(first, reasoning)]
    finals = [o[0] for o in gen(second, max_new_tokens=answer_tokens, temperature=0.0, stop=("\n",), n=1, seed=None)]
    out = []
    for r, f in zip(reasoning, finals):
        # the second stage answers directly; fall back to the reasoning if it said nothing
        answer = extract(f"The answer is {f.strip()}") if f.strip() else extract(r)
        out.append({"output": f"{r.strip()}\nTherefore, the answer is {f.strip()}", "answer": answer})
    return out


# ---- self-consistency ----------------------------------------------------------------------------

def majority_vote(answers: Sequence[str]) -> tuple[str, dict[str, int]]:
    """The most common non-empty answer (compared after normalisation) and the vote counts.

    Ties go to the answer seen first, so the result is deterministic for a fixed sample order.
    """
    votes: Counter = Counter()
    first_form: dict[str, str] = {}
    for a in answers:
        key = normalize_answer(a)
        if not key:
            continue
        first_form.setdefault(key, a.strip())
        votes[key] += 1
    if not votes:
        return "", {}
    best = votes.most_common(1)[0][0]  # most_common keeps first-seen order among equal counts
    return first_form[best], {first_form[k]: v for k, v in votes.items()}


def self_consistency(gen: GenerateFn, prompts: list[str], *, extract: Extract = extract_answer, k: int = 5,
                     temperature: float = 0.7, max_new_tokens: int = 128, stop: Sequence[str] = (),
                     seed: int | None = 0) -> list[dict]:
    """Sample k reasoning paths per prompt and return the majority answer (Wang et al. 2023)."""
    samples = gen(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, n=k, seed=seed)
    out = []
    for outs in samples:
        answers = [extract(o) for o in outs]
        answer, votes = majority_vote(answers)
        out.append({"output": outs[0] if outs else "", "answer": answer, "votes": votes, "samples": outs})
    return out


# ---- least-to-most -------------------------------------------------------------------------------

DECOMPOSE = "To solve this, list the simpler questions to answer first, one per line:"
_ENUM = re.compile(r"^\s*(?:\d+[.)]|[-*•]|Q\d*:)\s*")


def parse_subquestions(text: str, max_n: int) -> list[str]:
    """Non-empty lines of a decomposition, list markers stripped, at most max_n."""
    lines = [_ENUM.sub("", ln).strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln][:max_n]


def least_to_most(gen: GenerateFn, prompts: list[str], *, extract: Extract = extract_answer,
                  max_subquestions: int = 3, max_new_tokens: int = 64) -> list[dict]:
    """Decompose each problem into subquestions, answer them in order (each answer visible to the
    next), then answer the original question with all of that in context (Zhou et al. 2023).

    Calls are batched across prompts: one call to decompose, one per subquestion step, one final.
    """
    plans = gen([f"{p}\n{DECOMPOSE}\n" for p in prompts], max_new_tokens=max_new_tokens, temperature=0.0,
                stop=("\n\n",), n=1, seed=None)
    subqs = [parse_subquestions(o[0], max_subquestions) for o in plans]
    contexts = [f"{p}\n" for p in prompts]
    subanswers: list[list[str]] = [[] for _ in prompts]
    for step in range(max((len(s) for s in subqs), default=0)):
        active = [i for i, s in enumerate(subqs) if step < len(s)]
        asks = [f"{contexts[i]}{shot(subqs[i][step])}" for i in active]
        outs = gen(asks, max_new_tokens=max_new_tokens, temperature=0.0, stop=("\n",), n=1, seed=None)
        for i, ask, o in zip(active, asks, outs):
            subanswers[i].append(o[0].strip())
            contexts[i] = f"{ask} {o[0].strip()}\n"
    finals = gen([f"{c}{shot(p)}" for c, p in zip(contexts, prompts)], max_new_tokens=max_new_tokens,
                 temperature=0.0, stop=FEW_SHOT_STOP, n=1, seed=None)
    return [{"output": f[0], "answer": extract(f[0]), "subquestions": s, "subanswers": a}
            for f, s, a in zip(finals, subqs, subanswers)]


# ---- self-verification ---------------------------------------------------------------------------

def verify_prompt(prompt: str, answer: str) -> str:
    return f"{prompt}\nProposed answer: {answer}\nIs the proposed answer correct? Reply Yes or No.\nReply:"


def _is_yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def self_verify(gen: GenerateFn, prompts: list[str], *, extract: Extract = extract_answer, max_retries: int = 2,
                temperature: float = 0.7, max_new_tokens: int = 128, stop: Sequence[str] = (),
                seed: int | None = 0) -> list[dict]:
    """Answer, ask the model whether the answer is right, and retry (sampling) while it says no.

    The first attempt is greedy; retries sample at `temperature` and tell the model which answers
    were rejected. If nothing is ever verified the greedy answer is kept (a tiny model's "No" is
    weak evidence; the greedy answer is usually its best guess). A simplification of Weng et al.
    2023, who verify by re-deriving the question's conditions from the answer.
    """
    first = gen(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=stop, n=1, seed=None)
    state = [{"output": o[0], "answer": extract(o[0]), "verified": False, "attempts": 1,
              "rejected": []} for o in first]
    pending = list(range(len(prompts)))
    for attempt in range(max_retries + 1):
        if not pending:
            break
        checks = gen([verify_prompt(prompts[i], state[i]["answer"]) for i in pending], max_new_tokens=4,
                     temperature=0.0, stop=("\n",), n=1, seed=None)
        still = []
        for i, c in zip(pending, checks):
            if _is_yes(c[0]):
                state[i]["verified"] = True
            else:
                state[i]["rejected"].append(state[i]["answer"])
                still.append(i)
        pending = still
        if not pending or attempt == max_retries:
            break
        retry_prompts = [f"{prompts[i]}\n(Not {', '.join(state[i]['rejected'])}.)" for i in pending]
        outs = gen(retry_prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, n=1,
                   seed=None if seed is None else seed + attempt)
        for i, o in zip(pending, outs):
            state[i].update(output=o[0], answer=extract(o[0]), attempts=state[i]["attempts"] + 1)
    for i, s in enumerate(state):
        if not s["verified"]:
            s["output"], s["answer"] = first[i][0], extract(first[i][0])
    return state


# ---- tree of thoughts ----------------------------------------------------------------------------

def value_prompt(prompt: str, steps: Sequence[str]) -> str:
    joined = "\n".join(steps)
    return (f"{prompt}\nPartial solution:\n{joined}\n"
            "How likely is this partial solution to reach the correct answer? Rate 1 to 10.\nRating:")


def parse_rating(text: str, scale: float = 10.0) -> float:
    """First number in text divided by scale and clipped to [0, 1]; 0.5 (undecided) if none."""
    m = re.search(r"\d+(?:\.\d+)?", text)
    return min(max(float(m.group()) / scale, 0.0), 1.0) if m else 0.5


@dataclass
class ToTConfig:
    """Breadth-first tree-of-thoughts search (Yao et al. 2023, Algorithm 1)."""

    branching: int = 3  # thoughts sampled per expanded state (k)
    beam_width: int = 2  # states kept per level (b)
    depth: int = 3  # maximum number of thought steps (T)
    prune_below: float = 0.0  # drop states whose value is below this, even if the beam has room
    temperature: float = 0.7
    max_new_tokens: int = 48  # per thought (one line)
    seed: int | None = 0


@dataclass
class ToTResult:
    answer: str
    steps: list[str]
    value: float
    expansions: int = 0  # states expanded (each asks for `branching` thoughts)
    thoughts: int = 0  # thoughts generated
    evaluations: int = 0  # value judgements asked for
    pruned: int = 0  # states dropped below prune_below
    levels: list[list[dict]] = field(default_factory=list)  # kept states per level, for inspection


def tree_of_thoughts(gen: GenerateFn, prompt: str, *, extract: Extract = extract_answer, cfg: ToTConfig | None = None,
                     evaluate: Callable[[str, list[list[str]]], list[float]] | None = None) -> ToTResult:
    """Search over reasoning steps: expand each kept state into `branching` next steps, score every
    new state with the model itself ("rate 1-10", or `evaluate`), prune, keep the best `beam_width`.

    A state whose last step states an answer ("the answer is ...") is finished and not expanded.
    After `depth` levels, the best finished state answers; if none finished, the best state is
    asked to conclude.
    """
    cfg = cfg or ToTConfig()
    score = evaluate or (lambda p, states: [parse_rating(o[0]) for o in gen(
        [value_prompt(p, s) for s in states], max_new_tokens=4, temperature=0.0, stop=("\n",), n=1, seed=None)])
    res = ToTResult(answer="", steps=[], value=0.0)
    frontier: list[tuple[list[str], float]] = [([], 1.0)]
    finished: list[tuple[list[str], float]] = []
    for level in range(cfg.depth):
        if not frontier:
            break
        asks = [f"{prompt}\n" + "".join(f"{s}\n" for s in steps) for steps, _ in frontier]
        seed = None if cfg.seed is None else cfg.seed + level
        outs = gen(asks, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, stop=("\n",),
                   n=cfg.branching, seed=seed)
        res.expansions += len(frontier)
        children = [steps + [t.strip()] for (steps, _), ts in zip(frontier, outs) for t in ts if t.strip()]
        res.thoughts += sum(len(ts) for ts in outs)
        if not children:
            break
        values = score(prompt, children)
        res.evaluations += len(children)
        scored = [(c, v) for c, v in zip(children, values) if v >= cfg.prune_below]
        res.pruned += len(children) - len(scored)
        scored.sort(key=lambda cv: -cv[1])  # stable: ties keep generation order
        kept = scored[:cfg.beam_width]
        res.levels.append([{"steps": c, "value": v} for c, v in kept])
        finished += [(c, v) for c, v in kept if "answer is" in c[-1].lower()]
        frontier = [(c, v) for c, v in kept if "answer is" not in c[-1].lower()]
    if finished:
        steps, value = max(finished, key=lambda cv: cv[1])
        res.answer, res.steps, res.value = extract(steps[-1]), steps, value
        return res
    best = max(frontier, key=lambda cv: cv[1]) if frontier else ([], 0.0)
    conclude = f"{prompt}\n" + "".join(f"{s}\n" for s in best[0]) + "The answer is"
    final = gen([conclude], max_new_tokens=16, temperature=0.0, stop=("\n",), n=1, seed=None)[0][0]
    res.answer, res.steps, res.value = extract(f"The answer is {final.strip()}"), best[0], best[1]
    return res


# ---- automatic prompt search ---------------------------------------------------------------------

SEED_INSTRUCTIONS = (
    "",
    "Answer the question.",
    "Solve the problem. End with 'The answer is X.'",
    "Think step by step, then give the final answer as 'The answer is X.'",
)

APE_TEMPLATE = ("I gave a friend an instruction. Given the instruction, they answered these questions:\n\n"
                "{demos}\n\nThe instruction was:")


def with_instruction(instruction: str, prompt: str) -> str:
    return f"{instruction.strip()}\n{prompt}" if instruction.strip() else prompt


def instruction_after(instruction: str, prompt: str) -> str:
    """The instruction as the prompt's last line (where instruction-tuned data often puts it: "...\nThink step by
    step."); a small model attends mostly to the end of its prompt, so this is where an instruction can act."""
    return f"{prompt.rstrip()}\n{instruction.strip()}" if instruction.strip() else prompt


def propose_instructions(gen: GenerateFn, demos: Sequence[Example], n: int = 4, *, temperature: float = 0.9,
                         seed: int | None = 0, max_new_tokens: int = 32) -> list[str]:
    """Ask the model to infer the instruction behind solved examples (APE's forward template)."""
    text = APE_TEMPLATE.format(demos="\n\n".join(shot(d.prompt, d.response) for d in demos))
    outs = gen([text], max_new_tokens=max_new_tokens, temperature=temperature, stop=("\n",), n=n, seed=seed)[0]
    return [o.strip() for o in outs if o.strip()]


def prompt_search(gen: GenerateFn, dev: Sequence[Example], score: Callable[[str, Example], float], *,
                  seed_instructions: Sequence[str] = SEED_INSTRUCTIONS, n_generated: int = 4,
                  demos: int = 3, max_new_tokens: int = 64, seed: int | None = 0,
                  place: Callable[[str, str], str] = with_instruction) -> dict:
    """Score candidate instructions on a dev split and keep the best (Zhou et al. 2023, APE).

    Candidates are the seed list plus `n_generated` instructions the model proposes from `demos`
    dev examples. Each candidate answers every dev item greedily; its score is the mean of
    `score(output, example)`. Ties keep the earlier candidate (the seeds come first).
    `place(instruction, prompt)` puts the instruction into the prompt (default: before it).
    """
    candidates = list(dict.fromkeys(list(seed_instructions) + (
        propose_instructions(gen, dev[:demos], n_generated, seed=seed) if n_generated > 0 else [])))
    prompts = [place(c, ex.prompt) for c in candidates for ex in dev]
    outs = gen(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=(), n=1, seed=None)
    table, k = [], 0
    for c in candidates:
        vals = [score(outs[k + j][0], ex) for j, ex in enumerate(dev)]
        k += len(dev)
        table.append({"instruction": c, "score": sum(vals) / max(len(vals), 1)})
    best = max(range(len(table)), key=lambda i: (table[i]["score"], -i))
    return {"best": table[best]["instruction"], "best_score": table[best]["score"], "candidates": table}
