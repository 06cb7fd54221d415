"""ReAct: reasoning and acting interleaved (Yao et al. 2023, arXiv:2210.03629).

The model writes `Thought: ...` then `Action: tool[argument]`; we run the tool and append
`Observation: ...`; repeat until `Action: finish[answer]` or the step limit. An action we cannot parse or
run as a call (no Action line, unknown tool, arguments that fail validation) is *malformed*: it is
counted, the agent sees a one-line error as its observation and gets one retry; a second malformed
action in a row ends the episode as failed. Every episode keeps its full trajectory.

`argument` is either JSON (`calculator[{"expression": "2+3"}]`) or plain text for a tool with one
required string parameter (`search[friend of Ada Quill]`). Baselines on the same questions: a direct
answer, and one-shot retrieval (the top facts for the question pasted into the prompt, no second hop).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from genforge.agents.knowledge import KnowledgeBase
from genforge.agents.llm import TextModel
from genforge.agents.tools import ToolRegistry

FINISH = "finish"
_ACTION = re.compile(r"^\s*Action\s*:\s*([A-Za-z_]\w*)\s*\[(.*)\]\s*$", re.MULTILINE | re.DOTALL)
STOP = ("\nObservation:", "\nQuestion:")


@dataclass
class Step:
    thought: str
    action: str  # tool name, "finish", or "" when malformed
    argument: str
    observation: str
    malformed: bool = False


@dataclass
class Trajectory:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str = ""
    status: str = "running"  # "answered" | "step_limit" | "malformed"
    n_malformed: int = 0

    def render(self) -> str:
        """The trajectory as the model saw it (no header)."""
        return f"Question: {self.question}\n{self.render_steps()}".rstrip("\n")

    def render_steps(self) -> str:
        """The steps so far, one line each, ending in a newline (empty before the first step)."""
        out = []
        for s in self.steps:
            out.append(f"Thought: {s.thought}")
            out.append(f"Action: {s.action}[{s.argument}]" if s.action else "Action: (malformed)")
            if s.action != FINISH or s.malformed:
                out.append(f"Observation: {s.observation}")
        return "".join(line + "\n" for line in out)

    def to_messages(self, request: str) -> list[dict]:
        """The trajectory as chat turns: the user's `request`, then per step the model's thought and action as an
        assistant turn and the tool's observation as a user turn. A fine-tune on these learns the actions and not
        the tool's output (the chat template masks every turn but the assistant's)."""
        msgs = [{"role": "user", "content": request}]
        for s in self.steps:
            msgs.append({"role": "assistant", "content": f"Thought: {s.thought}\n"
                         + (f"Action: {s.action}[{s.argument}]" if s.action else "Action: (malformed)")})
            if s.action != FINISH or s.malformed:
                msgs.append({"role": "user", "content": f"Observation: {s.observation}"})
        return msgs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReActConfig:
    max_steps: int = 6  # tool calls + the final finish, malformed ones included
    max_new_tokens: int = 96
    temperature: float = 0.0


def parse_step(text: str) -> tuple[str, str, str] | None:
    """(thought, action, argument) from one model turn, or None when there is no `Action: name[...]` line."""
    thought_part, _, _ = text.partition("\nAction")
    thought = thought_part.strip()
    thought = thought[len("Thought:"):].strip() if thought.startswith("Thought:") else thought
    m = _ACTION.search(text)
    if not m:
        return None
    return thought, m.group(1), m.group(2).strip()


def _arguments(registry: ToolRegistry, name: str, arg: str) -> str | dict:
    """JSON text stays JSON; plain text binds to the tool's only required string parameter."""
    if arg.startswith("{") or name not in registry:
        return arg
    params = registry.tools[name].parameters
    strings = [k for k in params["required"] if params["properties"][k]["type"] == "string"]
    if len(params["required"]) == 1 and strings:
        return {strings[0]: arg}
    return arg  # let validation say what is wrong


def header(registry: ToolRegistry, examples: str = "") -> str:
    return ("Answer the question by thinking and using tools. Each turn write one line 'Thought: ...' and one "
            "line 'Action: tool[argument]'. Finish with 'Action: finish[answer]'.\nTools:\n"
            f"{registry.describe()}\nfinish(answer: string): give the final answer\n\n{examples}")


def run_episode(model: TextModel, registry: ToolRegistry, question: str, cfg: ReActConfig | None = None,
                examples: str = "") -> Trajectory:
    """One ReAct episode; the returned trajectory holds every step and how it ended."""
    return run_episodes(model, registry, [question], cfg, examples=examples)[0]


def run_episodes(model: TextModel, registry: ToolRegistry, questions: list[str], cfg: ReActConfig | None = None,
                 *, examples: str = "", prompt_fn: Callable[[Trajectory], str] | None = None) -> list[Trajectory]:
    """ReAct episodes for many questions in lockstep: each round is one batched `generate` over the episodes
    still running, so a batch of questions costs about as many model calls as the longest episode.

    prompt_fn(trajectory) -> prompt (it must end where the model writes the next thought); the default is the
    tool header, the few-shot `examples`, the trajectory so far and "Thought:". A fine-tuned model can use a
    shorter format (the speedrun's agents stage continues its own chat turn).
    """
    cfg = cfg or ReActConfig()
    head = header(registry, examples) if prompt_fn is None else ""
    make = prompt_fn or (lambda t: f"{head}{t.render()}\nThought:")
    trajs = [Trajectory(q) for q in questions]
    retry = [False] * len(trajs)  # the previous action was malformed: this turn is its one retry
    running = list(range(len(trajs)))
    while running:
        running = [i for i in running if len(trajs[i].steps) < cfg.max_steps]
        if not running:
            break
        outs = model.generate([make(trajs[i]) for i in running], max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, stop=STOP)
        still = []
        for i, out in zip(running, outs):
            if _advance(trajs[i], registry, out, retry, i):
                still.append(i)
        running = still
    for t in trajs:
        if t.status == "running":
            t.status = "step_limit"
    return trajs


def _advance(traj: Trajectory, registry: ToolRegistry, out: str, retry: list[bool], i: int) -> bool:
    """Apply one model turn to `traj`; False when the episode has ended."""
    parsed = parse_step("Thought:" + out)
    error = None
    if parsed is None:
        thought, error = out.strip().split("\n")[0], "no 'Action: tool[argument]' line"
        action = argument = ""
    else:
        thought, action, argument = parsed
        if action == FINISH:
            traj.steps.append(Step(thought, action, argument, ""))
            traj.answer, traj.status = argument, "answered"
            return False
        _, _, error = registry.parse_args(action, _arguments(registry, action, argument))
    if error is not None:
        traj.n_malformed += 1
        obs = f"error: {error}. Write 'Action: tool[argument]' with one of: {', '.join(registry.names())}, finish"
        traj.steps.append(Step(thought, action if action in registry else "", argument, obs, malformed=True))
        if retry[i]:
            traj.status = "malformed"
            return False
        retry[i] = True
        return True
    retry[i] = False
    obs = registry.call(action, _arguments(registry, action, argument)).text
    traj.steps.append(Step(thought, action, argument, obs.replace("\n", " | ")))
    return True


def demo_trajectory(kb: KnowledgeBase, row: dict) -> str:
    """A worked two-hop example for the few-shot header, with real search results as observations."""
    q, bridge, answer = row["question"], row["bridge"], row["answer"]
    first_query = q.replace("In which town does ", "").replace(" live?", "")
    obs1 = " | ".join(kb.search(first_query))
    obs2 = " | ".join(kb.search(f"{bridge} lives in"))
    return (f"Question: {q}\nThought: I need to find {first_query} first.\nAction: search[{first_query}]\n"
            f"Observation: {obs1}\nThought: That is {bridge}. Now I need the town where {bridge} lives.\n"
            f"Action: search[{bridge} lives in]\nObservation: {obs2}\nThought: {bridge} lives in {answer}.\n"
            f"Action: finish[{answer}]\n\n")


def answer_direct(model: TextModel, questions: list[str], examples: list[dict]) -> list[str]:
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples)
    outs = model.generate([f"{shots}Question: {q}\nAnswer:" for q in questions], max_new_tokens=12,
                          temperature=0.0, stop=("\n",))
    return [o.strip().rstrip(".") for o in outs]


def answer_retrieve_once(model: TextModel, kb: KnowledgeBase, questions: list[str], examples: list[dict],
                         k: int = 3) -> list[str]:
    """One retrieval with the question as query, facts in the prompt, then a direct answer."""
    def block(q: str) -> str:
        return "Facts: " + " ".join(kb.search(q, k=k)) + f"\nQuestion: {q}\nAnswer:"
    shots = "".join(f"{block(e['question'])} {e['answer']}\n\n" for e in examples)
    outs = model.generate([shots + block(q) for q in questions], max_new_tokens=12, temperature=0.0, stop=("\n",))
    return [o.strip().rstrip(".") for o in outs]


def trajectories_jsonl(trajs: list[Trajectory]) -> list[str]:
    """One JSON line per item, for runs/<...>/react_trajectories.jsonl."""
    return [json.dumps(t.to_dict()) for t in trajs]
