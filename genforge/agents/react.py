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
        out = [f"Question: {self.question}"]
        for s in self.steps:
            out.append(f"Thought: {s.thought}")
            out.append(f"Action: {s.action}[{s.argument}]" if s.action else "Action: (malformed)")
            if s.action != FINISH or s.malformed:
                out.append(f"Observation: {s.observation}")
        return "\n".join(out)

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
    cfg = cfg or ReActConfig()
    traj = Trajectory(question)
    head = header(registry, examples)
    retry_pending = False  # the previous action was malformed: this turn is its one retry
    while len(traj.steps) < cfg.max_steps:
        prompt = f"{head}{traj.render()}\nThought:"
        (out,) = model.generate([prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                stop=STOP)
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
                return traj
            _, _, error = registry.parse_args(action, _arguments(registry, action, argument))
        if error is not None:
            traj.n_malformed += 1
            obs = f"error: {error}. Write 'Action: tool[argument]' with one of: {', '.join(registry.names())}, finish"
            traj.steps.append(Step(thought, action if action in registry else "", argument, obs, malformed=True))
            if retry_pending:
                traj.status = "malformed"
                return traj
            retry_pending = True
            continue
        retry_pending = False
        obs = registry.call(action, _arguments(registry, action, argument)).text
        traj.steps.append(Step(thought, action, argument, obs.replace("\n", " | ")))
    traj.status = "step_limit"
    return traj


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
