"""The commands' own configs and `main(cfg)` functions, for the rows of `genforge.cli.COMMANDS`.

A command whose work is one library call (pretrain, sft, eval, speedrun) points the table at that
stage's config and a printer here; commands that only exist on the command line (generate, chat,
serve, data world/clean/pack, tokenizer train, import/export, prune, watermark detect, eval
compare) declare a small config dataclass here. Each module is imported only when its command runs.
The library never imports this package (an import contract in pyproject.toml).
"""
