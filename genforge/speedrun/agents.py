"""Stage "agents": tools for a ~1M-parameter model. PAL vs direct vs chain of thought on arithmetic word problems;
ReAct vs direct vs one-shot retrieval on two-hop questions; the sandbox's cost per call; a planning agent vs
no-plan / no-memory baselines in the text world; Toolformer end to end (candidate calculator calls in world texts,
the loss filter, fine-tunes on kept vs unfiltered calls, calls executed inside the decode session); a router over
two LoRA specialists vs each alone and the oracle; two roles critiquing each other vs one model alone.

A model this small cannot pick up a tool format from a few examples in its prompt (and 512 tokens leave no
room for them), so the stage first teaches the formats: one short full fine-tune of the SFT chat model
(`genforge.train.sft.run_sft`, the shared trainer) on the world's *train* arithmetic rows, each written three
ways (a direct answer, the worked rationale, a PAL program made from the rationale), and on two-hop train
questions, each written three ways too (a direct answer, an answer from retrieved facts, a ReAct trajectory whose
observations are real search results). Every method is then scored on the same *test* items, so the
comparisons are paired; one model learns all formats on the same rows, so no method gets more data or steps.

Measured at `tiny` (stage, 100 test items each): ReAct 0.42 [0.32, 0.52] vs direct 0.01 vs one-shot retrieval 0.02.
PAL (the question's numbers bound by the tool, pal.py) scored 0.96 in one run and 0.18 in the next, where 0.82 of
its replies opened a ReAct turn ('Thought: Find ...'): ReAct chats now hold three assistant turns each (open
issue).
How ReAct got there (earlier stage run: ReAct 0.01 vs direct 0.01). The setting: a keyed search (k=1) whose top
hit is always the needed fact (ceiling 1.00), observations as tool turns
the fine-tune does not learn, thoughts that read each observation back, 600 trajectories over invented people, and
500 read-back warm-up steps first. The first search copies the question's entity 0.71 of the time (0.03 without the
warm-up) and the thought after the first observation reads it back exactly 0.59 of the time; with the second search
written 'Y lives in', it named the bridge 0.01 of the time, even when the thought just above ended with the name (2 of
98): the warm-up's copy circuit continues a span whose previous token it has seen (an induction head, Olsson et al.
2022), and the first token of a name opening `search[` has no such cue (and loses its leading space). Written
'where is Y lives' (`second_query`), the second search names the bridge 0.37 of the time, but `finish[T]` copied
the town 0.00 of the time even with it in view (40 episodes); finishing 'lives in T' (`town_of` reads the town
back): diagnostic fine-tune, same warm-up and steps, 100 test questions: ReAct 0.38 vs direct 0.03 vs one-shot
retrieval 0.02; per hop: first search 0.62, second search 0.43, finish given the town in view 0.84.
Toolformer: the filter keeps calls before worked results and drops random ones, the kept-data model calls less
where no result follows and uses the call's result more often than the unfiltered-data model, but its calls carry
the wrong operands, so sums stay wrong (0.00 for every model). The router over a math (PAL) LoRA and a summary LoRA
matches the oracle (0.82 vs 0.50 for the best single one); the chat model critiquing itself falls from ROUGE-L 0.32
to 0.08 (it never saw a critique prompt).
`small` gives 3-7x the steps.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.agents.pal import question_of
from genforge.errors import ConfigError
from genforge.report import StageReport
from genforge.speedrun import sft, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    from genforge.agents.knowledge import KnowledgeBase
    from genforge.agents.tools import ToolRegistry

NAME = "agents"
TITLE = "Tools and agents: PAL, ReAct, the sandbox, a planning agent, Toolformer, routing, collaboration"

# The instruction that tells the fine-tuned model which format to use (one per method).
TAGS = {"direct": "Answer directly.", "cot": "Think step by step.", "pal": "Write a program.",
        "retrieve": "Answer from the facts.", "react": "Answer with search."}


@dataclass
class Config:
    steps: int = 400  # fine-tune steps teaching the tool formats
    micro_batch: int = 16
    seq_len: int = 320  # longest training conversation in tokens (ReAct trajectories are the longest)
    arith_test: int = 100  # test arithmetic items per method (paired across methods)
    hop_train: int = 500  # two-hop training questions (at most: the tiny world has ~310 distinct ones in all)
    hop_test: int = 100  # two-hop test questions (never in training) per method
    react_repeats: int = 3  # each ReAct training trajectory appears this many times (there are few of them)
    # ReAct trajectories over invented people, towns and objects (names no memory can supply, so only copying them
    # from the observations predicts them; the world's own questions let a model guess the bridge instead)
    invented_hops: int = 600
    # read-back warm-up ("Repeat: <sentence with invented names>", the rag stage's `copy_rows`) before the formats:
    # the tiny model copies from its context only after it (the first search copied the question's entity 0.02 of
    # the time without it, 0.6 with 500 steps)
    copy_steps: int = 500
    copy_rows: int = 3000
    search_k: int = 1  # facts the search tool returns (and one-shot retrieval puts in the prompt)
    react_steps: int = 5  # ReAct step limit (tool calls + finish, malformed included)
    planner_envs: int = 40  # text-world environments (same ones for every agent)
    planner_max_steps: int = 60
    sandbox_calls: int = 8  # timed sandbox runs of a trivial program (overhead per call)
    # Toolformer (Schick et al. 2023): candidate calculator calls in world texts, filtered by the loss rule
    tf_texts: int = 120  # training texts (2 in 3 worked sums, 1 in 3 other worked solutions)
    tf_random: int = 1  # random (unhelpful) candidate calls per text, besides one before every worked result
    tf_tau: float = 0.5  # keep a call iff it lowers the loss on the next words by >= tau (nats per token)
    tf_window: int = 8  # the continuation scored: the next ~8 characters, to the end of the word
    tf_steps: int = 60  # fine-tune steps of each variant (kept calls / every call)
    tf_test: int = 60  # held-out worked sums cut before their result
    tf_base_scored: int = 90  # candidates also scored by the base model (to show why it cannot be the scorer)
    lesson_micro_batch: int = 8  # micro-batch of the Toolformer and specialist fine-tunes
    # routing (a math and a summary LoRA from the chat model) and collaboration (two roles critiquing)
    # LoRA steps per specialist. 60 stopped being enough once the chat model learned column-by-column sums: its
    # math LoRA wrote no program (0.00 on sums, router 0.32 = the summary LoRA); 150: 1.00, router 0.82 (+18 s CPU)
    router_steps: int = 150
    router_train: int = 40  # router training prompts per family (train rows the specialists never saw)
    router_test: int = 50  # test prompts per family (the mixed test set has twice as many)
    router_max_new: int = 48  # tokens per specialist answer
    collab_items: int = 40  # summarisation test prompts for the critique lesson
    collab_rounds: int = 1  # critique rounds (critic, then revision)


@dataclass
class Outputs:
    checkpoint: str  # the fine-tuned agent model
    arithmetic: dict[str, float]  # method -> accuracy on the test items
    multihop: dict[str, float]  # method -> accuracy on the test items
    planner_success: dict[str, float]  # agent -> success rate
    planner_steps: dict[str, float]  # agent -> mean steps of successful episodes
    sandbox_ms: float  # median wall time of one sandboxed run
    isolation: str  # what isolated the sandbox here ("bwrap" | "rlimits-only")
    toolformer: dict[str, float] = field(default_factory=dict)  # proposed / kept calls, accuracy and tool use per model
    routing: dict[str, float | str] = field(default_factory=dict)  # system -> mixed-test score (+ the best single)
    collaboration: dict[str, float] = field(default_factory=dict)  # ROUGE-L alone / after critique, share changed


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, sft: sft.Outputs) -> Outputs:
    """Fine-tune the chat model on the tool formats, then compare every method on paired test items."""
    from genforge.agents.knowledge import KnowledgeBase, load_world
    from genforge.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(sft.checkpoint)
    if tok is None:
        raise ConfigError(f"{sft.checkpoint}: the SFT checkpoint has no tokenizer")
    from genforge.world.readback import copy_rows

    w = load_world(world.dir)
    kb = KnowledgeBase.from_dir(world.dir)
    registry = search_registry(kb, cfg.search_k)
    arith_train, arith_test = arithmetic_rows(Path(world.tasks_dir), cfg.arith_test)
    hop_train, hop_test = hop_rows(w, cfg.hop_train, cfg.hop_test, ctx.seed)
    inv_entries, invented = invented_hops(cfg.invented_hops, ctx.seed)
    # training trajectories search the world plus the invented facts (the same tool; test episodes see the world)
    train_kb = KnowledgeBase.from_dir(world.dir, extra=inv_entries) if invented else kb
    convs = training_conversations(arith_train, hop_train, train_kb, search_registry(train_kb, cfg.search_k),
                                   cfg.search_k, cfg.react_repeats, invented)
    reads = copy_rows(w, cfg.copy_rows, ctx.seed, set()) if cfg.copy_steps else []
    t0 = time.process_time()
    module, res = _fine_tune(ctx, cfg, model, tok, convs, sft.checkpoint, reads)
    train_s = time.process_time() - t0
    report.row("agent fine-tune: conversations / steps", f"{len(convs)} / {res.get('step', cfg.steps)}",
               note=f"{train_s:.0f} CPU s; {cfg.copy_steps} read-back warm-up steps first (rows 'Repeat: <sentence "
                    f"with invented names>'; loss {res.get('copy_first_loss', float('nan')):.2f} -> "
                    f"{res.get('copy_last_loss', float('nan')):.2f}), then {len(arith_train)} train arithmetic rows "
                    f"x 3 formats, {len(hop_train)} two-hop train questions x 3 formats (ReAct x{cfg.react_repeats}) "
                    f"and {len(invented)} ReAct trajectories over invented people; starts from the SFT chat model")

    from genforge.agents.llm import EngineModel

    lm = EngineModel(module, tok)
    arith = _arithmetic(ctx, report, lm, tok, arith_test)
    hop = _multihop(ctx, report, lm, tok, kb, registry, hop_test, cfg)
    ms, isolation = _sandbox(report, cfg.sandbox_calls)
    success, steps = _planner(ctx, report, w, cfg)
    tf = _toolformer(ctx, report, w, sft.base, cfg)
    routing = _router(ctx, report, Path(world.tasks_dir), sft.checkpoint, cfg)
    collab = _collaboration(ctx, report, Path(world.tasks_dir), sft.checkpoint, cfg)
    return Outputs(checkpoint=str(Path(res["checkpoint"])), arithmetic=arith, multihop=hop, planner_success=success,
                   planner_steps=steps, sandbox_ms=ms, isolation=isolation, toolformer=tf, routing=routing,
                   collaboration=collab)


# ---- data -------------------------------------------------------------------------------------------------------

def search_registry(kb: KnowledgeBase, k: int) -> ToolRegistry:
    """A registry with one tool, `search`, returning the k best facts."""
    from genforge.agents.tools import ToolRegistry

    reg = ToolRegistry()

    def search(query: str) -> str:
        """Search the world's facts; the best-matching facts, one per line."""
        return "\n".join(kb.search(query, k=k)) or "no results"

    reg.register(search)
    return reg


def arithmetic_rows(tasks_dir: Path, n_test: int) -> tuple[list[dict], list[dict]]:
    """The world's arithmetic rows: every train row, the first n_test test rows."""
    from genforge.io import read_jsonl

    def rows(split: str) -> list[dict]:
        path = tasks_dir / f"{split}.jsonl"
        return [r for _, r in read_jsonl(path, required=("prompt", "answer"))
                if r.get("task") == "arithmetic"] if path.exists() else []

    train, test = rows("train"), rows("test")[:n_test]
    if not train or not test:
        raise ConfigError(f"{tasks_dir}: no arithmetic rows in train.jsonl / test.jsonl; regenerate the world")
    return train, test


def hop_rows(w, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train / test two-hop questions (split by question, test first)."""
    from genforge.agents.knowledge import multihop_questions

    pool = multihop_questions(w, n_train + n_test, seed=seed)
    random.Random(f"hops-{seed}").shuffle(pool)
    if len(pool) < n_test + 10:
        raise ConfigError(f"the world has only {len(pool)} two-hop questions; lower agents.hop_test={n_test}")
    return pool[n_test:], pool[:n_test]


def first_query(question: str) -> str:
    """'In which town does the friend of X live?' -> 'the friend of X' (the first look-up)."""
    return question.replace("In which town does ", "").replace(" live?", "")


def gold_trajectory(row: dict, registry: ToolRegistry):
    """The ReAct trajectory a perfect policy writes: look up the bridge entity, then where it lives; finish.

    Observations are the real search results. Each thought after an observation reads the fact back ("The sibling
    of X is Y.", "Y lives in T."), the read-back the warm-up trained, so the next action copies the name from a few
    tokens back in the model's own turn, not from the tool's turn."""
    from genforge.agents.react import FINISH, Step, Trajectory

    q, bridge, answer = row["question"], row["bridge"], row["answer"]
    t = Trajectory(q)
    fq = first_query(q)
    obs1 = registry.call("search", {"query": fq}).text
    t.steps.append(Step(f"Find {fq}.", "search", fq, obs1.replace("\n", " | ")))
    q2 = second_query(bridge, obs1)
    obs2 = registry.call("search", {"query": q2}).text
    t.steps.append(Step(obs1.split("\n")[0], "search", q2, obs2.replace("\n", " | ")))
    t.steps.append(Step(obs2.split("\n")[0], FINISH, f"lives in {answer}", ""))
    t.answer, t.status = answer, "answered"
    return t


def second_query(bridge: str, first_observation: str) -> str:
    """The second search: 'where is Y lives' ('are' after a friends fact), not 'Y lives in'.

    The words before the name are the ones before it in the observation and the thought (' is Y'), and the name keeps
    its leading space, so the model continues a span it has seen (what the read-back warm-up's copy circuit does, an
    induction head: Olsson et al. 2022) instead of opening one after `search[`. Measured at tiny (diagnostic fine-tunes
    from the same warm-up): the second search named the bridge 0.01 of the time with 'Y lives in', 0.37 with this."""
    verb = "are" if " are " in first_observation.split("\n")[0] else "is"
    return f"where {verb} {bridge} lives"


# object kinds of invented objects ("the Kalo Lantern"); town endings of invented towns ("Napvermere")
_INVENTED_KINDS = ("Lantern", "Map", "Compass", "Music Box", "Tea Set", "Clock", "Chessboard", "Rowing Boat", "Kettle")
_TOWN_ENDS = ("mere", "ford", "wick", "dale", "stead", "ley", "moor", "gate", "holm", "combe")


def invented_hops(n: int, seed: int) -> tuple[list[tuple[str, str]], list[dict]]:
    """`n` two-hop questions about invented people, objects and towns, and the keyed facts that answer them.

    Returns (entries for `KnowledgeBase.from_world(..., extra=entries)`, rows shaped like `multihop_questions`'s).
    The names are pseudo-words (the rag stage's `invented_name`), so no memory of the world can supply the bridge or
    the town: a model trained on these trajectories lowers its loss only by copying them out of the observations,
    the skill the world's own trajectories let it skip (it can guess a real bridge, or the sibling's surname).
    Half the pairs share a surname, as the world's siblings do."""
    from genforge.agents.knowledge import thing_entries
    from genforge.world.readback import invented_name

    rng = random.Random(f"invented-hops-{seed}")
    entries: list[tuple[str, str]] = []
    rows = []
    for _ in range(n):
        surname = invented_name(rng) if rng.random() < 0.5 else ""
        person = f"{invented_name(rng)} {surname or invented_name(rng)}"
        bridge = f"{invented_name(rng)} {surname or invented_name(rng)}"
        town, home = (invented_name(rng) + rng.choice(_TOWN_ENDS) for _ in range(2))
        kind = rng.randrange(3)
        if kind == 0:
            q = f"In which town does the sibling of {person} live?"
            entries += [(f"the sibling of {person}", f"The sibling of {person} is {bridge}."),
                        (f"the sibling of {bridge}", f"The sibling of {bridge} is {person}.")]
        elif kind == 1:
            q = f"In which town does the friend of {person} live?"
            entries.append((f"the friends of {person}", f"The friends of {person} are {bridge}."))
        else:
            thing = f"the {invented_name(rng)} {rng.choice(_INVENTED_KINDS)}"
            q = f"In which town does the maker of {thing} live?"
            entries += thing_entries(thing, bridge, rng.choice(("oak", "tin", "glass", "wool")),
                                     rng.randint(1500, 1900), home)
        entries += [(f"{bridge} lives in", f"{bridge} lives in {town}."),
                    (f"{person} lives in", f"{person} lives in {home}.")]
        rows.append({"question": q, "answer": town, "bridge": bridge})
    return entries, rows


def facts_prompt(kb: KnowledgeBase, question: str, k: int) -> str:
    return "Facts: " + " ".join(kb.search(question, k=k)) + f"\n{TAGS['retrieve']} {question}"


def training_conversations(arith: list[dict], hops: list[dict], kb: KnowledgeBase, registry: ToolRegistry,
                           k: int, react_repeats: int = 1, invented: list[dict] = ()) -> list[list[dict]]:
    """Each arithmetic row three ways (direct, CoT, PAL), each two-hop question three ways (direct, facts, ReAct),
    and a ReAct trajectory for each `invented` question. `registry` must search `kb` (and the invented facts).

    A ReAct trajectory is a multi-turn chat (`Trajectory.to_messages`): observations are user turns, so the loss
    falls on the thoughts and actions only, not on predicting the tool's output from memory."""
    from genforge.agents.pal import numbered_program

    def conv(user: str, reply: str) -> list[dict]:
        return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]

    out = []
    for r in arith:
        q = question_of(r)
        out.append(conv(f"{TAGS['direct']} {q}", f"The answer is {r['answer']}."))
        out.append(conv(f"{TAGS['cot']} {q}", f"{r['rationale']}\nThe answer is {r['answer']}."))
        out.append(conv(f"{TAGS['pal']} {q}", numbered_program(q, r["rationale"])))
    for r in hops:
        out.append(conv(f"{TAGS['direct']} {r['question']}", r["answer"]))
        out.append(conv(facts_prompt(kb, r["question"], k), r["answer"]))
        out += [react_messages(gold_trajectory(r, registry))] * react_repeats
    out += [react_messages(gold_trajectory(r, registry)) for r in invented]
    return out


def react_messages(t) -> list[dict]:
    """A ReAct trajectory as the chat the agent model is trained on and continues (see `react_prompt`)."""
    return t.to_messages(f"{TAGS['react']} {t.question}")


def react_prompt(tok, t) -> str:
    """The prompt for the next ReAct step: the trajectory's chat so far, the assistant's turn opened at 'Thought:'."""
    return tok.render_chat(react_messages(t), add_generation_prompt=True) + "Thought:"


def _fine_tune(ctx: StageContext, cfg: Config, model, tok, convs: list[list[dict]], init_from: str,
               reads: list[list[dict]] = ()):
    """The shared `run_sft` (full fine-tune): `cfg.copy_steps` on the read-back rows `reads` (if any), then
    `cfg.steps` on the tool formats. Two runs, as in the rag stage: read-back rows are short, and a batch is padded
    to its longest row. Returns (model, metrics of the last run + the read-back loss's first and last value)."""
    import shutil

    from genforge.io import read_jsonl
    from genforge.train.sft import SFTConfig, run_sft
    from genforge.train.trainer import TrainConfig

    info: dict = {}
    phases = ([("copy", reads, cfg.copy_steps)] if reads and cfg.copy_steps else []) + [("model", convs, cfg.steps)]
    for name, rows, steps in phases:
        out_dir = ctx.path("agents", name)
        shutil.rmtree(out_dir, ignore_errors=True)
        c = SFTConfig(init_from=init_from, out_dir=str(out_dir))
        c.train = TrainConfig(max_steps=steps, micro_batch=cfg.micro_batch, warmup_steps=max(1, steps // 10),
                              eval_every=0, ckpt_every=0, log_every=max(1, steps // 20), seed=ctx.seed,
                              threads=ctx.threads, progress=ctx.progress, resume=False, weight_decay=0.1)
        c.data.seq_len = min(cfg.seq_len if name == "model" else 256, model.config.max_seq_len - 16)
        c.peft.method = "full"
        model, res = run_sft(model, tok, rows, c, base_path=str(Path(init_from).resolve()), name=f"agents-{name}")
        losses = [r["loss"] for _, r in read_jsonl(out_dir / "metrics.jsonl") if r.get("split") == "train"]
        if losses:
            info[f"{name}_first_loss"], info[f"{name}_last_loss"] = losses[0], losses[-1]
        model.train()
    res = {**res, **info}
    res.setdefault("checkpoint", str(ctx.path("agents", "model") / "checkpoint"))
    return model.eval(), res


# ---- measurements -----------------------------------------------------------------------------------------------

def _arithmetic(ctx: StageContext, report: StageReport, lm, tok, rows: list[dict]) -> dict[str, float]:
    """PAL vs direct vs CoT on the same test items (the PAL programs run in the sandbox)."""
    from genforge.agents.llm import chat_prefix
    from genforge.agents.pal import solve
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.io import write_jsonl

    res = {}
    # Each method's reply is opened with its format's first words, as ReAct's is with "Thought:": without it the
    # PAL reply opened a ReAct turn 82 times in 100 once ReAct trajectories outnumbered the programs in training.
    for method, prefix, max_new in (("direct", "The answer is", 16), ("cot", "", 160), ("pal", "step1 =", 96)):
        prompts = [chat_prefix(tok, f"{TAGS[method]} {r['prompt']}", prefix) for r in rows]
        res[method] = solve(lm, rows, [], method, prompts=prompts, max_new_tokens=max_new, seed=ctx.seed,
                            bind_numbers=True, prefill="" if method == "direct" else prefix)
    ci = {m: bootstrap_mean(r.correct, seed=ctx.seed) for m, r in res.items()}
    n = len(rows)
    report.lesson("PAL (the model writes a program, the sandbox runs it) beats answering directly on arithmetic "
                  "word problems by >= 20 points", ("accuracy, PAL", ci["pal"]), ("accuracy, direct", ci["direct"]),
                  effect=bootstrap_diff(res["pal"].correct, res["direct"].correct, paired=True, seed=ctx.seed),
                  target=0.20, note=f"{n} paired test items (Gao et al. 2022); the tool binds the question's numbers "
                                    "to n0, n1, ... so the model writes structure, not digits (see below)")
    report.lesson("PAL beats chain of thought on arithmetic word problems (the interpreter does the carrying)",
                  ("accuracy, PAL", ci["pal"]), ("accuracy, CoT", ci["cot"]),
                  effect=bootstrap_diff(res["pal"].correct, res["cot"].correct, paired=True, seed=ctx.seed),
                  target=0.0, note=f"{n} paired test items")
    ran = [d for d in res["pal"].details if d.get("output") is not None]
    errors = sum(str(d["output"]).startswith("error") for d in ran)
    report.row("PAL programs that failed to run", errors / max(len(ran), 1), note=f"of {len(ran)} programs")
    report.row("chain of thought vs direct: accuracy", _fmt(ci["cot"]), _fmt(ci["direct"]),
               "same items; baseline = direct")
    report.note("PAL here departs from Gao et al. 2022 in one way: the question's numbers are bound to `n0, n1, ...` "
                "(in order of appearance) by the tool before the program runs, and the program refers to them by "
                "name. Measured on this world with a 500-step fine-tune of the ~0.9M-parameter chat model, programs "
                "that copy the numbers themselves had the right structure but wrong digits (`step1 = 110 + 100` for "
                "110 + 97) and scored 0.01, the same as direct answers: copying 2-3 digit numbers out of the prompt is "
                "the skill this model lacks, and it is the one the interpreter cannot supply.")
    ex = next((i for i, c in enumerate(res["pal"].correct) if c), 0)
    report.note(f"PAL example (test item {ex}): *{rows[ex]['prompt']}*\n\n```python\n"
                f"{res['pal'].details[ex]['completion'].strip()}\n```\n\nprinted `{res['pal'].details[ex]['output']}`"
                f"; gold {rows[ex]['answer']}; the same item directly: `{res['direct'].answers[ex]}`, by chain of "
                f"thought: `{res['cot'].answers[ex]}`.")
    write_jsonl(ctx.path("agents", "pal.jsonl"),
                [{"prompt": question_of(r), "answer": r["answer"], **{m: res[m].answers[i] for m in res},
                  "program": res["pal"].details[i]["completion"], "output": res["pal"].details[i]["output"]}
                 for i, r in enumerate(rows)])
    return {m: r.accuracy for m, r in res.items()}


def _fmt(ci) -> str:
    """An interval as a table cell: 0.610 [0.520, 0.700]."""
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _same(a: str, b: str) -> bool:
    """An answer matches the gold town (case and a final full stop aside; ReAct's 'lives in T' is read as T)."""
    return town_of(a).lower() == b.strip().lower()


def town_of(answer: str) -> str:
    """The town in an answer: ReAct finishes with 'lives in T', so that the town follows the words it follows in the
    observation and the thought (the same copying cue as `second_query`); every method's answer is read this way."""
    return answer.strip().rstrip(".").strip().removeprefix("lives in ").strip()


def _multihop(ctx: StageContext, report: StageReport, lm, tok, kb: KnowledgeBase, registry: ToolRegistry,
              rows: list[dict], cfg: Config) -> dict[str, float]:
    """ReAct vs direct vs one-shot retrieval on the same two-hop test questions."""
    from genforge.agents.llm import chat_prefix
    from genforge.agents.react import ReActConfig, run_episodes, trajectories_jsonl
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.io import write_text

    qs = [r["question"] for r in rows]
    direct = lm.generate([chat_prefix(tok, f"{TAGS['direct']} {q}") for q in qs], max_new_tokens=12, temperature=0.0,
                         stop=("\n",))
    facts = lm.generate([chat_prefix(tok, facts_prompt(kb, q, cfg.search_k)) for q in qs], max_new_tokens=12,
                        temperature=0.0, stop=("\n",))
    trajs = run_episodes(lm, registry, qs, ReActConfig(max_steps=cfg.react_steps, max_new_tokens=64),
                         prompt_fn=lambda t: react_prompt(tok, t))
    gold = [gold_trajectory(r, registry) for r in rows]
    score = {"direct": [float(_same(a, r["answer"])) for a, r in zip(direct, rows)],
             "retrieve": [float(_same(a, r["answer"])) for a, r in zip(facts, rows)],
             "react": [float(_same(t.answer, r["answer"])) for t, r in zip(trajs, rows)]}
    # the ceiling: a perfect policy with this search tool (its observations must hold the bridge and the town)
    oracle = [float(r["answer"] in g.steps[1].observation and r["bridge"] in g.steps[0].observation)
              for g, r in zip(gold, rows)]
    ci = {m: bootstrap_mean(v, seed=ctx.seed) for m, v in score.items()}
    n = len(rows)
    report.lesson("ReAct (think, search, read, search again) beats answering two-hop questions directly",
                  ("accuracy, ReAct", ci["react"]), ("accuracy, direct", ci["direct"]),
                  effect=bootstrap_diff(score["react"], score["direct"], paired=True, seed=ctx.seed), target=0.10,
                  note=f"{n} paired test questions never trained on (Yao et al. 2023); target: >= 10 points")
    report.lesson("ReAct beats one-shot retrieval on two-hop questions (the second hop needs a second search)",
                  ("accuracy, ReAct", ci["react"]), ("accuracy, one-shot retrieval", ci["retrieve"]),
                  effect=bootstrap_diff(score["react"], score["retrieve"], paired=True, seed=ctx.seed), target=0.0,
                  note=f"{n} paired test questions; retrieval puts the top {cfg.search_k} facts for the question "
                       "in the prompt")
    statuses = {s: sum(t.status == s for t in trajs) / n for s in ("answered", "step_limit", "malformed")}
    report.row("ReAct episodes: answered / step limit / malformed", " / ".join(f"{v:.2f}" for v in statuses.values()),
               note=f"malformed actions: {sum(t.n_malformed for t in trajs)} in all (each retried once)")
    report.row("ReAct ceiling: a perfect policy with this search tool", _fmt(bootstrap_mean(oracle, seed=ctx.seed)),
               note="share of test questions whose two gold searches return the bridge and the answer")
    # where the episodes go wrong, hop by hop: the first search must copy the question's entity, the second the
    # bridge's name read from the first observation, the finish the town read from the second
    hops = react_hops(trajs, rows)
    report.row("ReAct per hop: first search copies the question's entity / its result names the bridge",
               f"{hops['first_search']:.2f} / {hops['first_result']:.2f}",
               note="exact match with the gold first search; share of episodes whose first observation holds the "
                    "bridge's name")
    report.row("ReAct per hop: second search names the bridge / its result holds the answer",
               f"{hops['second_search']:.2f} / {hops['second_result']:.2f}",
               note=f"of all episodes; given a first result that names the bridge: {hops['second_given_first']:.2f} "
                    "(the name must be copied out of the observation)")
    report.row("ReAct per hop: finish copies the answer when the second result holds it",
               f"{hops['finish_given_second']:.2f}", note="share of those episodes answered right")
    write_text(ctx.path("agents", "react_trajectories.jsonl"), "\n".join(trajectories_jsonl(trajs)) + "\n")
    ex = next((i for i, s in enumerate(score["react"]) if s), 0)
    report.note("ReAct's setting at this size: the search tool ranks facts by a key naming their subject and "
                f"relation and returns the top {cfg.search_k} (so 'the sibling of X' returns X's sibling, not the "
                "fact naming X as someone's sibling); every thought after an observation reads the fact back; the "
                "second search is 'where is Y lives' and the finish 'lives in T', so each copied name follows the "
                "words it follows in the observation (the cue a copy circuit needs; `second_query`); observations "
                "are tool turns the fine-tune does not "
                f"learn; {cfg.invented_hops} of the training trajectories are about invented people, whose names only "
                f"copying can predict; and {cfg.copy_steps} read-back warm-up steps (the rag stage's rows) come first. "
                "Direct answers and one-shot retrieval are trained in the same fine-tune on the same world questions "
                f"and scored on the same test questions. Per hop: first search {hops['first_search']:.2f}, second "
                f"search given the bridge in view {hops['second_given_first']:.2f}, finish given the answer in view "
                f"{hops['finish_given_second']:.2f}: the accuracy is about their product.")
    report.note(f"A ReAct trajectory (test question {ex}, gold {rows[ex]['answer']}; directly: `{direct[ex]}`, "
                f"one-shot retrieval: `{facts[ex]}`):\n\n```\n{trajs[ex].render()}\n```")
    return {m: sum(v) / n for m, v in score.items()}


def react_hops(trajs: list, rows: list[dict]) -> dict[str, float]:
    """Per-hop success of ReAct episodes on two-hop rows: first search exact / its observation names the bridge /
    second search exact / its observation holds the answer (shares of all episodes), the second search given a
    first observation naming the bridge, and the right answer given a second observation holding it."""
    def share(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    first = [bool(t.steps) and t.steps[0].argument == first_query(r["question"]) for t, r in zip(trajs, rows)]
    res1 = [bool(t.steps) and r["bridge"] in t.steps[0].observation for t, r in zip(trajs, rows)]
    second = [len(t.steps) > 1 and t.steps[1].argument == second_query(r["bridge"], t.steps[0].observation)
              for t, r in zip(trajs, rows)]
    res2 = [len(t.steps) > 1 and r["answer"] in t.steps[1].observation for t, r in zip(trajs, rows)]
    right = [_same(t.answer, r["answer"]) for t, r in zip(trajs, rows)]
    return {"first_search": share(first), "first_result": share(res1), "second_search": share(second),
            "second_result": share(res2), "second_given_first": share([s for s, o in zip(second, res1) if o]),
            "finish_given_second": share([a for a, o in zip(right, res2) if o])}


def _sandbox(report: StageReport, calls: int) -> tuple[float, str]:
    """Median wall time of a trivial sandboxed program, and the isolation that ran it."""
    from genforge.agents.sandbox import run_python

    times, isolation = [], ""
    for _ in range(max(1, calls)):
        r = run_python("print(6 * 7)")
        times.append(r.seconds * 1000)
        isolation = r.isolation
    ms = statistics.median(times)
    report.row("sandbox: wall time per call (median)", f"{ms:.0f} ms",
               note=f"isolation: {isolation}; a fresh namespace sandbox + interpreter per PAL program "
                    "(rlimits, wall timeout, empty environment, throwaway folder)")
    return ms, isolation


def _planner(ctx: StageContext, report: StageReport, w, cfg: Config) -> tuple[dict[str, float], dict[str, float]]:
    """The planning agent vs memory-without-plan and no-memory baselines on the same environments."""
    from genforge.agents.env import make_env
    from genforge.agents.planner import PlanningAgent, compare_agents, run_agent
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean

    n_towns = min(8, len(w.towns))
    seeds = [ctx.seed * 1000 + i for i in range(cfg.planner_envs)]
    eps = compare_agents(lambda s: make_env(w, s, n_towns=n_towns), seeds, cfg.planner_max_steps)
    ok = {name: [float(e.success) for e in es] for name, es in eps.items()}
    steps = {name: statistics.mean([e.steps for e in es if e.success] or [float("nan")]) for name, es in eps.items()}
    ci = {name: bootstrap_mean(v, seed=ctx.seed) for name, v in ok.items()}
    report.lesson("An agent with memory and a plan (re-planned on failure) reaches text-world goals more often than "
                  "one without memory", ("success, plan+memory", ci["plan+memory"]), ("success, no memory",
                                                                                     ci["no memory"]),
                  effect=bootstrap_diff(ok["plan+memory"], ok["no memory"], paired=True, seed=ctx.seed), target=0.0,
                  note=f"{len(seeds)} environments ({n_towns} towns, flooded roads), at most {cfg.planner_max_steps} "
                       "actions")
    report.row("planner vs memory without a plan: success", _fmt(ci["plan+memory"]), _fmt(ci["memory, no plan"]),
               f"mean steps of successes: {steps['plan+memory']:.1f} vs {steps['memory, no plan']:.1f} "
               f"(no memory: {steps['no memory']:.1f})")
    env = make_env(w, seeds[0], n_towns=n_towns)
    ep = run_agent(env, PlanningAgent(env.goal), cfg.planner_max_steps)
    lines = [f"goal: {env.goal.text}"] + ep.plans[:3]
    lines += [f"{a} -> {o}" for a, o in ep.trajectory]
    report.note("One full planning-agent trajectory (its plans, then every action and observation):\n\n```\n"
                + "\n".join(lines) + f"\n```\n\n{'success' if ep.success else 'failed'} in {ep.steps} steps.")
    return {n: sum(v) / len(v) for n, v in ok.items()}, steps


# ---- Toolformer (Schick et al. 2023): propose, execute, filter by loss, fine-tune, use at inference -------------

def toolformer_texts(w, n: int, seed: int) -> list[str]:
    """Training texts: two in three are worked arithmetic solutions, one in three a worked solution as the corpus
    generator writes it (any reasoning family; where there is no sum, only random, unhelpful candidate calls land)."""
    from genforge.world.corpus import worked_solution
    from genforge.world.reasoning import arithmetic

    rng = random.Random(f"toolformer-texts-{seed}")
    return [worked_arithmetic(arithmetic(rng, w)) if i % 3 != 2 else worked_solution(rng, w) for i in range(n)]


def worked_arithmetic(row: dict) -> str:
    """A world arithmetic row as corpus text: question, worked columns, 'So a + b = c.', the answer."""
    return f"{question_of(row)}\nSolution:\n{row['rationale']}\nThe answer is {row['answer']}."


def toolformer_tests(w, n: int, seed: int, exclude: set[str]) -> list[dict]:
    """Held-out worked solutions cut just before the final sum ('... So 361 + 859 ='): {prefix, answer, call}."""
    from genforge.world.reasoning import arithmetic

    rng = random.Random(f"toolformer-test-{seed}")
    out: list[dict] = []
    while len(out) < n:
        row = arithmetic(rng, w)
        text = worked_arithmetic(row)
        if text in exclude:
            continue
        a_plus_b = row["rationale"].rsplit("So ", 1)[1].split(" = ")[0]  # "361 + 859"
        cut = text.index(f"So {a_plus_b} =") + len(f"So {a_plus_b} =")
        out.append({"prefix": text[:cut], "answer": row["answer"], "call": a_plus_b})
    return out


def spurious_prefixes(w, n: int, seed: int, exclude: set[str]) -> list[str]:
    """Held-out texts cut at a random word boundary with no '=' just before or soon after (no result comes next, so
    a call there cannot help): where a model that learned *where* to call should not call."""
    rng = random.Random(f"toolformer-spurious-{seed}")
    out = []
    for text in toolformer_texts(w, 2 * n, seed + 7919):
        # not after "=" and not a few characters before one (a call there, after the "=", would be right)
        spaces = [i for i, ch in enumerate(text) if ch == " " and i > 20 and "=" not in text[i - 1:i + 12]]
        if text not in exclude and spaces:
            out.append(text[:rng.choice(spaces)])
    return out[:n]


def call_probability(model, tok, prefixes: list[str]) -> list[float]:
    """Per prefix: the model's probability of opening a calculator call next (" [calculator(")."""
    import math

    from genforge.eval.lm import GenforgeLM

    lls = GenforgeLM(model.eval(), tok, batch_size=32).loglikelihood([(p, " [calculator(") for p in prefixes])
    return [math.exp(ll[0]) for ll in lls]


def _calculator_registry() -> ToolRegistry:
    from genforge.agents.tools import ToolRegistry, calculator

    reg = ToolRegistry()
    reg.register(calculator)
    return reg


def _lm_fine_tune(ctx: StageContext, cfg: Config, model, tok, texts: list[str], name: str):
    """Plain language-model fine-tuning on texts (every token is a target) with the shared Trainer and SFT batches."""
    import shutil

    from genforge.checkpoint import write_checkpoint_files
    from genforge.data.sft_data import SFTData
    from genforge.train.losses import lm_loss
    from genforge.train.sft import LR_SCALE
    from genforge.train.trainer import TrainConfig, Trainer

    out_dir = ctx.path("agents", "toolformer", name)
    shutil.rmtree(out_dir, ignore_errors=True)
    room = model.config.max_seq_len
    examples = []
    for t in texts:
        ids = tok.encode(t, add_bos=True, add_eos=True)[:room + 1]
        examples.append((ids, [1] * len(ids)))
    steps = cfg.tf_steps
    tc = TrainConfig(max_steps=steps, micro_batch=cfg.lesson_micro_batch, warmup_steps=max(1, steps // 10),
                     eval_every=0, ckpt_every=0, log_every=max(1, steps // 10), seed=ctx.seed,
                     threads=ctx.threads, progress=ctx.progress, resume=False)
    data = SFTData(examples, cfg.lesson_micro_batch, tok.pad_id, ctx.seed, group_by_length=True)

    def save_fn(folder: Path) -> None:
        write_checkpoint_files(folder, trainer.model, tok, {"toolformer": name}, {"stage": "agents/toolformer"})

    trainer = Trainer(model, tc, lm_loss, data, out_dir, save_fn=save_fn,
                      default_lr=model.config.default_lr() * LR_SCALE["full"], name=f"toolformer-{name}")
    trainer.fit()
    return trainer.model.eval()


def tool_eval(model, tok, registry: ToolRegistry, items: list[dict], max_new_tokens: int = 40) -> dict[str, list]:
    """Decode each test prefix with tool execution (`generate_with_tools` on one engine session per item).

    Per item: correct (the first number written, calls removed, equals the sum), used (a call was executed),
    right_call (the first call's input is the sum's own expression), copied (a call ran and the first number
    written after it is its result), text."""
    from genforge.agents.toolformer import first_number, generate_with_tools
    from genforge.infer.engine import Engine
    from genforge.infer.sampling import SamplingParams

    engine = Engine(model.eval())
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    res: dict[str, list] = {"correct": [], "used": [], "right_call": [], "copied": [], "text": []}
    for it in items:
        ids = tok.encode(it["prefix"], add_bos=True)
        session = engine.session(ids, params, stop_ids=[tok.eos_id],
                                 max_len=min(len(ids) + 2 * max_new_tokens + 16, model.config.max_seq_len))
        out = generate_with_tools(session, tok, registry, max_new_tokens=max_new_tokens, stop_ids=[tok.eos_id])
        res["correct"].append(float(first_number(out.text) == it["answer"]))
        res["used"].append(float(bool(out.calls)))
        res["right_call"].append(float(bool(out.calls) and out.calls[0][0].input == it["call"]))
        res["copied"].append(float(bool(out.calls) and first_number(out.text) == out.calls[0][1]))
        res["text"].append(out.text)
    return res


def _toolformer(ctx: StageContext, report: StageReport, w, base_ckpt: str, cfg: Config) -> dict[str, float]:
    """Candidates in world texts -> executed -> filtered by the loss rule -> fine-tunes on kept vs unfiltered
    calls -> arithmetic with the calculator at inference, against the model before."""
    from genforge.agents.toolformer import (
        Scored,
        augment,
        execute,
        filter_calls,
        losses_from_eval_lm,
        propose_calculator_calls,
    )
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.io import write_jsonl

    reg = _calculator_registry()
    texts = toolformer_texts(w, cfg.tf_texts, ctx.seed)
    tests = toolformer_tests(w, cfg.tf_test, ctx.seed, set(texts))
    cands = propose_calculator_calls(texts, n_random=cfg.tf_random, seed=ctx.seed)

    def run_call(c):
        return execute(reg, c)

    cpu = {}
    t = time.process_time()
    base, tok, _ = load_checkpoint(base_ckpt)
    # a sample scored by the base too: the row that shows why it cannot be the scorer here (see the note)
    step = max(1, len(cands) // max(cfg.tf_base_scored, 1))
    by_base = filter_calls(texts, cands[::step][:cfg.tf_base_scored], run_call, None, cfg.tf_tau, cfg.tf_window,
                           losses=losses_from_eval_lm(GenforgeLM(base, tok, batch_size=32)))
    cpu["filter (base sample)"] = time.process_time() - t
    # The control, and the scorer: the base fine-tuned on every executed call (the format, not a choice of calls).
    t = time.process_time()
    executed = [Scored(c, run_call(c.call), 0.0, 0.0, True) for c in cands]
    unfiltered = augment(texts, [s for s in executed if not s.result.startswith("error:")])
    m_unf = _lm_fine_tune(ctx, cfg, load_checkpoint(base_ckpt)[0], tok, unfiltered, "unfiltered")
    cpu["fine-tune (unfiltered)"] = time.process_time() - t
    t = time.process_time()
    by_fmt = filter_calls(texts, cands, run_call, None, cfg.tf_tau, cfg.tf_window,
                          losses=losses_from_eval_lm(GenforgeLM(m_unf, tok, batch_size=32)))
    cpu["filter"] = time.process_time() - t
    t = time.process_time()
    kept_texts = augment(texts, by_fmt.kept)
    m_kept = _lm_fine_tune(ctx, cfg, load_checkpoint(base_ckpt)[0], tok, kept_texts, "kept")
    cpu["fine-tune (kept)"] = time.process_time() - t
    t = time.process_time()
    ev = {name: tool_eval(m, tok, reg, tests) for name, m in (("before", base), ("kept", m_kept),
                                                              ("unfiltered", m_unf))}
    spurious_at = spurious_prefixes(w, cfg.tf_test, ctx.seed, set(texts))
    spurious = {name: call_probability(m, tok, spurious_at) for name, m in (("before", base), ("kept", m_kept),
                                                                            ("unfiltered", m_unf))}
    cpu["tool decoding"] = time.process_time() - t
    acc = {k: bootstrap_mean(v["correct"], seed=ctx.seed) for k, v in ev.items()}
    use = {k: bootstrap_mean(v["used"], seed=ctx.seed) for k, v in ev.items()}
    st_base, st = by_base.stats(), by_fmt.stats()
    final = [s for s in by_fmt.scored if texts[s.candidate.text_id][s.candidate.position:].startswith(
        f" {s.result}.\nThe answer")]
    n = len(tests)
    worked_calls = [s for s in by_fmt.scored if texts[s.candidate.text_id][s.candidate.position - 1] == "="]
    random_calls = [s for s in by_fmt.scored if texts[s.candidate.text_id][s.candidate.position - 1] != "="]
    report.row("Toolformer: candidate calls proposed / kept", f"{st['proposed']} / {st['kept']}",
               note=f"{cfg.tf_texts} world texts; one calculator call before every worked result 'a op b = c' and "
                    f"{cfg.tf_random} random call(s) per text; kept iff L- - L+ >= tau={cfg.tf_tau} nats/token on the "
                    f"next ~{cfg.tf_window} characters; kept before the final sums: "
                    f"{sum(s.kept for s in final)} of {len(final)}; CPU s: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    report.row("Toolformer filter scored by the base model: kept", f"{st_base['kept']} of {st_base['proposed']}",
               note=f"mean L+ {statistics.mean(s.loss_plus for s in by_base.scored):.2f} vs L- "
                    f"{statistics.mean(s.loss_minus for s in by_base.scored):.2f} nats/token: the base has never seen "
                    "a call and cannot read its result yet, so the stage scores with the model fine-tuned on the "
                    "unfiltered calls (see the note)")
    report.lesson("A model fine-tuned on the calls the loss filter kept (Toolformer) answers sums with the calculator "
                  "more often right than one fine-tuned on every call", ("accuracy, kept calls", acc["kept"]),
                  ("accuracy, unfiltered calls", acc["unfiltered"]),
                  effect=bootstrap_diff(ev["kept"]["correct"], ev["unfiltered"]["correct"], paired=True,
                                        seed=ctx.seed), target=0.0,
                  note=f"{n} held-out worked solutions cut before 'So a + b ='; the model's call is executed inside "
                       f"the decode and its result appended to the same session; same texts and {cfg.tf_steps} steps "
                       "for both fine-tunes (Schick et al. 2023)")
    report.lesson("The loss filter teaches where a call helps: the kept-data model is less likely to open a call where "
                  "no result follows than the model trained on every call",
                  ("P(call), kept calls", bootstrap_mean(spurious["kept"], seed=ctx.seed)),
                  ("P(call), unfiltered calls", bootstrap_mean(spurious["unfiltered"], seed=ctx.seed)),
                  effect=bootstrap_diff(spurious["kept"], spurious["unfiltered"], paired=True, seed=ctx.seed),
                  target=0.0, direction="below",
                  note=f"{len(spurious_at)} held-out texts cut at a random word boundary with no '=' near; the model's "
                       "probability that ' [calculator(' comes next (before fine-tuning: "
                       f"{statistics.mean(spurious['before']):.4f}); the filter kept "
                       f"{sum(s.kept for s in random_calls)} of {len(random_calls)} random calls and "
                       f"{sum(s.kept for s in worked_calls)} of {len(worked_calls)} calls before a worked result")
    copied = {k: bootstrap_mean(v["copied"], seed=ctx.seed) for k, v in ev.items()}
    report.lesson("The kept-data model uses the tool's answer (writes the call's result next) more often than the "
                  "model trained on every call", ("result used, kept calls", copied["kept"]),
                  ("result used, unfiltered calls", copied["unfiltered"]),
                  effect=bootstrap_diff(ev["kept"]["copied"], ev["unfiltered"]["copied"], paired=True, seed=ctx.seed),
                  target=0.0, note=f"{n} paired test items; in the unfiltered data a random call's result is usually "
                                   "not what the text says next, so that model learns to ignore results")
    report.lesson("Toolformer fine-tuning raises arithmetic accuracy over the model before it",
                  ("accuracy, kept calls", acc["kept"]), ("accuracy, before", acc["before"]),
                  effect=bootstrap_diff(ev["kept"]["correct"], ev["before"]["correct"], paired=True, seed=ctx.seed),
                  target=0.0, note=f"{n} paired items; before = the pretrained model continuing the same text")
    report.row("Toolformer: tool-use rate before / kept / unfiltered",
               " / ".join(_fmt(use[k]) for k in ("before", "kept", "unfiltered")),
               note="share of test items where the model wrote a call that was executed; calls with the sum's own "
                    "expression: " + " / ".join(f"{statistics.mean(ev[k]['right_call']):.2f}"
                                                for k in ("before", "kept", "unfiltered"))
                    + "; the call's result copied as the next number: "
                    + " / ".join(f"{statistics.mean(ev[k]['copied']):.2f}" for k in ("before", "kept", "unfiltered")))
    report.row("Toolformer: arithmetic accuracy before / kept / unfiltered",
               " / ".join(_fmt(acc[k]) for k in ("before", "kept", "unfiltered")), note=f"{n} paired items")
    ex = next((i for i, c in enumerate(ev["kept"]["correct"]) if c and ev["kept"]["used"][i]), 0)
    report.note("Toolformer here departs from Schick et al. 2023 in one way: the loss filter is computed with the "
                "model fine-tuned on *every* executed call, not with the original model. The ~1M-parameter base has "
                "never seen a call and reads one as noise (its loss on the following words rises after any call, "
                "helpful or not), so scored by the base nothing passes; after learning the format from unfiltered "
                "calls, the filter separates calls whose result is what the text says next from the rest. The "
                "kept-data model is then trained from the base, like the control. At this size the sums stay wrong "
                f"with the tool: the model opens a call at {statistics.mean(ev['kept']['used']):.2f} of the sums but "
                f"writes the sum's own operands in {statistics.mean(ev['kept']['right_call']):.2f} of its calls (the "
                "digits must be copied from a few tokens back, the copying skill this base lacks, as ReAct's "
                "searches show too); what the filter changes shows in where the model calls and whether it uses "
                "the result (the lessons above). `small` trains longer on more texts.\n\n"
                f"Toolformer example (test item {ex}): `...{tests[ex]['prefix'][-26:].replace(chr(10), ' / ')}` -> "
                f"`{ev['kept']['text'][ex].strip()}` (gold {tests[ex]['answer']}; before: "
                f"`{ev['before']['text'][ex].strip()}`; unfiltered: `{ev['unfiltered']['text'][ex].strip()}`).")
    write_jsonl(ctx.path("agents", "toolformer", "calls.jsonl"),
                [{"text_id": s.candidate.text_id, "position": s.candidate.position, "call": s.candidate.call.input,
                  "result": s.result, "loss_plus": s.loss_plus, "loss_minus": s.loss_minus, "kept": s.kept}
                 for s in by_fmt.scored])
    write_jsonl(ctx.path("agents", "toolformer", "test.jsonl"),
                [{**t, **{k: ev[k]["text"][i] for k in ev}} for i, t in enumerate(tests)])
    return {**{f"accuracy_{k}": a.estimate for k, a in acc.items()},
            **{f"tool_use_{k}": u.estimate for k, u in use.items()},
            **{f"spurious_calls_{k}": sum(v) / len(v) for k, v in spurious.items()},
            "proposed": st["proposed"], "kept": st["kept"]}


# ---- routing between specialist adapters, and two roles critiquing each other -----------------------------------

FAMILIES = ("arithmetic", "summarization")  # the specialists' task families (one LoRA each)


def family_rows(tasks_dir: Path, cfg: Config) -> dict[str, dict[str, list[dict]]]:
    """Per family: rows to train its specialist, rows to train the router on (train rows the specialists never
    saw) and test rows. {family: {"lora": [...], "router": [...], "test": [...]}}"""
    from genforge.io import read_jsonl

    def rows(split: str, task: str) -> list[dict]:
        return [r for _, r in read_jsonl(tasks_dir / f"{split}.jsonl", required=("prompt", "answer"))
                if r.get("task") == task]

    out = {}
    for fam in FAMILIES:
        train, test = rows("train", fam), rows("test", fam)
        if len(train) < cfg.router_train + 20 or len(test) < cfg.router_test + cfg.collab_items:
            raise ConfigError(f"{tasks_dir}: too few {fam} rows for agents.router_train={cfg.router_train} / "
                              f"router_test={cfg.router_test} / collab_items={cfg.collab_items}; lower them")
        out[fam] = {"lora": train[:len(train) - cfg.router_train], "router": train[len(train) - cfg.router_train:],
                    "test": test[:cfg.router_test], "collab": test[cfg.router_test:cfg.router_test + cfg.collab_items]}
    return out


def math_program(row: dict) -> str:
    """The math specialist's answer: a PAL program over the question's bound numbers (its final worked step;
    the world's arithmetic problems are one addition)."""
    from genforge.agents.pal import numbered_program

    return numbered_program(question_of(row), row["rationale"].splitlines()[-1])


def specialist_conversations(fam: str, rows: list[dict]) -> list[list[dict]]:
    reply = math_program if fam == "arithmetic" else (lambda r: r["response"])
    return [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": reply(r)}] for r in rows]


def _lora(ctx: StageContext, cfg: Config, chat_ckpt: str, convs: list[list[dict]], name: str):
    """A LoRA specialist trained from the chat model (`run_sft`, peft.method=lora, the shared trainer)."""
    import shutil

    from genforge.checkpoint import load_checkpoint
    from genforge.train.sft import SFTConfig, run_sft
    from genforge.train.trainer import TrainConfig

    model, tok, _ = load_checkpoint(chat_ckpt)
    out_dir = ctx.path("agents", "router", name)
    shutil.rmtree(out_dir, ignore_errors=True)
    c = SFTConfig(init_from=chat_ckpt, out_dir=str(out_dir))
    c.train = TrainConfig(max_steps=cfg.router_steps, micro_batch=cfg.lesson_micro_batch,
                          warmup_steps=max(1, cfg.router_steps // 10), eval_every=0, ckpt_every=0,
                          log_every=max(1, cfg.router_steps // 10), seed=ctx.seed, threads=ctx.threads,
                          progress=ctx.progress, resume=False)
    c.data.seq_len = min(256, model.config.max_seq_len - 16)
    c.peft.method = "lora"
    module, _ = run_sft(model, tok, convs, c, base_path=str(Path(chat_ckpt).resolve()), name=f"agents-{name}")
    return module.eval()


def specialist_answers(module, tok, rows: list[dict], max_new_tokens: int) -> tuple[list[str], list[float]]:
    """A specialist's answers to rows (a reply holding a program is run in the sandbox with the question's
    numbers bound, and its printed result is the answer) and their cost (tokens generated)."""
    from genforge.agents.llm import EngineModel, chat_prefix
    from genforge.agents.pal import number_bindings, program_of
    from genforge.agents.sandbox import run_python

    raw = EngineModel(module, tok).generate([chat_prefix(tok, r["prompt"]) for r in rows],
                                            max_new_tokens=max_new_tokens, temperature=0.0)
    outs = []
    for r, o in zip(rows, raw):
        if "print(" in o:
            res = run_python(number_bindings(question_of(r)) + program_of(o))
            o = f"The answer is {(res.stdout.strip().splitlines() or [''])[-1]}." if res.ok else o
        outs.append(o)
    return outs, [float(len(tok.encode(o))) for o in raw]


def score_items(rows: list[dict], outputs: list[str]) -> list[float]:
    """Per-item scores in [0, 1] through the one scoring path (exact match for sums, ROUGE-L for summaries)."""
    from genforge.eval.score import score_outputs

    out = [0.0] * len(rows)
    for task in {r["task"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        for i, s in zip(idx, score_outputs(task, [rows[i] for i in idx], [outputs[i] for i in idx]).items):
            out[i] = s
    return out


def _router(ctx: StageContext, report: StageReport, tasks_dir: Path, chat_ckpt: str, cfg: Config) -> dict:
    """Two LoRA specialists from the chat model; a router trained on which answered each training prompt best;
    accuracy and cost against each specialist alone and the oracle router on a mixed test set."""
    import numpy as np

    from genforge.agents.router import Router, compare, hashed_features
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean

    fams = family_rows(tasks_dir, cfg)
    tok = load_checkpoint(chat_ckpt)[1]
    names = ["math LoRA", "summary LoRA"]
    train = [r for f in FAMILIES for r in fams[f]["router"]]
    test = [r for f in FAMILIES for r in fams[f]["test"]]
    scores = {"train": [], "test": []}
    costs = {"train": [], "test": []}
    t = time.process_time()
    for fam in FAMILIES:
        module = _lora(ctx, cfg, chat_ckpt, specialist_conversations(fam, fams[fam]["lora"][:cfg.router_steps
                                                                                          * cfg.lesson_micro_batch]),
                       fam)
        for split, rows in (("train", train), ("test", test)):
            outs, cost = specialist_answers(module, tok, rows, cfg.router_max_new)
            scores[split].append(score_items(rows, outs))
            costs[split].append(cost)
    cpu = time.process_time() - t
    S = {k: np.array(v).T for k, v in scores.items()}  # [n, 2] per split
    C = {k: np.array(v).T for k, v in costs.items()}
    router = Router(names, C["train"].mean(axis=0).tolist(), seed=ctx.seed).fit(hashed_features(
        [r["prompt"] for r in train]), S["train"])
    chosen = router.predict(hashed_features([r["prompt"] for r in test]))
    rows = {r["system"]: r for r in compare(S["test"], C["test"], names, chosen, seed=ctx.seed)}
    best = max(names, key=lambda m: rows[f"only {m}"]["accuracy"])
    n = len(test)
    report.lesson("A router over prompt features picking a specialist LoRA per prompt beats every single specialist "
                  "on a mixed test set", ("score, router", bootstrap_mean(rows["router"]["per_item"], seed=ctx.seed)),
                  (f"score, best single ({best})", bootstrap_mean(rows[f"only {best}"]["per_item"], seed=ctx.seed)),
                  effect=bootstrap_diff(rows["router"]["per_item"], rows[f"only {best}"]["per_item"], paired=True,
                                        seed=ctx.seed), target=0.0,
                  note=f"{n} paired test prompts ({cfg.router_test} sums scored by exact match, {cfg.router_test} "
                       "summaries by ROUGE-L); the router (logistic regression on hashed n-grams) was trained on "
                       f"{len(train)} prompts the specialists never saw, labelled with which specialist scored best")
    for name in ("router", *(f"only {m}" for m in names), "oracle"):
        r = rows[name]
        report.row(f"routing: {name} — score / mean cost", f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                   f" / {r['cost']:.1f} tokens",
                   note="oracle = the best specialist per item (the ceiling)" if name == "oracle" else
                   (f"router picks the math LoRA for {float(np.mean(chosen[:cfg.router_test] == 0)):.2f} of sums and "
                    f"the summary LoRA for {float(np.mean(chosen[cfg.router_test:] == 1)):.2f} of summaries"
                    if name == "router" else "the same specialist for every prompt"))
    per_fam = {m: {f: float(np.mean(S["test"][i * cfg.router_test:(i + 1) * cfg.router_test, j]))
                   for i, f in enumerate(FAMILIES)} for j, m in enumerate(names)}
    report.row("routing: specialist score on sums / summaries",
               "; ".join(f"{m} {v['arithmetic']:.2f} / {v['summarization']:.2f}" for m, v in per_fam.items()),
               note=f"LoRA r=8 on every block linear, {cfg.router_steps} steps each from the chat model; the math "
                    f"LoRA writes a PAL program run in the sandbox; CPU {cpu:.0f} s for both fine-tunes and answers")
    return {name: r["accuracy"] for name, r in rows.items()} | {"best_single": best}


def _collaboration(ctx: StageContext, report: StageReport, tasks_dir: Path, chat_ckpt: str, cfg: Config) -> dict:
    """The chat model in two roles, answerer and critic, for N rounds (`critique_many`) vs the answerer alone."""
    from genforge.agents.llm import ChatTurns, EngineModel
    from genforge.agents.router import critique_many
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean

    rows = family_rows(tasks_dir, cfg)["summarization"]["collab"]
    model, tok, _ = load_checkpoint(chat_ckpt)
    lm = ChatTurns(EngineModel(model, tok), tok)
    res = critique_many(lm, lm, [r["prompt"] for r in rows], rounds=cfg.collab_rounds, max_new_tokens=48)
    alone = score_items(rows, [r["first"] for r in res])
    debate = score_items(rows, [r["answer"] for r in res])
    changed = sum(r["first"] != r["answer"] for r in res) / len(res)
    critic = score_items(rows, [r["transcript"][1][1] for r in res])
    report.lesson(f"Two roles critiquing each other for {cfg.collab_rounds} round(s) beat one model answering alone",
                  ("ROUGE-L, after critique", bootstrap_mean(debate, seed=ctx.seed)),
                  ("ROUGE-L, alone", bootstrap_mean(alone, seed=ctx.seed)),
                  effect=bootstrap_diff(debate, alone, paired=True, seed=ctx.seed), target=0.0,
                  note=f"{len(rows)} paired summarisation test prompts; the chat model answers, critiques its own "
                       f"answer as the other role and revises (Du et al. 2023); alone = its first answer; "
                       f"{changed:.2f} of answers changed; the critic's own reply scores ROUGE-L "
                       f"{statistics.mean(critic):.2f}: the model never saw a critique or revision prompt, and a "
                       "~1M-parameter model answers one with unrelated text from its training (a sum, a code)")
    ex = res[0]["transcript"]
    report.note("A critique exchange (summarisation test item 0):\n\n```\n"
                + "\n".join(f"{who}: {text}" for who, text in ex) + f"\n```\n\ngold: {rows[0]['answer']}")
    return {"alone": sum(alone) / len(alone), "critique": sum(debate) / len(debate), "changed": changed}
