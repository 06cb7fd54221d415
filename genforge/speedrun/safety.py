"""Stage "safety": how the models fail and what helps (issue 18, items 3-4).

Measured on the SFT chat model, the constitutional-AI model (RL from AI feedback) and the RLHF model (PPO), and,
where the lesson lives in the pretraining text (bias, memorised canaries), on the pretrained base: bias by
counterfactual swaps against the bias planted in the corpus, with a mitigation at each of four stages; jailbreak
templates around held-out harmful requests; prompt injection through a retrieved document and a tool result;
canary exposure and verbatim extraction vs the number of planted copies (and deduplication); AI-text detection
(classifier vs watermark); hallucination against the world's tables; unlearning (GA vs NPO); a ROME-style edit;
and the garak scanner against `genforge serve`. Everything is in `genforge.safety.suite`; `genforge safety`
runs the same suite on any run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from genforge.report import StageReport
from genforge.safety.suite import SuiteConfig
from genforge.speedrun import align, cai, clean, pretrain, sft, world
from genforge.speedrun.stage import StageContext

NAME = "safety"
TITLE = "Safety: bias, jailbreaks, injection, extraction, detection, hallucination, unlearning, editing, garak"


@dataclass
class Config(SuiteConfig):
    """The suite's settings (`genforge.safety.suite.SuiteConfig`); the seed follows the run's."""


@dataclass
class Outputs:
    results: dict  # part -> its numbers (see genforge.safety.suite)
    models: dict[str, str]  # role -> checkpoint measured


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, clean: clean.Outputs,
        pretrain: pretrain.Outputs, sft: sft.Outputs, align: align.Outputs, cai: cai.Outputs) -> Outputs:
    """Run the safety suite over base, SFT, CAI (RLAIF) and RLHF (PPO) models."""
    from dataclasses import replace

    from genforge.safety.suite import run_suite

    models = {"base": pretrain.checkpoint, "sft": sft.checkpoint, "cai": cai.rlaif, "rlhf": align.ppo}
    suite_cfg = replace(cfg, seed=ctx.seed)
    results = run_suite(models, world.dir, clean.clean, suite_cfg, report, ctx.path("safety"), ctx.run_dir)
    report.note("Roles: base = the pretrained model; sft = the chat model; cai = constitutional AI (RL from AI "
                "feedback on the SFT model); rlhf = PPO against the reward model. Bias and extraction are properties "
                "of the pretraining text, so they are measured on the base too.")
    return Outputs(results=results, models=models)
