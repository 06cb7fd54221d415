"""A real run folder with the cheap stages done (world, clean, tokenizer at size=smoke), built once."""

import pytest


@pytest.fixture(scope="session")
def data_run(tmp_path_factory):
    """runs/<tmp>/smoke after `genforge speedrun size=smoke stages=world,clean,tokenizer` (about 10 s)."""
    from genforge.speedrun import main, resolve

    runs = tmp_path_factory.mktemp("runs")
    cfg = resolve(["size=smoke", f"runs_dir={runs}", "stages=world,clean,tokenizer", "progress=false"])
    main(cfg)
    return runs / "smoke"
