"""Chat template: HF's apply_chat_template renders what we render; encode_chat ids and masks; chat sessions."""

import io

import pytest
import torch

from genforge.infer.sampling import SamplingParams

TEXTS = ["Hello there, how are you today? I am fine, thank you.", "What is 12 plus 30? The answer is 42.",
         "Summarise: Ada met Bo at the mill. Ada met Bo.", "Translate to Toy: the cat -> ka tet", "héllo wörld 🙂"] * 4

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "The answer is 5."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Translate: the cat"},
     {"role": "assistant", "content": "ka tet 🙂"}],
    [{"role": "user", "content": "  leading and trailing spaces  "}, {"role": "assistant", "content": "\nnew line\n"}],
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer  # its corpus holds TEXTS (tests/helpers.py)


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_hf_apply_chat_template_matches_render_chat(tok, tmp_path, conv, gen):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = CONVERSATIONS[conv]
    if gen:
        msgs = msgs[:-1]  # ends with a user turn: ready for the assistant's reply
    ours = tok.render_chat(msgs, add_generation_prompt=gen)
    theirs = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert theirs == ours
    assert ours.endswith("<|assistant|>") == gen
    # and HF's ids for the rendered text are ours
    assert hf(ours, add_special_tokens=False)["input_ids"] == tok.encode(ours)


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_encode_chat_equals_encoding_rendered_text(tok, conv):
    msgs = CONVERSATIONS[conv]
    for gen in (False, True):
        ids, mask = tok.encode_chat(msgs, add_generation_prompt=gen)
        assert ids == tok.encode(tok.render_chat(msgs, add_generation_prompt=gen))
        assert len(mask) == len(ids)
    ids, mask = tok.encode_chat(msgs)
    # the masked-in tokens decode to exactly the assistant contents, each closed by <|end|>
    learned = [i for i, m in zip(ids, mask) if m]
    want = "".join(m["content"] + "<|end|>" for m in msgs if m["role"] == "assistant")
    assert tok.decode(learned, skip_special=False) == want


def _tiny_chat_model(tok, max_seq_len=64):
    from genforge.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, width=32, head_dim=16, max_seq_len=max_seq_len)).eval()


def test_chat_loop_streams_resets_and_quits(tok, tiny_model):
    from genforge.chat import ChatSession, chat_loop, respond

    model = tiny_model  # read-only here: the session only generates
    session = ChatSession(model, tok, SamplingParams(max_new_tokens=8))
    out = io.StringIO()
    n = chat_loop(session, io.StringIO("Hi\nWhat is 2 + 3?\n/reset\nHello\n/quit\nnever read\n"), out)
    assert n == 3
    text = out.getvalue()
    assert "[conversation cleared]" in text and "never read" not in text
    assert len(session.history) == 2  # only the exchange after /reset
    # the streamed reply is exactly the greedy batch reply
    streamed = session.history[-1]["content"]
    assert streamed == respond(model, tok, ["Hello"], SamplingParams(max_new_tokens=8))[0]


def test_chat_drops_oldest_turns_to_fit_context(tok):
    from genforge.chat import ChatSession

    model = _tiny_chat_model(tok, max_seq_len=64)
    session = ChatSession(model, tok, SamplingParams(max_new_tokens=8), system="Be brief.")
    for i in range(6):
        list(session.send(f"Message number {i} please"))
        ids, _ = tok.encode_chat(session._messages(session.history), add_generation_prompt=True)
        assert len(ids) <= 64
    assert session.dropped_turns > 0
    assert session.history[-2]["content"] == "Message number 5 please"
    assert all(m["content"] != "Message number 0 please" for m in session.history)
    # a message that cannot fit even alone is refused with a clear message, and history is untouched
    before = list(session.history)
    out = io.StringIO()
    from genforge.chat import chat_loop

    chat_loop(session, io.StringIO("word " * 80 + "\n"), out)
    assert "does not fit" in out.getvalue() and session.history == before


def test_chat_cli_runs_a_checkpoint_with_an_adapter(tok, tmp_path, monkeypatch, capsys):
    from genforge.checkpoint import save_checkpoint
    from genforge.cli import main
    from genforge.model.peft import apply_lora, save_lora

    model = _tiny_chat_model(tok)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    apply_lora(model, r=2, target_modules=["q_proj"])
    save_lora(model, tmp_path / "adapter")
    argv = ["chat", str(tmp_path / "ckpt"), f"adapter={tmp_path / 'adapter'}", "temperature=0",
            "sampling.max_new_tokens=4"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/quit\n"))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bot> " in out and "/quit" in out  # the banner names the commands


TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                                           "parameters": {"type": "object", "required": ["expression"],
                                                          "properties": {"expression": {"type": "string"}}}}}]
TOOL_CONV = [{"role": "user", "content": "What is 6 times 7?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function",
                  "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "42"},
             {"role": "assistant", "content": "The answer is 42."}]


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_tool_calls_and_results_render_like_hf(tok, tmp_path, tools):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    ours = tok.render_chat(TOOL_CONV, tools=tools)
    assert hf.apply_chat_template(TOOL_CONV, tools=tools, tokenize=False) == ours
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    assert f"<|assistant|>{call}<|end|>" in ours
    assert "<|user|><tool_response>42</tool_response><|end|>" in ours
    assert ours.startswith("<|bos|><|system|>You may call these tools:\n{\"type\": \"function\"") == bool(tools)
    ids, mask = tok.encode_chat(TOOL_CONV, tools=tools)
    assert ids == tok.encode(ours)
    learned = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert learned == ('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call><|end|>'
                       "The answer is 42.<|end|>")  # the call is learned, the tool's result is not


def test_unknown_role_is_a_clean_error(tok):
    from genforge.errors import DataError

    with pytest.raises(DataError, match="message 0: role must be one of"):
        tok.render_chat([{"role": "robot", "content": "x"}])
