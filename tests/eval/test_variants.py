import pytest

from genforge.eval.variants import TRIGGER, VARIANTS, apply_variant, variant_prompts


def test_every_issue_variant_is_there():
    for name in ("explain_first", "analysis", "emotion", "tip", "penalty", "do", "dont", "unbiased", "trigger"):
        assert name in VARIANTS


def test_plain_is_identity_and_others_keep_the_question():
    p = "What is 12 + 30?"
    assert apply_variant("plain", p) == p
    for name in VARIANTS:
        out = apply_variant(name, p)
        assert p in out
        if name != "plain":
            assert out != p
    assert apply_variant("trigger", p) == f"{p}\n{TRIGGER}"
    assert "Analysis:" in apply_variant("analysis", p)
    assert "career" in apply_variant("emotion", p)
    assert "unbiased" in apply_variant("unbiased", p)
    assert "Don't" in apply_variant("dont", p) and "Don't" not in apply_variant("do", p)


def test_variant_prompts_keeps_order_and_unknown_is_named():
    out = variant_prompts(["a", "b"], ["plain", "tip"])
    assert out["plain"] == ["a", "b"] and out["tip"][1].startswith("b\n")
    with pytest.raises(KeyError, match="known"):
        apply_variant("shout", "x")
