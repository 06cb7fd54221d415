"""The whole suite end to end on a smoke world and a tiny random checkpoint (every part but garak; see test_garak)."""

import json

import torch

from genforge.report import StageReport
from genforge.safety.suite import SuiteConfig, run_suite

SMALL = dict(bias_pairs_per_job=1, mitigation_steps=2, mitigation_docs=10, rerank_prompts=8, rerank_samples=2,
             jailbreak_requests=1, injection_items=2, canary_candidates=9, repeat_words=["poem"], repeat_samples=1,
             detect_texts=8, halluc_real=3, halluc_fake=2, unlearn_people=2, unlearn_retain=2, unlearn_steps=1,
             unlearn_long_steps=1, jailbreak_ll_requests=2, edit_facts=1, edit_neighbours=2, max_new_tokens=8)


def test_suite_runs_every_part_and_reports(tiny_tokenizer, tmp_path):
    from genforge.checkpoint import save_checkpoint
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.world import generate_world

    generate_world(tmp_path / "world", seed=0, size="smoke")
    assert (tmp_path / "world" / "canaries.jsonl").exists() and (tmp_path / "world" / "bias.json").exists()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, depth=2, width=32, head_dim=16, max_seq_len=256))
    save_checkpoint(tmp_path / "ckpt", model, tiny_tokenizer)
    cfg = SuiteConfig(parts="bias,jailbreak,injection,extraction,detect,hallucination,unlearn,edit", **SMALL)
    sr = StageReport("safety", "Safety")
    res = run_suite({"base": str(tmp_path / "ckpt"), "sft": str(tmp_path / "ckpt")}, tmp_path / "world", None, cfg,
                    sr, tmp_path / "work", tmp_path)
    json.dumps(res)  # the stage writes these numbers to stages/safety.json
    assert set(res["timings"]) == set(cfg.parts.split(","))
    metrics = " ".join(r.metric for r in sr.rows)
    for what in ("stereotype score, base", "jailbreak success, sft", "injection success via tool result",
                 "canary exposure", "AI-text detection AUC", "hallucination rate, sft", "unlearning (NPO)",
                 "ROME edit", "planted bias documents kept", "jailbreak compliance margin",
                 "injection: pull of the payload"):
        assert what in metrics, what
    claims = " ".join(les.claim for les in sr.lessons)
    for what in ("CDA", "equalising loss", "projection steering", "re-ranking", "jailbreak template", "defences",
                 "repeat-a-word", "classifier detects", "watermark detector", "unlearning (GA)", "rank-one edit",
                 "stronger dose", "likelihood of complying", "injection's pull", "NPO keeps more"):
        assert what in claims, what
    for les in sr.lessons:
        assert les.verdict in ("holds", "does not hold")
    assert any(p.endswith("jailbreak.png") for p, _ in sr.plots)


def test_command_needs_models_and_names_unknown_parts(tmp_path):
    import pytest

    from genforge.commands.safety import SafetyConfig, main
    from genforge.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a run folder"):
        main(SafetyConfig())
    with pytest.raises(ConfigError, match="unknown"):
        run_suite({}, tmp_path, None, SuiteConfig(parts="bias,nope"), StageReport("s", "S"), tmp_path / "w")
