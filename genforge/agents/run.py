"""`genforge agent run`: one agent on one question, for a person to try (the CLI registers `main`).

    AgentConfig(agent="react", checkpoint="runs/tiny/sft", question="In which town does the friend of X live?")
    AgentConfig(agent="pal", checkpoint=..., question="Ada has 3 boxes of 12 pens ...")
    AgentConfig(agent="planner", seed=3)   # the text world; no model needed

From the shell: `genforge agent run runs/tiny/sft/chat/checkpoint question="In which town does the friend of
X live?" chat=true tools=search` (positional words: checkpoint, question; `genforge agent run --help`).

`main(cfg, model=None)` returns a dict (answer, status, trajectory, isolation...) and, with `out`, writes it
as JSON. Lessons pass `model` (any `TextModel`, e.g. a scripted stub) instead of a checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genforge.agents.llm import TextModel, from_eval_lm
from genforge.errors import ConfigError
from genforge.io import write_json

AGENTS = ("react", "pal", "planner")
TOOLS = ("calculator", "search", "date_add", "date_diff", "python")


@dataclass
class AgentConfig:
    """`genforge agent run`: answer a question with tools (react), a program (pal), or play the text world."""

    agent: str = "react"  # react | pal | planner
    question: str = ""  # the question (react, pal); ignored by planner
    tools: list[str] = field(default_factory=lambda: list(TOOLS))  # tools react may call
    checkpoint: str = ""  # genforge checkpoint folder of the model (react, pal)
    chat: bool = False  # wrap prompts in the chat template (SFT'd checkpoints)
    world_dir: str = ""  # generated world folder (world.json, knowledge.jsonl); "" = build the smoke world in memory
    max_steps: int = 6  # react: tool calls + finish; planner: 10x this many env actions
    n_examples: int = 2  # few-shot examples in the prompt
    seed: int = 0
    out: str = ""  # optional JSON file for the result and trajectory
    verbose: bool = True  # print the trajectory and the answer


def _check(cfg: AgentConfig) -> None:
    if cfg.agent not in AGENTS:
        raise ConfigError(f"agent: {cfg.agent!r} is not one of {', '.join(AGENTS)}")
    bad = [t for t in cfg.tools if t not in TOOLS]
    if bad:
        raise ConfigError(f"tools: unknown tool {bad[0]!r}; choose from {', '.join(TOOLS)}")
    if cfg.agent != "planner" and not cfg.question.strip():
        raise ConfigError(f"question: empty; agent={cfg.agent} needs a question")
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps: {cfg.max_steps} must be >= 1")


def _world(cfg: AgentConfig):
    from genforge.agents.knowledge import KnowledgeBase, load_world
    from genforge.world.facts import build_world
    from genforge.world.generate import SIZES

    if cfg.world_dir:
        return load_world(cfg.world_dir), KnowledgeBase.from_dir(cfg.world_dir)
    s = SIZES["smoke"]
    w = build_world(cfg.seed, s["people"], s["towns"], s["objects"])
    return w, KnowledgeBase.from_world(w)


def _model(cfg: AgentConfig) -> TextModel:
    if not cfg.checkpoint:
        raise ConfigError(f"checkpoint: empty; agent={cfg.agent} needs a model (a genforge checkpoint folder)")
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.lm import GenforgeLM

    model, tok, _ = load_checkpoint(cfg.checkpoint)
    if tok is None:
        raise ConfigError(f"checkpoint: {cfg.checkpoint} has no tokenizer files")
    return from_eval_lm(GenforgeLM(model.eval(), tok, chat=cfg.chat))


def main(cfg: AgentConfig, model: TextModel | None = None) -> dict:
    """Run the configured agent once; returns the result (and writes it to `cfg.out` when set)."""
    _check(cfg)
    w, kb = _world(cfg)
    if cfg.agent == "planner":
        from genforge.agents.env import make_env
        from genforge.agents.planner import PlanningAgent, run_agent

        env = make_env(w, cfg.seed, n_towns=min(8, len(w.towns)))
        ep = run_agent(env, PlanningAgent(env.goal), max_steps=cfg.max_steps * 10)
        result = {"agent": "planner", "goal": env.goal.text, "success": ep.success, "steps": ep.steps,
                  "plans": ep.plans, "trajectory": ep.trajectory}
    elif cfg.agent == "react":
        from genforge.agents.knowledge import multihop_questions
        from genforge.agents.react import ReActConfig, demo_trajectory, run_episode
        from genforge.agents.tools import default_registry

        model = model or _model(cfg)
        reg = default_registry(kb=kb, include=tuple(cfg.tools))
        shots = multihop_questions(w, cfg.n_examples, seed=cfg.seed + 1) if "search" in cfg.tools else []
        traj = run_episode(model, reg, cfg.question, ReActConfig(max_steps=cfg.max_steps),
                           examples="".join(demo_trajectory(kb, r) for r in shots))
        result = {"agent": "react", "question": cfg.question, "answer": traj.answer, "status": traj.status,
                  "n_malformed": traj.n_malformed, "trajectory": traj.to_dict()["steps"]}
    else:
        from genforge.agents.pal import solve
        from genforge.world.tasks import arithmetic

        model = model or _model(cfg)
        rng = random.Random(f"pal-shots-{cfg.seed}")
        shots = [arithmetic(rng, w) for _ in range(cfg.n_examples)]
        res = solve(model, [{"prompt": cfg.question, "answer": ""}], shots, "pal")
        result = {"agent": "pal", "question": cfg.question, "answer": res.answers[0], **res.details[0]}
    result["config"] = asdict(cfg)
    if cfg.out:
        write_json(Path(cfg.out), result)
    if cfg.verbose:
        print(summary(result), flush=True)
    return result


def summary(result: dict) -> str:
    """What a person at the terminal wants to see: each step, then the answer (or the planner's outcome)."""
    lines = []
    if result["agent"] == "react":
        lines.append(f"Question: {result['question']}")
        for s in result["trajectory"]:
            lines.append(f"Thought: {s['thought']}")
            lines.append(f"Action: {s['action']}[{s['argument']}]" if s["action"] else "Action: (malformed)")
            if s["observation"]:
                lines.append(f"Observation: {s['observation']}")
        lines.append(f"answer: {result['answer']!r} ({result['status']}, {result['n_malformed']} malformed actions)")
    elif result["agent"] == "pal":
        lines += [f"Question: {result['question']}", "Program:", result.get("completion", "").strip(),
                  f"Output: {result.get('output', '')}", f"answer: {result['answer']!r} "
                  f"(sandbox isolation: {result.get('isolation', '?')})"]
    else:
        lines.append(f"Goal: {result['goal']}")
        lines += [f"  {a} -> {o}" for a, o in result["trajectory"]]
        lines.append(f"{'success' if result['success'] else 'failed'} in {result['steps']} steps")
    return "\n".join(lines)
