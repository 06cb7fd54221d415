"""A real (tiny, untrained) genforge model behind the agent interfaces: shapes and failure handling."""

from __future__ import annotations

import math

import pytest
import torch

from genforge.agents.llm import TextModel, cut_at_stop, from_eval_lm
from genforge.agents.react import ReActConfig, run_episode
from genforge.agents.toolformer import loss_from_eval_lm
from genforge.agents.tools import default_registry

TEXTS = ["Mara lives in Oakmere. 12 + 5 = 17. Thought: search. Action: calculator[1+1]"] * 20


@pytest.fixture(scope="module")
def lm():
    from genforge.eval.lm import GenforgeLM
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=256)).eval()
    return GenforgeLM(model, tok)


def test_cut_at_stop():
    assert cut_at_stop("a\nObservation: b", ["\nObservation:"]) == "a"
    assert cut_at_stop("abc", ["x", ""]) == "abc"


def test_eval_lm_as_text_model_and_loss(lm):
    model = from_eval_lm(lm)
    assert isinstance(model, TextModel)
    outs = model.generate(["Mara lives in", "12 + 5 ="], max_new_tokens=5, temperature=0.0, stop=["\n"])
    assert len(outs) == 2 and all(isinstance(o, str) and "\n" not in o for o in outs)
    loss = loss_from_eval_lm(lm)
    a, b = loss("Mara lives in", " Oakmere."), loss("Mara lives in [calculator(1 + 1) -> 2]", " Oakmere.")
    assert math.isfinite(a) and math.isfinite(b) and a > 0


def test_untrained_model_in_react_ends_cleanly(lm):
    t = run_episode(from_eval_lm(lm), default_registry(include=("calculator",)), "What is 2+2?",
                    ReActConfig(max_steps=3, max_new_tokens=8))
    assert t.status in ("malformed", "step_limit", "answered") and len(t.steps) <= 3


def test_engine_model_continues_a_chat_turn(tiny_model, tiny_tokenizer):
    """chat_prefix renders the same ids as encode_chat (special strings become tokens), and EngineModel
    continues it greedily, batch or not, ending at <|end|>."""
    from genforge.agents.llm import EngineModel, chat_prefix

    tok = tiny_tokenizer
    text = chat_prefix(tok, "What is 2 + 3?", "Thought:")
    want = tok.encode_chat([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True)[0]
    assert tok.encode(text) == want + tok.encode("Thought:")
    lm = EngineModel(tiny_model, tok, batch_size=2)
    outs = lm.generate([text, chat_prefix(tok, "hi"), text], max_new_tokens=5, temperature=0.0, stop=())
    assert len(outs) == 3 and outs[0] == outs[2]


def test_chat_turns_fit_long_prompts_into_the_context(tiny_model, tiny_tokenizer):
    from genforge.agents.llm import ChatTurns, EngineModel, chat_prefix

    tok = tiny_tokenizer
    lm = ChatTurns(EngineModel(tiny_model, tok), tok)
    long = " ".join(["Ada walks to the well."] * 200) + " Question: who walks?"
    short = lm.fit(long, 16)
    assert short.endswith("Question: who walks?") and lm.truncated == 1
    assert len(tok.encode(chat_prefix(tok, short))) + 16 <= tiny_model.config.max_seq_len
    assert lm.fit("Who walks?", 16) == "Who walks?" and lm.truncated == 1
    (out,) = lm.generate([long], max_new_tokens=4)  # no context overflow
    assert isinstance(out, str)
