"""The task registry: what to evaluate, how to score it, how to read the answer out of an output.

A task is data: a JSONL file (optionally filtered to rows whose "task" field matches), a metric,
a prompt builder and an answer extractor. The tiny world keeps every task of a split in one file
(`tasks/{train,val,test,heldout}.jsonl`, rows {"task", "prompt", "response", "rationale", "answer"},
multiple choice adds "options" and "gold_index"); the registry discovers its task names from that
file and picks each one's metric by rule, so a new world task works without code here. Users add
their own files on the command line (`--tasks my.jsonl` or `my.jsonl:rouge`) or with `register_task`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genforge.errors import ConfigError, DataError
from genforge.eval.metrics import extract_answer
from genforge.io import read_jsonl

METRICS = ("exact_match", "rouge", "bleu", "mc", "refusal")

# (substring of the task name, metric); first match wins, else exact_match. Matching on parts of
# names keeps the world free to say "summarization" or "dialogue_summary".
METRIC_RULES: tuple[tuple[str, str], ...] = (
    ("multiple_choice", "mc"),
    ("summar", "rouge"),
    ("translat", "bleu"),
    ("refus", "refusal"),
)

# For each metric, the row field holding the reference (the first one present is used).
REFERENCE_FIELDS = {"exact_match": ("answer", "response"), "rouge": ("response", "answer"),
                    "bleu": ("response", "answer"), "refusal": ("response", "answer"), "mc": ("gold_index",)}

# Declining phrases, looked for near the start of an output (a refusal says so first). The same
# phrases the world's own extractor uses, so both agree on its refusal task.
_REFUSAL = re.compile(r"\b(can(no|')t|cannot|can not|won't|will not|unable to|not able to|sorry|refuse)\b",
                      re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """Does the output decline the request? (Phrase matching; enough for the world's refusals.)"""
    return bool(_REFUSAL.search(text.replace("\u2019", "'")[:200]))


def mc_stem(prompt: str, options: Sequence[str]) -> str:
    """A multiple-choice prompt without its option lines ("A. Millford") and answer-format line.

    The world writes its multiple-choice prompts in the letter formulation; log-likelihood
    scoring of the option texts needs the bare question, and the option-order test re-lists the
    options itself in permuted order.
    """
    marks = {f"{L}{sep}{o}".strip() for L, o in zip("ABCDEFGHIJ", options) for sep in (". ", ") ", ": ")}
    marks |= {f"({L}) {o}".strip() for L, o in zip("ABCDEFGHIJ", options)}
    lines = [ln for ln in prompt.splitlines() if ln.strip() not in marks]
    if len(lines) > 1 and re.search(r"\bletter\b", lines[-1], re.IGNORECASE):
        lines = lines[:-1]  # "Answer with the letter."
    return "\n".join(lines).strip()


def metric_for(name: str, row: dict | None = None) -> str:
    """The metric for a task name by METRIC_RULES (rows with "options" are multiple choice)."""
    for pattern, metric in METRIC_RULES:
        if pattern in name:
            return metric
    return "mc" if row is not None and "options" in row else "exact_match"


def default_prompt(row: dict) -> str:
    return row["prompt"]


def style_prompt(row: dict, style: str) -> str:
    """The row asked in one phrasing: the world's reasoning rows carry `prompts` {style: prompt} ("cot", "direct",
    "l2m"); a row without that style (or without `prompts`) keeps its own prompt."""
    return (row.get("prompts") or {}).get(style, row["prompt"])


@dataclass
class Task:
    """One evaluation task."""

    name: str
    path: Path  # JSONL with the items
    metric: str = "exact_match"  # one of METRICS
    select: str | None = None  # keep only rows whose "task" field equals this (None: every row)
    build_prompt: Callable[[dict], str] = default_prompt
    extract: Callable[[str], str] = extract_answer
    examples_path: Path | None = None  # where few-shot examples come from (None: the first rows of `path`)
    dev_path: Path | None = None  # the dev split prompt search scores on (None: like examples_path)
    holdout: int = 0  # rows at the head of `path` reserved for examples (set when examples_path is None)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ConfigError(f"task {self.name}: unknown metric '{self.metric}' (choose from {', '.join(METRICS)})")

    @property
    def required(self) -> tuple[str, ...]:
        return ("prompt", "options", "gold_index") if self.metric == "mc" else ("prompt",)

    def _rows(self, path: Path) -> list[dict]:
        rows = []
        for lineno, row in read_jsonl(path, required=("task",) if self.select else ()):
            if self.select is not None and row["task"] != self.select:
                continue
            missing = [f for f in self.required if f not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field {', '.join(missing)} (task {self.name} needs "
                                f"{', '.join(self.required)})")
            if self.metric != "mc" and not any(f in row for f in REFERENCE_FIELDS[self.metric]):
                want = " or ".join(f'"{f}"' for f in REFERENCE_FIELDS[self.metric])
                raise DataError(f"{path}:{lineno}: missing field {want} (the reference answer of task {self.name})")
            if self.metric == "mc" and not (isinstance(row["gold_index"], int)
                                            and 0 <= row["gold_index"] < len(row["options"])):
                raise DataError(f"{path}:{lineno}: gold_index {row['gold_index']!r} is not an index into "
                                f"its {len(row['options'])} options")
            rows.append({**row, "_line": f"{path}:{lineno}"})
        return rows

    def load(self, limit: int | None = None) -> list[dict]:
        """The eval items (file:line errors for malformed rows), at most `limit`."""
        rows = self._rows(self.path)[self.holdout:]
        if not rows:
            raise DataError(f"{self.path}: no items for task {self.name}")
        return rows[:limit] if limit else rows

    def reference(self, row: dict) -> str:
        return str(next(row[f] for f in REFERENCE_FIELDS[self.metric] if f in row))

    def examples(self, k: int, dev: bool = False) -> list[dict]:
        """Up to k solved rows for few-shot prompts (or the dev split for prompt search)."""
        path = (self.dev_path or self.examples_path) if dev else self.examples_path
        if path is None:
            return self._rows(self.path)[:min(k, self.holdout)]
        return self._rows(path)[:k] if path.exists() else []


# ---- the registry --------------------------------------------------------------------------------------

REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make a task available by name (wins over a world task of the same name)."""
    REGISTRY[task.name] = task
    return task


def find_tasks_dir(path: str | Path) -> Path:
    """A world folder (holding tasks/) or the tasks folder itself -> the folder with the split files."""
    p = Path(path)
    return p / "tasks" if (p / "tasks").is_dir() else p


def world_task_names(tasks_dir: str | Path | None, split: str = "test") -> list[str]:
    """Task names present in the world's split file, in order of first appearance."""
    if not tasks_dir:
        return []
    f = find_tasks_dir(tasks_dir) / f"{split}.jsonl"
    if not f.exists():
        return []
    return list(dict.fromkeys(row["task"] for _, row in read_jsonl(f, required=("task",))))


def _world_extract(name: str) -> Callable[[str], str]:
    """The world's own answer extraction for its tasks when it provides one, else the default."""
    try:
        from genforge.world import extract_answer as world_extract
    except ImportError:
        return extract_answer
    return lambda text: world_extract(name, text)


def world_task(name: str, tasks_dir: str | Path, split: str = "test") -> Task:
    d = find_tasks_dir(tasks_dir)
    path = d / f"{split}.jsonl"
    first = next((row for _, row in read_jsonl(path) if row.get("task") == name), None)
    return Task(name=name, path=path, metric=metric_for(name, first), select=name, extract=_world_extract(name),
                examples_path=d / "train.jsonl", dev_path=d / "val.jsonl", meta={"source": "world"})


def file_task(spec: str, shots: int = 0) -> Task:
    """A user JSONL as a task: 'path.jsonl' or 'path.jsonl:metric'. Its first `shots` rows become the
    few-shot examples and are not scored.
    """
    path_str, _, metric = spec.partition(".jsonl")
    path = Path(path_str + ".jsonl")
    metric = metric.lstrip(":")
    if not path.exists():
        raise DataError(f"{path}: eval file not found")
    first = next((row for _, row in read_jsonl(path)), None)
    return Task(name=path.stem, path=path, metric=metric or metric_for(path.stem, first), holdout=shots,
                meta={"source": str(path)})


def known_tasks(tasks_dir: str | Path | None = None, split: str = "test") -> list[str]:
    return list(dict.fromkeys(list(REGISTRY) + world_task_names(tasks_dir, split)))


def resolve_tasks(names: str | Sequence[str], tasks_dir: str | Path | None = None, split: str = "test",
                  shots: int = 0) -> list[Task]:
    """Task objects for names ("a,b" or a list): registered names, world task names, 'all' (every
    world task) or JSONL paths. An unknown name raises a ConfigError that lists the known ones.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    world = world_task_names(tasks_dir, split)
    out: list[Task] = []
    for raw in names:
        name = raw.strip()
        if name == "all":
            if not world and not REGISTRY:
                raise ConfigError(f"--tasks all: no world tasks found in {tasks_dir or '(no --tasks-dir given)'}; "
                                  "give --tasks-dir (a folder made by `genforge data world OUT`)")
            out += [REGISTRY.get(n) or world_task(n, tasks_dir, split) for n in known_tasks(tasks_dir, split)]
        elif name in REGISTRY:
            out.append(REGISTRY[name])
        elif name in world:
            out.append(world_task(name, tasks_dir, split))
        elif ".jsonl" in name:
            out.append(file_task(name, shots))
        else:
            known = known_tasks(tasks_dir, split)
            where = f" in {find_tasks_dir(tasks_dir) / (split + '.jsonl')}" if tasks_dir else " (no --tasks-dir given)"
            raise ConfigError(f"unknown task '{name}'; known tasks{where}: {', '.join(known) or 'none'} "
                              "(or give a .jsonl file, optionally file.jsonl:metric)")
    return list({t.name: t for t in out}.values())  # drop repeats, keep order
