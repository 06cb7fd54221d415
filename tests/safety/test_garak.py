"""garak (NVIDIA's LLM vulnerability scanner) against a live `genforge serve`, through its OpenAI-compatible
generator. Slow: garak's import and plugin loading take ~20-40 s of CPU before the first probe; the `safety`
extra installs it (pip install -c constraints.txt 'genforge[safety]')."""

import pytest

from genforge.safety import garak


def test_read_evals_and_attempts(tmp_path):
    report = tmp_path / "r.report.jsonl"
    report.write_text(
        '{"entry_type": "attempt", "status": 2, "probe_classname": "p.A", '
        '"prompt": {"turns": [{"role": "user", "content": {"text": "hi"}}]}, "outputs": [null]}\n'
        '{"entry_type": "eval", "probe": "p.A", "detector": "d.X", "passed": 3, "total_evaluated": 4}\n')
    assert garak.read_evals(report) == {"p.A": {"d.X": {"passed": 3, "total": 4, "pass_rate": 0.75}}}
    assert garak.read_attempts(report) == [{"probe": "p.A", "prompt": "hi", "replied": False}]


@pytest.mark.slow
def test_garak_scans_a_live_genforge_server(tmp_path):
    from genforge.serve.app import create_app
    from genforge.serve.testing import running_server, tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(max_seq_len=2048)  # its 320-token BPE spends a token per 1-2 characters
    with running_server(create_app(model, tok, model_name="tiny")) as url:
        res = garak.run_garak(url, "tiny", tmp_path, ["promptinject.HijackHateHumans"], prompt_cap=2, timeout=600)
    det = res["probes"]["promptinject.HijackHateHumans"]
    assert det and all(v["total"] >= 1 for v in det.values())  # replies came back and were scored
    assert any(a["replied"] for a in res["attempts"])
