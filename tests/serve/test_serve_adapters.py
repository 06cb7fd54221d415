"""Per-request LoRA adapters: load/unload endpoints, `model` picks the adapter, a batch mixes adapters, and each
row gives the tokens of the merged model (base + B A folded into W)."""

from __future__ import annotations

import copy
import threading

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.model.peft import apply_lora, merge_and_unload, save_lora
from genforge.serve.app import create_app
from genforge.serve.testing import running_server
from tests.serve.test_serve import assert_error


def _adapter(model, folder, seed: int, name: str):
    """A LoRA with random (non-zero) B saved as a peft folder; returns the merged model it stands for."""
    m = copy.deepcopy(model)
    apply_lora(m, r=4, alpha=8.0, target_modules=("q_proj", "v_proj", "up_proj"), adapter_name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    save_lora(m, folder, adapter_name=name)
    return merge_and_unload(m).eval()


def test_adapters_mixed_in_one_batch_match_merged_models(tiny, tmp_path):
    model, tok = tiny
    base = copy.deepcopy(model)
    merged = {n: _adapter(model, tmp_path / n, s, n) for s, n in enumerate(["math", "poem"])}
    app = create_app(base, tok, "tiny", max_batch=8)
    prompt = "the cat sat on the"
    ids = tok.encode(prompt, add_bos=True)
    with running_server(app) as url:
        for name in merged:
            r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(tmp_path / name)})
            assert r.status_code == 200, r.text
        listed = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert listed == ["tiny", "math", "poem"]
        out: dict[str, str] = {}

        def ask(name: str) -> None:
            body = {"model": name, "prompt": prompt, "max_tokens": 20, "temperature": 0}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            out[name] = r.json()["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(n,)) for n in ["tiny", "math", "poem", "math"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        steps = app.state.batcher.stats["steps"]
        assert steps < 3 * 20  # the rows of different adapters shared decode steps
        # unloaded: the name is gone, the base is unchanged
        assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "poem"}).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json={"model": "poem", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
        again = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 20,
                                                          "temperature": 0}).json()["choices"][0]["text"]
    stops = [tok.end_id, tok.eos_id]
    want = {"tiny": Engine(model).generate([ids], SamplingParams(max_new_tokens=20), stop_ids=stops)[0]}
    for name, m in merged.items():
        want[name] = Engine(m).generate([ids], SamplingParams(max_new_tokens=20), stop_ids=stops)[0]
    assert len({tuple(v) for v in want.values()}) == 3  # the adapters do change the text
    for name, text in out.items():
        assert text == tok.decode(want[name]), name
    assert again == out["tiny"]


def test_adapter_endpoint_errors(tiny, tmp_path):
    model, tok = tiny
    with TestClient(create_app(copy.deepcopy(model), tok, "tiny")) as c:
        assert_error(c.post("/v1/load_lora_adapter", json={"lora_name": "a"}), 400, "lora_path")
        assert_error(c.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tmp_path / "no")}),
                     400, "lora_path")
        assert_error(c.post("/v1/load_lora_adapter", json={"lora_name": "tiny", "lora_path": str(tmp_path)}),
                     400, "lora_name")
        (tmp_path / "junk").mkdir()
        assert_error(c.post("/v1/load_lora_adapter", json={"lora_name": "j", "lora_path": str(tmp_path / "junk")}),
                     400, "lora_path")
        assert_error(c.post("/v1/unload_lora_adapter", json={"lora_name": "nope"}), 404, "lora_name")
    with TestClient(create_app(copy.deepcopy(model), tok, "tiny", batching="static")) as c:
        assert_error(c.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tmp_path)}), 400,
                     code="unsupported")


def test_cli_serves_lora_adapters_by_name(tiny, tmp_path):
    from genforge.checkpoint import save_checkpoint
    from genforge.cli import COMMANDS, collect_overrides
    from genforge.commands.serve import ServeConfig, build_app
    from genforge.config import load_config
    from genforge.errors import ConfigError

    model, tok = tiny
    save_checkpoint(tmp_path / "ckpt", model, tok)
    merged = _adapter(model, tmp_path / "math", 0, "math")

    def parse(*words: str) -> ServeConfig:
        return load_config(ServeConfig, None, collect_overrides(ServeConfig, COMMANDS["serve"].positional, list(words)))

    app = build_app(parse(str(tmp_path / "ckpt"), f"lora=[math={tmp_path / 'math'}]", "api_key=k"))
    ids = tok.encode("hello", add_bos=True)
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"model": "math", "prompt": "hello", "max_tokens": 10, "temperature": 0},
                   headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.json()["model"] == "math"
    want = Engine(merged).generate([ids], SamplingParams(max_new_tokens=10), stop_ids=[tok.end_id, tok.eos_id])[0]
    assert r.json()["choices"][0]["text"] == tok.decode(want)
    with pytest.raises(ConfigError, match="NAME=FOLDER"):
        build_app(parse(str(tmp_path / "ckpt"), "lora=[math]"))
