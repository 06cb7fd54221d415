"""`agents.run.main`: the entry point the CLI will register, driven here by stub models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genforge.agents.llm import ScriptedModel
from genforge.agents.run import AgentConfig, main
from genforge.errors import ConfigError


def test_react_run_writes_result(tmp_path: Path):
    model = ScriptedModel([" Compute.\nAction: calculator[{\"expression\": \"6*7\"}]", " Done.\nAction: finish[42]"])
    out = tmp_path / "r.json"
    res = main(AgentConfig(agent="react", question="What is 6 times 7?", tools=["calculator"], out=str(out)), model)
    assert res["answer"] == "42" and res["status"] == "answered"
    assert res["trajectory"][0]["observation"] == "42"
    assert json.loads(out.read_text())["answer"] == "42"


def test_pal_run():
    res = main(AgentConfig(agent="pal", question="What is 6 times 7?"), ScriptedModel(lambda p: "print(6 * 7)"))
    assert res["answer"] == "42" and res["isolation"] in ("bwrap", "rlimits-only")


def test_planner_run_needs_no_model():
    res = main(AgentConfig(agent="planner", seed=1))
    assert res["success"] and res["steps"] == len(res["trajectory"]) - 1


@pytest.mark.parametrize("cfg, msg", [(AgentConfig(agent="reflex", question="q"), "agent: 'reflex'"),
                                      (AgentConfig(question="q", tools=["web"]), "unknown tool 'web'"),
                                      (AgentConfig(question=" "), "question: empty"),
                                      (AgentConfig(question="q"), "checkpoint: empty")])
def test_config_errors(cfg: AgentConfig, msg: str):
    with pytest.raises(ConfigError, match=msg):
        main(cfg)


def test_cli_agent_run_prints_the_trajectory(capsys):
    from genforge.cli import main as cli

    assert cli(["agent", "run", "agent=planner", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Goal: bring ") and out.rstrip().endswith("steps") and "success in" in out


def test_cli_agent_run_help_lists_keys():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "genforge", "agent", "run", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "CHECKPOINT QUESTION" in r.stdout and "tools = [" in r.stdout
