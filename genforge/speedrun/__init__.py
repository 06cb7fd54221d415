"""`genforge speedrun`: the whole lifecycle on the embedded tiny world, ending in runs/<name>/report.md.

One lesson module per stage, listed in `run.STAGES` in an order where every stage comes after the stages it
reads (world, clean, tokenizer, pretrain, sft, peft, align, ...). With `jobs=2` (the default on >= 2 cores) a
stage starts, in its own process, as soon as the stages it reads have finished, so e.g. image and objectives run
beside pretraining and peft beside sft. Sizes: `smoke` (about 2 minutes, run by the end-to-end test), `tiny`
(the default, <= 25 minutes on 2 CPU cores) and `small`; each size is a recipe, `genforge/recipes/speedrun/<size>.yaml`,
with one section per stage. Any knob can be set on the command line and is validated like every config:

    genforge speedrun size=smoke peft.steps=20 'align={ppo_lr: 1e-4}' progress=false
    genforge speedrun stages=align force=true      # rerun one stage from its declared inputs

The stage contract (every lesson module follows it; `run.check_stages` checks it):

    # genforge/speedrun/<stage>.py
    NAME = "sft"; TITLE = "Instruction tuning"

    @dataclass
    class Config:            # this stage's knobs; defaults = the `tiny` size; field comments = --help text
        steps: int = 120     # ...

    @dataclass
    class Outputs:           # what later stages may read; written to runs/<size>/stages/<NAME>.json
        checkpoint: str
        ...

    def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs,
            pretrain: pretrain.Outputs) -> Outputs: ...

The runner finds a stage's inputs from `run`'s keyword-only parameters (names = earlier stages, annotations =
their `Outputs` classes), reads them back typed from `stages/<name>.json` (a stage that has not run is a
one-line error naming it and `stages=`) and writes the returned `Outputs` (dataclass -> JSON) atomically.
`StageContext` holds `run_dir`, `size`, `seed`, `threads`, `progress` and `path(*parts)` (creates parents);
`SpeedrunConfig` has one section per stage (`cfg.sft` is `sft.Config`). A new lesson is a new module with
these five names, one entry in `run.STAGES`, one section in `SpeedrunConfig` and in the size recipes.
"""

from genforge.speedrun.run import SIZES, STAGES, SpeedrunConfig, main, resolve
from genforge.speedrun.stage import StageContext

__all__ = ["SIZES", "STAGES", "SpeedrunConfig", "StageContext", "main", "resolve"]
