"""lm-evaluation-harness against a live `genforge serve`: `lm_eval --model local-completions` on local task files.

A multiple-choice task (log-likelihoods through `echo` + `logprobs` + `max_tokens: 1`, as lm-eval asks for them)
must give the accuracy -- and the per-option log-likelihoods -- that `genforge eval` computes in-process on the
same items; a generate-until task must give the server's own greedy text. No hub access: the tasks are YAML
files over JSONL items written here, the model a tiny random checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from genforge.checkpoint import save_checkpoint  # noqa: E402
from genforge.eval.harness import EvalConfig, evaluate  # noqa: E402
from genforge.eval.lm import GenforgeLM  # noqa: E402
from genforge.eval.tasks import resolve_tasks  # noqa: E402
from genforge.infer.engine import Engine  # noqa: E402
from genforge.infer.sampling import SamplingParams  # noqa: E402
from genforge.serve.testing import tiny_model_and_tokenizer  # noqa: E402
from genforge.text import cut_at_stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["cat", "dog", "mat", "park", "lamp", "map", "kite", "world", "Alice", "Bob", "Brightwater", "red"]

MC_YAML = """task: gf_tinymc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}\\nAnswer:"
doc_to_choice: options
doc_to_target: gold_index
metric_list:
  - metric: acc
"""
GEN_YAML = """task: gf_tinygen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _items(n_mc: int = 16, n_gen: int = 4) -> tuple[list[dict], list[dict]]:
    mc = []
    for i in range(n_mc):
        opts = [WORDS[(i + j * 5) % len(WORDS)] for j in range(3 + i % 2)]
        mc.append({"prompt": f"Q{i}: which one is {WORDS[i % len(WORDS)]}?", "options": opts,
                   "gold_index": i % len(opts)})
    gen = [{"prompt": f"the {w} sat on the", "answer": "mat"} for w in WORDS[:n_gen]]
    return mc, gen


def _bos_tokenizer_folder(ckpt: Path, tok, out: Path) -> Path:
    """The checkpoint's tokenizer for transformers, adding BOS the way genforge does.

    lm-eval tokenizes locally (`add_bos_token=True`), so the HF tokenizer must prepend <|bos|>. The exported
    tokenizer does that itself once its post-processor template is in place (issue 21, item 1); until then
    (and only then) this writes a copy with the template.
    """
    hf = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    if hf("x").input_ids[:1] == [tok.bos_id]:
        return ckpt
    from tokenizers.processors import TemplateProcessing

    raw = tok.hf.__class__.from_str(tok.hf.to_str())
    raw.post_processor = TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                            special_tokens=[("<|bos|>", tok.bos_id)])
    out.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (out / f.name).write_bytes(f.read_bytes())
    (out / "tokenizer.json").write_text(raw.to_str())
    return out


@pytest.mark.slow
def test_lm_eval_local_completions_matches_genforge_eval(tmp_path):
    model, tok = tiny_model_and_tokenizer(max_seq_len=128)
    ckpt = tmp_path / "tiny"
    save_checkpoint(ckpt, model, tok)
    mc, gen = _items()
    (tmp_path / "tinymc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (tmp_path / "tinygen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gf_tinymc.yaml").write_text(MC_YAML.format(data=tmp_path / "tinymc.jsonl"))
    (tasks / "gf_tinygen.yaml").write_text(GEN_YAML.format(data=tmp_path / "tinygen.jsonl"))
    hf_tok = _bos_tokenizer_folder(ckpt, tok, tmp_path / "hf_tokenizer")

    # genforge eval's log-likelihood accuracy on the same items (a base model: no chat template)
    want = evaluate(GenforgeLM(model, tok, chat=False), resolve_tasks(str(tmp_path / "tinymc.jsonl"), ""),
                    cfg=EvalConfig(option_order=False, chat=False))["tasks"]["tinymc"]
    assert want["strategy"] == "loglikelihood"

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "genforge", "serve", str(ckpt), f"port={port}",
                               "model_name=tiny", "log_level=warning"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        out = tmp_path / "lm_eval_out"
        args = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
                f"base_url=http://127.0.0.1:{port}/v1/completions,model=tiny,tokenizer_backend=huggingface,"
                f"tokenizer={hf_tok},add_bos_token=True,max_length=128,num_concurrent=1,max_retries=1",
                "--tasks", "gf_tinymc,gf_tinygen", "--include_path", str(tasks), "--output_path", str(out),
                "--log_samples"]
        run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(10)

    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert results["gf_tinymc"]["acc,none"] == pytest.approx(want["score"], abs=1e-9)
    # not only the accuracy: every option's log-likelihood agrees with genforge's in-process scoring
    samples = [json.loads(line) for line in next(out.rglob("samples_gf_tinymc_*.jsonl")).read_text().splitlines()]
    assert len(samples) == len(mc)
    lm = GenforgeLM(model, tok, chat=False)
    for s in samples:
        row = mc[s["doc_id"]]
        ref = [ll for ll, _, _ in lm.loglikelihood([(row["prompt"] + "\nAnswer:", " " + o) for o in row["options"]])]
        got = [float(r[0][0]) for r in s["resps"]]  # the samples file writes them as strings
        assert got == pytest.approx(ref, abs=1e-3)
    # generate-until: lm-eval's text is the server's greedy continuation of BOS + prompt, cut at the newline
    gsamples = [json.loads(line) for line in next(out.rglob("samples_gf_tinygen_*.jsonl")).read_text().splitlines()]
    engine = Engine(model)
    for s in gsamples:
        ids = tok.encode(gen[s["doc_id"]]["prompt"], add_bos=True)
        new = engine.generate([ids], SamplingParams(max_new_tokens=10), stop_ids=[tok.eos_id, tok.end_id])[0]
        text = tok.decode(new)
        assert s["resps"][0][0] == cut_at_stop(text, ["\n"])[0]
