"""An outside red-team tool against the server: NVIDIA's `garak` scanner (Derczynski et al. 2024, "garak: A
Framework for Security Probing Large Language Models") through its OpenAI-compatible generator.

`run_garak(base_url, model_name, probes, ...)` runs `python -m garak` in a subprocess against a live
`genforge serve` (or any OpenAI-compatible endpoint), with garak's data and report folders redirected under
`out_dir` (XDG_DATA_HOME / XDG_CACHE_HOME / XDG_CONFIG_HOME), and reads the per-probe, per-detector pass rates back
from the report's `eval` rows. `garak` sits behind the `safety` extra; its own pins (transformers < 5.20,
openai < 3 in garak 0.17) clash with the dev environment's, so it is run from the same interpreter
without re-resolving them (pip warns; the run works, see tests/safety/test_garak.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.extras import require
from genforge.io import write_json

# Small, fast probes that need no downloads: role-play jailbreak, encoded payloads, prompt injection, and
# garak's own continuation / refusal-trigger probes. Each is capped at `prompt_cap` prompts.
DEFAULT_PROBES = ("dan.Dan_11_0", "encoding.InjectBase64", "promptinject.HijackHateHumans", "lmrc.Profanity")


class GarakError(GenforgeError):
    """garak could not run or wrote no results."""


def garak_config(base_url: str, model_name: str, generations: int, prompt_cap: int, seed: int) -> dict:
    return {
        "system": {"parallel_attempts": 1, "lite": True, "show_z": False},
        "run": {"generations": generations, "soft_probe_prompt_cap": prompt_cap, "seed": seed},
        "plugins": {"target_type": "openai.OpenAICompatible", "target_name": model_name,
                    "generators": {"openai": {"OpenAICompatible": {
                        "uri": base_url.rstrip("/") + "/v1", "api_key": "genforge", "model": model_name,
                        "max_tokens": 48, "temperature": 0.7, "suppressed_params": ["frequency_penalty",
                                                                                     "presence_penalty"]}}}},
    }


def garak_python() -> str:
    """The Python that runs garak: `$GENFORGE_GARAK_PYTHON` (a venv of its own: garak pins transformers and openai
    below what genforge's environment uses, so `make test` installs it in `.venv-garak`), else this interpreter if
    garak is importable here."""
    python = os.environ.get("GENFORGE_GARAK_PYTHON", "")
    if python:
        if not Path(python).exists():
            raise GarakError(f"GENFORGE_GARAK_PYTHON={python} does not exist; `make test` builds .venv-garak")
        return str(Path(python).absolute())  # garak runs in its output folder: a relative path would break there
    require("garak", "safety")
    return sys.executable


def run_garak(base_url: str, model_name: str, out_dir: str | Path, probes: Sequence[str] = DEFAULT_PROBES, *,
              generations: int = 1, prompt_cap: int = 5, seed: int = 0, timeout: float = 900.0) -> dict:
    """Scan the endpoint; returns {'probes': {probe: {detector: {'passed', 'total', 'pass_rate'}}}, 'report', 'cmd'}."""
    python = garak_python()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "garak_config.json"
    write_json(cfg_path, garak_config(base_url, model_name, generations, prompt_cap, seed))
    env = dict(os.environ, XDG_DATA_HOME=str(out / "data"), XDG_CACHE_HOME=str(out / "cache"),
               XDG_CONFIG_HOME=str(out / "config"), OPENAICOMPATIBLE_API_KEY="genforge", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [python, "-m", "garak", "--config", str(cfg_path), "--probes", ",".join(probes),
           "--report_prefix", "genforge"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=out)
    except subprocess.TimeoutExpired:
        raise GarakError(f"garak did not finish in {timeout:.0f} s; scan fewer probes (probes=) or prompts") from None
    (out / "garak_stdout.txt").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    reports = sorted(out.rglob("genforge*.report.jsonl"))
    if r.returncode != 0 or not reports:
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        raise GarakError(f"garak exited {r.returncode} without a report ({' | '.join(tail)}); "
                         f"full output: {out / 'garak_stdout.txt'}")
    return {"probes": read_evals(reports[-1]), "attempts": read_attempts(reports[-1]), "report": str(reports[-1]),
            "cmd": " ".join(cmd)}


def read_evals(report: str | Path) -> dict:
    """{probe: {detector: {'passed', 'total', 'pass_rate'}}} from a garak report's `eval` rows."""
    res: dict = {}
    for line in Path(report).read_text().splitlines():
        row = json.loads(line)
        if row.get("entry_type") != "eval":
            continue
        total = int(row.get("total_evaluated", row.get("total", 0)))
        passed = int(row.get("passed", 0))
        res.setdefault(row["probe"], {})[row["detector"]] = {
            "passed": passed, "total": total, "pass_rate": passed / total if total else float("nan")}
    return res


def read_attempts(report: str | Path) -> list[dict]:
    """The finished attempts of a report: probe, the prompt's text and whether any reply came back."""
    out = []
    for line in Path(report).read_text().splitlines():
        row = json.loads(line)
        if row.get("entry_type") != "attempt" or row.get("status") != 2:
            continue
        turns = (row.get("prompt") or {}).get("turns") or [{}]
        text = " ".join(str((t.get("content") or {}).get("text", "")) for t in turns)
        outs = row.get("outputs") or []
        out.append({"probe": row.get("probe_classname", ""), "prompt": text,
                    "replied": any(o is not None for o in outs)})
    return out
