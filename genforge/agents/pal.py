"""PAL, program-aided language models (Gao et al. 2022, arXiv:2211.10435).

The model writes a short Python program for a word problem; the sandbox runs it; the answer is what it
prints. The arithmetic is done by the interpreter, so the model only has to get the *structure* right,
which is where small models fail less than at carrying digits. Few-shot programs come from the world's
own arithmetic tasks: each worked step "a + b = c" in a rationale becomes one assignment.
Baselines on the same items: direct answers and chain of thought (Wei et al. 2022).

`bind_numbers=True` is a departure for very small models: the tool binds the question's numbers to `n0, n1, ...`
(in order of appearance) before the program runs, and the program refers to them by name
(`numbered_program`). The model then chooses the structure only; copying multi-digit numbers out of the prompt,
which a ~1M-parameter model does badly after a short fine-tune, is not needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genforge.agents.llm import TextModel
from genforge.agents.sandbox import SandboxConfig, run_python
from genforge.eval.stats import bootstrap_mean
from genforge.world.tasks import extract_answer, normalize_answer

_STEP = re.compile(r"(-?\d+) ([+\-*/]) (-?\d+) = (-?\d+)")
PAL_HEADER = "Write a Python program that solves the problem and prints the answer.\n\n"
STOP = ("\nQuestion:",)



def question_of(row: dict) -> str:
    """The bare question of a world row (its `prompt` may add a style line such as "Give only the final answer.")."""
    return row.get("question") or row["prompt"]

def rationale_to_program(rationale: str) -> str:
    """Turn the worked steps "a op b = c" of a rationale into a program; earlier results become names.

    >>> print(rationale_to_program("Buying 5 more gives 12 + 5 = 17.\\nGiving 3 leaves 17 - 3 = 14."))
    step1 = 12 + 5
    step2 = step1 - 3
    print(step2)
    """
    return _program(rationale, [])


_NUMBER = re.compile(r"\d+")


def question_numbers(question: str) -> list[str]:
    """The numbers in a question, in order of appearance."""
    return _NUMBER.findall(question)


def number_bindings(question: str) -> str:
    """The prelude that binds the question's numbers: 'n0 = 12\nn1 = 5\n'."""
    return "".join(f"n{i} = {x}\n" for i, x in enumerate(question_numbers(question)))


def numbered_program(question: str, rationale: str) -> str:
    """`rationale_to_program` with the question's numbers as n0, n1, ... (see the module docstring).

    >>> print(numbered_program("Ada has 12 pens and buys 5.", "12 + 5 = 17."))
    step1 = n0 + n1
    print(step1)
    """
    return _program(rationale, question_numbers(question))


def _program(rationale: str, nums: list[str]) -> str:
    """Steps "a op b = c" -> `stepK = x op y` lines; an operand is an earlier step's name, a bound question
    number (n0, n1, ... when `nums` lists them) or the literal."""
    lines: list[str] = []
    names: dict[str, str] = {}

    def ref(x: str) -> str:
        return names.get(x) or (f"n{nums.index(x)}" if x in nums else x)

    for a, op, b, c in _STEP.findall(rationale):
        op = "//" if op == "/" else op  # the world's divisions are exact
        name = f"step{len(lines) + 1}"
        lines.append(f"{name} = {ref(a)} {op} {ref(b)}")
        names[c] = name
    if not lines:
        raise ValueError(f"no worked step 'a op b = c' in rationale {rationale[:60]!r}")
    return "\n".join(lines + [f"print({name})"])


def pal_prompt(question: str, examples: list[dict]) -> str:
    """Few-shot prompt: examples are world arithmetic rows (`prompt`, `rationale`)."""
    shots = "".join(f"Question: {ex['prompt']}\nProgram:\n{rationale_to_program(ex['rationale'])}\n\n"
                    for ex in examples)
    return f"{PAL_HEADER}{shots}Question: {question}\nProgram:\n"


def direct_prompt(question: str, examples: list[dict]) -> str:
    shots = "".join(f"Question: {ex['prompt']}\nAnswer: The answer is {ex['answer']}.\n\n" for ex in examples)
    return f"{shots}Question: {question}\nAnswer: The answer is"


def cot_prompt(question: str, examples: list[dict]) -> str:
    shots = "".join(f"Question: {ex['prompt']}\nAnswer: {ex['rationale']}\nThe answer is {ex['answer']}.\n\n"
                    for ex in examples)
    return f"{shots}Question: {question}\nAnswer:"


def program_of(completion: str) -> str:
    """The code in a completion (markdown fences removed)."""
    text = completion.strip()
    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.DOTALL)
    return (m.group(1) if m else text).strip()


def answer_from_output(stdout: str) -> str:
    """The last printed line, as the number extract_answer would read."""
    last = (stdout.strip().splitlines() or [""])[-1]
    return extract_answer("arithmetic", f"The answer is {last}.")


@dataclass
class MethodResult:
    method: str
    accuracy: float
    ci: tuple[float, float]
    correct: list[float]
    answers: list[str]
    details: list[dict] = field(default_factory=list)  # per item: completion, program output, isolation


def solve(model: TextModel, rows: list[dict], examples: list[dict], method: str, *, max_new_tokens: int = 160,
          sandbox: SandboxConfig | None = None, seed: int = 0, prompts: list[str] | None = None,
          bind_numbers: bool = False, prefill: str = "") -> MethodResult:
    """Answer world arithmetic `rows` with `method` in ("direct", "cot", "pal"); exact-match accuracy.

    prompts: one per row instead of the few-shot ones (a fine-tuned model's own format); a direct prompt must
    end where the number comes ("... The answer is"). bind_numbers: run PAL programs after `number_bindings`.
    prefill: text the prompts already opened a PAL or CoT reply with (e.g. "step1 ="), put back in front of each
    completion before it is run or read.
    """
    make = {"direct": direct_prompt, "cot": cot_prompt, "pal": pal_prompt}[method]
    prompts = prompts if prompts is not None else [make(question_of(r), examples) for r in rows]
    outs = model.generate(prompts, max_new_tokens=max_new_tokens if method != "direct" else 16, temperature=0.0,
                          stop=STOP)
    answers, details = [], []
    for row, out in zip(rows, outs):
        out = out if method == "direct" else prefill + out
        if method == "pal":
            prelude = number_bindings(question_of(row)) if bind_numbers else ""
            res = run_python(prelude + program_of(out), sandbox)
            answers.append(answer_from_output(res.stdout) if res.ok else "")
            details.append({"completion": out, "output": res.as_observation(), "isolation": res.isolation})
        else:
            text = f"The answer is {out.strip()}" if method == "direct" else out
            answers.append(extract_answer("arithmetic", text))
            details.append({"completion": out})
    correct = [float(a == normalize_answer("arithmetic", r["answer"])) for a, r in zip(answers, rows)]
    ci = bootstrap_mean(correct, seed=seed)
    acc, lo, hi = ci.estimate, ci.low, ci.high
    return MethodResult(method, acc, (lo, hi), correct, answers, details)
