"""LLM-as-judge: verdict bookkeeping on stub judges, and the HTTP judge's failure modes."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from genforge.errors import GenforgeError
from genforge.eval.judge import EndpointJudge, ModelJudge, Pair, pairwise, parse_verdict, verbosity_probe
from genforge.eval.lm import StubLM


class FnJudge:
    def __init__(self, fn):
        self.fn, self.prompts = fn, []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.fn(p) for p in prompts]


def _responses(prompt):
    a = prompt.split("Response A: ", 1)[1].split("\n\nResponse B: ")[0]
    b = prompt.split("Response B: ", 1)[1].split("\n\nWhich response")[0]
    return a, b


PAIRS = [Pair("What is 2 plus 2?", "The answer is 4.", "It is 5, I believe, after careful thought."),
         Pair("Capital of Arden?", "Millford, the old town on the river.", "Oakmere."),
         Pair("Who keeps bees?", "Mara keeps bees in Oakmere.", "Tobin.")]


def test_parse_verdict():
    assert parse_verdict(" A") == "A" and parse_verdict("Response B is better") == "B"
    assert parse_verdict("B. Because A is wrong") == "B"
    assert parse_verdict("neither") is None and parse_verdict("") is None


def test_position_biased_judge_is_caught():
    judge = FnJudge(lambda p: "A")
    res = pairwise(judge, PAIRS)
    assert len(judge.prompts) == 2 * len(PAIRS)  # every pair asked in both orders
    assert res["first_position_rate"] == 1.0 and res["bias_first"] == 1.0 and res["bias_second"] == 0.0
    assert res["consistency"] == 0.0  # the winner flips with the order every time
    assert res["win_rate_1"] == 0.5  # all order-dependent verdicts count as ties
    assert all(i["winner"] == "tie" for i in res["items"])


def test_content_judge_is_consistent():
    good = {"The answer is 4.", "Millford, the old town on the river.", "Mara keeps bees in Oakmere."}
    judge = FnJudge(lambda p: "A" if _responses(p)[0] in good else "B")
    res = pairwise(judge, PAIRS)
    assert res["consistency"] == 1.0 and res["bias_first"] == 0.0 and res["first_position_rate"] == 0.5
    assert res["win_rate_1"] == 1.0 and [i["winner"] for i in res["items"]] == ["1", "1", "1"]
    assert res["longer_preferred"] == pytest.approx(2 / 3)  # pair 1's winner is the shorter one


def test_length_bias_measured():
    longer = FnJudge(lambda p: "A" if len(_responses(p)[0]) > len(_responses(p)[1]) else "B")
    res = pairwise(longer, PAIRS)
    assert res["longer_preferred"] == 1.0 and res["consistency"] == 1.0
    qa = [(p.question, p.response_1) for p in PAIRS]
    assert verbosity_probe(longer, qa)["padded_win_rate"] == 1.0
    assert verbosity_probe(FnJudge(lambda p: "A"), qa)["padded_win_rate"] == 0.5  # position bias is not length bias


def test_invalid_verdicts_counted():
    res = pairwise(FnJudge(lambda p: "I cannot decide"), PAIRS[:1])
    assert res["invalid_rate"] == 1.0 and res["items"][0]["winner"] == "tie"


def test_model_judge_uses_the_lm_greedily():
    lm = StubLM(respond=lambda p, i, rng: " B\nextra")
    judge = ModelJudge(lm)
    assert judge.complete(["Verdict:"]) == [" B"]
    assert lm.calls[0][1]["temperature"] == 0.0


# ---- the OpenAI-compatible endpoint -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_errors_fast():
    judge = EndpointJudge(f"http://127.0.0.1:{_free_port()}", timeout=2.0)  # nothing listens there
    t0 = time.time()
    with pytest.raises(GenforgeError, match="unreachable"):
        judge.complete(["Verdict:"])
    assert time.time() - t0 < 2.0


def test_stalled_endpoint_times_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # the kernel completes the handshake; nobody ever answers
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", timeout=0.5)
        t0 = time.time()
        with pytest.raises(GenforgeError, match=r"within 0.5s"):
            judge.complete(["Verdict:"])
        assert time.time() - t0 < 3.0
    finally:
        srv.close()


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, body, self.headers.get("Authorization")))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        reply = {"choices": [{"message": {"role": "assistant", "content": "A"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_round_trip():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        judge = EndpointJudge(base, model="judge-1", api_key="k", timeout=5.0)
        res = pairwise(judge, PAIRS[:1])
        assert res["bias_first"] == 1.0
        path, body, auth = _Handler.seen[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer k"
        assert body["model"] == "judge-1" and body["temperature"] == 0.0
        assert body["messages"][0]["role"] == "user" and "Response A:" in body["messages"][0]["content"]
        assert EndpointJudge(base + "/v1/").url == base + "/v1/chat/completions"
        with pytest.raises(GenforgeError, match="HTTP 500"):
            EndpointJudge(base, model="broken", timeout=5.0).complete(["x"])
    finally:
        server.shutdown()
        server.server_close()


# ---- judging two eval runs ----------------------------------------------------------------------------------

def test_judge_runs_compares_outputs_of_two_runs(tmp_path):
    from genforge.eval.compare import judge_runs, judge_table
    from genforge.eval.harness import evaluate
    from genforge.eval.tasks import resolve_tasks

    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Question {i}?", "answer": str(i)}) + "\n" for i in range(4)))
    tasks = resolve_tasks(str(f))
    evaluate(StubLM(respond=lambda p, i, rng: "meh"), tasks, out_dir=tmp_path / "a")
    evaluate(StubLM(respond=lambda p, i, rng: "a correct answer"), tasks, out_dir=tmp_path / "b")
    judge = FnJudge(lambda p: "A" if "correct" in _responses(p)[0] else "B")
    verdicts = judge_runs(tmp_path / "a", tmp_path / "b", judge, limit=3)
    assert verdicts == {"qa": {"n": 3, "b_win_rate": 1.0, "consistency": 1.0, "first_position_rate": 0.5,
                               "longer_preferred": 1.0}}
    assert "Question 0?" in judge.prompts[0]  # the judge sees the original question, not a few-shot prompt
    assert "qa" in judge_table(verdicts)
    # through the CLI, an unreachable judge fails with a one-line error, not a hang
    from genforge.cli import run

    with pytest.raises(GenforgeError, match="unreachable"):
        run(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"),
             f"judge_url=http://127.0.0.1:{_free_port()}", "judge_timeout=1"])


def test_loglik_judge_always_gives_a_verdict_and_calibration_cancels_position():
    """A forced-choice judge reads ' A' vs ' B': it never fails to answer. This stub prefers position A by 2 nats and
    the better (longer-named 'good') response by 1 nat: raw verdicts all say A (every pair order-dependent), the
    position-calibrated ones find the better response every time."""
    from genforge.eval.judge import LoglikJudge, calibrated_winners

    def score(context, continuation):
        a, b = _responses(context)
        good = "A" if "good" in a else "B"
        return (2.0 if continuation == " A" else 0.0) + (1.0 if continuation == f" {good}" else 0.0)

    judge = LoglikJudge(StubLM(score=score))
    pairs = [Pair("q", "good answer", "bad answer"), Pair("q", "bad answer", "good answer")]
    res = pairwise(judge, pairs)
    assert res["invalid_rate"] == 0.0 and res["bias_first"] == 1.0 and res["consistency"] == 0.0
    assert judge.margins == [3.0, 1.0, 1.0, 3.0]
    assert calibrated_winners(judge.margins) == ["1", "2"]  # the good response, whichever it is
    assert calibrated_winners([2.0, 2.0]) == ["tie"]  # a pure position preference cancels
