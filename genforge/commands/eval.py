"""`genforge eval compare RUN_A RUN_B`: two eval result folders side by side, optionally judged.

(`genforge eval CHECKPOINT` itself runs `genforge.eval.harness.main` with an `EvalConfig`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genforge.errors import ConfigError


@dataclass
class CompareConfig:
    """Print two results folders side by side with deltas (B - A); no model is loaded unless a judge is."""

    runs: list[str] = field(default_factory=list)  # the two result folders (A then B)
    judge_url: str = ""  # also let an OpenAI-compatible endpoint judge A vs B outputs
    judge_checkpoint: str = ""  # a genforge checkpoint as the judge instead
    judge_model: str = "genforge"  # model name sent to the judge endpoint
    judge_timeout: float = 30.0  # seconds per judge request
    limit: int = 0  # judged items per task (0 = all)


def _judge(cfg: CompareConfig):
    from genforge.eval.judge import EndpointJudge, ModelJudge

    if cfg.judge_url:
        return EndpointJudge(cfg.judge_url, model=cfg.judge_model, timeout=cfg.judge_timeout)
    if cfg.judge_checkpoint:
        from genforge.checkpoint import load_checkpoint
        from genforge.eval.lm import GenforgeLM

        model, tok, _ = load_checkpoint(cfg.judge_checkpoint)
        return ModelJudge(GenforgeLM(model, tok, chat=True))
    return None


def compare(cfg: CompareConfig) -> str:
    from genforge.eval.compare import compare as compare_runs
    from genforge.eval.compare import judge_runs, judge_table

    if len(cfg.runs) != 2:
        raise ConfigError(f"eval compare needs two result folders, got {len(cfg.runs)}: "
                          "genforge eval compare runs/eval/a runs/eval/b")
    table = compare_runs(*cfg.runs)
    print(table)
    judge = _judge(cfg)
    if judge is not None:
        verdicts = judge_runs(*cfg.runs, judge, limit=cfg.limit or None)
        print("\nLLM judge (each pair asked in both orders):\n" + judge_table(verdicts))
    return table
