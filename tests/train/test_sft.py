"""SFT: assistant-only loss, data errors with file:line, a smoke run whose loss falls and whose
checkpoint/adapter round-trips, recipes (the speedrun's SFT lesson: tests/speedrun/test_lessons.py)."""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genforge.data.sft_data import SFTData, collate, encode_conversations, read_conversations
from genforge.errors import DataError
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import TokenizerConfig, train_tokenizer
from genforge.train.losses import IGNORE, lm_loss

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "north"]
TOY = {"the": "ka", "cat": "tet", "dog": "bor", "sees": "vimo", "a": "na", "bird": "pilu"}
PEOPLE = ["Ada", "Bo", "Cy", "Di"]
TOWNS = ["Elm", "Fenwick", "Gorse"]


def make_tasks(seed: int, n: int) -> list[dict]:
    """A miniature instruction world: arithmetic, last letters, summaries, translation; 'echo' is held out."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"task": "add", "prompt": f"What is {a} plus {b}?", "response": f"The answer is {a + b}.",
                     "answer": str(a + b)})
        w1, w2 = rng.sample(WORDS, 2)
        rows.append({"task": "last_letters", "prompt": f"Last letters of {w1} {w2}?",
                     "response": f"The answer is {w1[-1]}{w2[-1]}.", "answer": w1[-1] + w2[-1]})
        p, t = rng.choice(PEOPLE), rng.choice(TOWNS)
        rows.append({"task": "summarize", "prompt": f"Summarize: {p} walked to {t}. {p} bought bread in {t}.",
                     "response": f"{p} bought bread in {t}.", "answer": f"{p} bought bread in {t}."})
        src = " ".join(rng.choice(list(TOY)) for _ in range(3))
        out = " ".join(TOY[w] for w in src.split())
        rows.append({"task": "translate", "prompt": f"Translate to Toy: {src}", "response": out, "answer": out})
    return rows


def heldout_rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"task": "echo", "prompt": f"Repeat the word {w}.", "response": f"The answer is {w}.", "answer": w}
            for w in (rng.choice(WORDS) for _ in range(n))]


def corpus() -> list[str]:
    rng = random.Random(0)
    docs = []
    for i in range(120):
        p, t, w = rng.choice(PEOPLE), rng.choice(TOWNS), rng.choice(WORDS)
        docs.append(f"{p} lives in {t}. {p} likes the {w}. {i % 10} plus {i % 7} is {i % 10 + i % 7}. "
                    f"The cat sees a bird. Ka tet vimo na pilu.")
    return docs


@pytest.fixture(scope="module")
def tok():
    texts = corpus() + [r["prompt"] + " " + r["response"] for r in make_tasks(0, 30)]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=400, min_frequency=1))


@pytest.fixture(scope="module")
def base_ckpt(tok, tmp_path_factory):
    from genforge.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=128))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", model, tok)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------- masking
CONVS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
     {"role": "assistant", "content": "The answer is 5."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Last letters of apple river?"}, {"role": "assistant", "content": "er"}],
]


class Probe(torch.nn.Module):
    """The model with a tensor added to its logits, so a test can perturb or differentiate them."""

    def __init__(self, model, add):
        super().__init__()
        self.model, self.add = model, add

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids) + self.add


def test_loss_counts_assistant_tokens_only(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, width=32, head_dim=16, max_seq_len=128))
    enc = encode_conversations(tok, CONVS, seq_len=120)
    batch = collate(enc.examples, tok.pad_id)
    labels = batch["labels"]
    assert labels.shape == batch["input_ids"].shape
    # hand-computed mean NLL over assistant tokens (content + <|end|>)
    logp = F.log_softmax(model(batch["input_ids"]).float(), -1)
    nll, n = 0.0, 0
    for b, (ids, mask) in enumerate(enc.examples):
        for t in range(len(ids) - 1):
            if mask[t + 1]:
                nll -= float(logp[b, t, ids[t + 1]].detach())
                n += 1
    loss, count, _ = lm_loss(model, batch)
    assert int(count) == n == sum(sum(m[1:]) for _, m in enc.examples)
    assert float(loss.detach()) / int(count) == pytest.approx(nll / n, rel=1e-5)
    # the targets are exactly the assistant's tokens, in order
    want = [i for ids, mask in enc.examples for i, m in zip(ids[1:], mask[1:]) if m]
    assert labels[labels != IGNORE].tolist() == want

    # gradient w.r.t. the logits is zero at every prompt / padding position, non-zero at assistant ones
    add = torch.zeros(*labels.shape, tok.vocab_size, requires_grad=True)
    loss, _, _ = lm_loss(Probe(model, add), batch)
    loss.backward()
    per_pos = add.grad.abs().sum(-1)
    assert torch.all(per_pos[labels == IGNORE] == 0)
    assert torch.all(per_pos[labels != IGNORE] > 0)

    # changing the predictions at masked positions changes neither the loss nor any parameter gradient
    def loss_and_grads(noise):
        model.zero_grad()
        loss, _, _ = lm_loss(Probe(model, noise), batch)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()]

    masked = (labels == IGNORE).unsqueeze(-1).float()
    l0, g0 = loss_and_grads(torch.zeros(1))
    l1, g1 = loss_and_grads(torch.randn(*labels.shape, tok.vocab_size) * 5 * masked)
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))
    l2, _ = loss_and_grads(torch.randn(*labels.shape, tok.vocab_size) * 5 * (1 - masked))
    assert l2 != pytest.approx(l0, rel=1e-3)  # ...while the assistant positions do matter


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_sft_loss_is_lm_loss_with_the_head_on_labelled_positions_only(tok, method):
    """The speed path of SFT's loss (head and softmax on labelled positions) gives lm_loss's value and gradients."""
    from genforge.train.sft import PEFTConfig, prepare_model, sft_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, width=32, head_dim=16, max_seq_len=128))
    module = prepare_model(model, PEFTConfig(method=method, num_virtual_tokens=4), seed=0)
    batch = collate(encode_conversations(tok, CONVS, seq_len=100).examples, tok.pad_id)
    params = [p for p in module.parameters() if p.requires_grad]

    def run(fn):
        module.zero_grad()
        loss, count, _ = fn(module, batch)
        loss.backward()
        return float(loss.detach()), int(count), [p.grad.clone() for p in params]

    (l0, n0, g0), (l1, n1, g1) = run(lm_loss), run(sft_loss)
    assert n0 == n1 > 0
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))


def test_sft_batches_are_pure_and_cover_an_epoch(tok):
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(10)]
    enc = encode_conversations(tok, convs, seq_len=120)
    data = SFTData(enc.examples, batch_size=2, pad_id=tok.pad_id, seed=3)
    a, b = data.get_batch(4, 0, 0, 1), data.get_batch(4, 0, 0, 1)
    assert torch.equal(a["input_ids"], b["input_ids"])

    def answers(batch):
        return [tok.decode(row.tolist()).split("a")[-1] for row in batch["input_ids"]]

    epoch0 = [x for s in range(5) for x in answers(data.get_batch(s, 0, 0, 1))]
    assert sorted(epoch0, key=int) == [str(i) for i in range(10)]  # every example once per epoch
    epoch1 = [x for s in range(5, 10) for x in answers(data.get_batch(s, 0, 0, 1))]
    assert sorted(epoch1, key=int) == sorted(epoch0, key=int) and epoch1 != epoch0  # reshuffled
    # grouped by length: still every example once per epoch, and each micro-batch holds similar lengths
    mixed = [[{"role": "user", "content": "x " * (1 + 7 * (i % 4))}, {"role": "assistant", "content": f"a{i}"}]
             for i in range(64)]
    enc_m = encode_conversations(tok, mixed, seq_len=120)
    grouped = SFTData(enc_m.examples, batch_size=4, pad_id=tok.pad_id, seed=0, group_by_length=True)
    plain = SFTData(enc_m.examples, batch_size=4, pad_id=tok.pad_id, seed=0)
    assert sorted(grouped._perm(0).tolist()) == list(range(64))
    width = [sum(d.get_batch(s, 0, 0, 1)["input_ids"].numel() for s in range(16)) for d in (grouped, plain)]
    assert width[0] < 0.8 * width[1]  # less padding
    # 2 ranks x 1 micro-batch see the same examples as 1 rank x 2 micro-batches
    two = SFTData(enc.examples, batch_size=1, pad_id=tok.pad_id, seed=3, grad_accum=2)
    one = SFTData(enc.examples, batch_size=1, pad_id=tok.pad_id, seed=3)
    assert [answers(two.get_batch(1, m, 0, 1)) for m in (0, 1)] == [answers(one.get_batch(1, 0, r, 2)) for r in (0, 1)]


def test_truncation_keeps_or_drops_examples(tok):
    long = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]
    enc = encode_conversations(tok, [CONVS[0], long], seq_len=24)
    assert enc.dropped == 1 and len(enc.examples) == 1
    with pytest.raises(DataError, match="raise data.seq_len"):
        encode_conversations(tok, [long], seq_len=24)


# ---------------------------------------------------------------------------------------- data errors
@pytest.mark.parametrize("line, msg", [
    ({"prompt": "hi"}, "missing field 'response'"),
    ({"prompt": "hi", "response": "  "}, 'empty "response"'),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, "empty assistant turn"),
    ("not json", "invalid JSON"),
    ({"prompt": "hi", "response": 3}, '"response" must be a string'),
])
def test_bad_rows_name_file_and_line(tmp_path, line, msg):
    f = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "ok", "response": "fine"}, "", line])
    with pytest.raises(DataError) as e:
        read_conversations(str(f))
    assert f"{f}:3:" in str(e.value) and msg in str(e.value)


def test_both_formats_read(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b", "system": "s", "task": "x"},
                                           {"messages": CONVS[1]}])
    convs = read_conversations(str(f))
    assert convs[0] == [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}]
    assert convs[1] == CONVS[1]
    assert len(read_conversations(str(f), tasks=["x"])) == 1


# ---------------------------------------------------------------------------------------- smoke runs
def _cfg(tmp_path, base_ckpt, data, method, steps=30):
    from genforge.config import load_config
    from genforge.train.sft import SFTConfig

    return load_config(SFTConfig, None, {
        "init_from": str(base_ckpt), "out_dir": str(tmp_path / method), "data.train": str(data),
        "data.seq_len": 64, "peft.method": method, "peft.r": 4, "train.max_steps": steps, "train.micro_batch": 8,
        "train.warmup_steps": 3, "train.log_every": 1, "train.progress": False, "train.lr": 3e-3,
        "train.weight_decay": 0.0})


def test_full_sft_smoke_loss_falls_and_checkpoint_round_trips(tmp_path, base_ckpt):
    from genforge.checkpoint import load_checkpoint
    from genforge.train.sft import main
    from genforge.train.trainer import read_metrics

    data = write_jsonl(tmp_path / "train.jsonl", [r for r in make_tasks(1, 40) if r["task"] == "add"])
    result = main(_cfg(tmp_path, base_ckpt, data, "full"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "full")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert result["trainable_percent"] == pytest.approx(100.0)
    ckpt = Path(result["checkpoint"])
    model, tok, meta = load_checkpoint(ckpt)
    assert meta["stage"] == "sft" and meta["method"] == "full"
    trained = torch.load(ckpt / "trainer_state.pt", weights_only=False)["model"]
    ref = GPT(model.config)
    ref.load_state_dict(trained)
    x = torch.tensor([tok.encode_chat([{"role": "user", "content": "What is 2 plus 2?"}], True)[0]])
    torch.testing.assert_close(model(x), ref.eval()(x))
    base, _, _ = load_checkpoint(base_ckpt)
    assert not torch.allclose(model(x), base(x))


def test_lora_sft_saves_a_peft_adapter_that_reloads(tmp_path, base_ckpt):
    from genforge.checkpoint import load_checkpoint
    from genforge.model.peft import load_adapter
    from genforge.train.sft import main, run_sft

    data = write_jsonl(tmp_path / "train.jsonl", make_tasks(2, 10))
    cfg = _cfg(tmp_path, base_ckpt, data, "lora", steps=6)
    result = main(cfg)
    folder = Path(result["checkpoint"])
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert 0 < result["trainable_percent"] < 10
    assert result["train_memory_mib"] > 0
    # the same run in memory vs the saved adapter loaded onto the base
    model, tok, _ = load_checkpoint(base_ckpt)
    cfg.out_dir = str(tmp_path / "lora2")
    trained, _ = run_sft(model, tok, read_conversations(str(data)), cfg)
    reloaded = load_adapter(load_checkpoint(base_ckpt)[0], folder)
    x = torch.tensor([tok.encode_chat([{"role": "user", "content": "What is 2 plus 2?"}], True)[0]])
    torch.testing.assert_close(reloaded(x), trained.eval()(x))


def test_recipes_parse():
    from genforge.config import load_config
    from genforge.train.sft import METHODS, SFTConfig

    recipes = sorted(Path(__file__).resolve().parents[2].glob("recipes/sft*.yaml"))
    assert recipes
    for r in recipes:
        assert load_config(SFTConfig, r).peft.method in METHODS


def test_cli_sft_reports_errors_in_one_line(tmp_path, base_ckpt, capsys):
    from genforge.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "only a prompt"}])
    code = main(["sft", f"init_from={base_ckpt}", f"out_dir={tmp_path / 'out'}", f"data.train={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: missing field 'response'" in err and "Traceback" not in err
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a", "response": "b"}])
    code = main(["sft", f"init_from={base_ckpt}", f"out_dir={tmp_path / 'out'}", f"data.train={good}",
                 "peft.method=lorax"])
    assert code == 2 and "peft.method='lorax'" in capsys.readouterr().err


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def _bad_input(kind: str, tmp_path, monkeypatch):
    """A bad `data.train` of the given kind and the file its error must name (issue 12, case 7)."""
    import gzip
    import shutil
    import sys

    import genforge.io as gio

    good = [{"prompt": "a", "response": "b"}] * 50
    if kind == "invalid_utf8":
        p = tmp_path / "latin1.jsonl"
        p.write_bytes('{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1"))
        return p, p
    if kind in ("png_named_jsonl", "png"):
        p = tmp_path / ("image.jsonl" if kind == "png_named_jsonl" else "image.png")
        p.write_bytes(PNG)
        return p, p
    if kind == "executable_named_jsonl":
        p = tmp_path / "prog.jsonl"
        shutil.copy(sys.executable, p)
        return p, p
    if kind == "executable":
        return Path(sys.executable), Path(sys.executable)
    if kind == "folder":
        d = tmp_path / "mixed"
        d.mkdir()
        write_jsonl(d / "a_good.jsonl", good)
        (d / "b_bad.jsonl").write_bytes(PNG)
        return d, d / "b_bad.jsonl"
    if kind == "truncated_gz":
        p = tmp_path / "cut.jsonl.gz"
        blob = gzip.compress(("".join(json.dumps(r) + "\n" for r in good)).encode())
        p.write_bytes(blob[: len(blob) // 2])
        return p, p
    if kind == "unreadable":
        p = write_jsonl(tmp_path / "locked.jsonl", good)
        real_open = open

        def guarded_open(f, *a, **k):  # root ignores chmod 000: refuse the way the OS would for a user
            if Path(f) == p:
                raise PermissionError(13, "Permission denied", str(f))
            return real_open(f, *a, **k)

        monkeypatch.setattr(gio, "open", guarded_open, raising=False)
        return p, p
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["invalid_utf8", "png_named_jsonl", "png", "executable_named_jsonl", "executable",
                                  "folder", "truncated_gz", "unreadable"])
def test_cli_sft_bad_input_files_are_one_line_errors(kind, tmp_path, base_ckpt, capsys, monkeypatch):
    from genforge.cli import main

    arg, named = _bad_input(kind, tmp_path, monkeypatch)
    code = main(["sft", f"init_from={base_ckpt}", f"out_dir={tmp_path / 'out'}", f"data.train={arg}",
                 "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(named) in lines[0], err
