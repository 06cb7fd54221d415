"""The README is executable: every command in its ```bash and ```python blocks runs here, in order.

The working directory is the session's smoke run folder (tests/conftest.py `smoke_run`): runs/smoke is a finished
`genforge speedrun size=smoke` and runs/tiny links to it, so the README's `runs/tiny/...` paths exist. `genforge`
runs as `python -m genforge` and `torchrun` as the venv's, both importing this checkout.

`genforge serve` lines start a server in the background; it stays up (serving the curl lines and python client
blocks that follow) until the next serve line or the end of the README. Servers bind a free port instead of the
README's 8000 / 9000 (the clients' URLs are rewritten to match), so a busy port cannot fail the test.

A line that cannot run inside the test suite is on `ALLOWED` with its reason; any other command fails the test,
so a new README command must be runnable here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# how long one README command may take (s); the speedrun line only finds every stage done
TIMEOUT = {"genforge": 600, "torchrun": 300, "curl": 120, "python": 300}
HEALTH_TIMEOUT = 60.0


def _make_target_exists(argv: list[str], _tmp: Path) -> None:
    # `make speedrun` is the 15-minute tiny run and `make test` is this suite: check the target exists instead
    assert len(argv) == 2, f"expected `make TARGET`, got {shlex.join(argv)}"
    r = subprocess.run(["make", "-n", argv[1]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"`make -n {argv[1]}`: no such target?\n{(r.stdout + r.stderr)[-2000:]}"


def _skip(_argv: list[str], _tmp: Path) -> None:
    pass


# first word -> what the test does instead of running the line, and why
ALLOWED = {
    "make": _make_target_exists,  # make speedrun / make test: too long to nest in a test; `make -n` checks the target
    "source": _skip,  # `source .venv/bin/activate`: a shell builtin; the test calls the venv's python directly
}


@dataclass
class Block:
    lang: str  # bash | python
    text: str
    line: int  # README line of the opening fence


def readme_blocks(text: str) -> list[Block]:
    """Every ```bash and ```python block of the README, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if m and m.group(1) in ("bash", "python"):
            end = lines.index("```", i + 1)
            blocks.append(Block(m.group(1), "\n".join(lines[i + 1:end]), i + 1))
            i = end
        i += 1
    return blocks


def bash_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(README line, argv) of each command: comments dropped, a quoted string may span lines, `\\` continues."""
    out: list[tuple[int, list[str]]] = []
    buf, start = "", 0
    for n, line in enumerate(block.text.splitlines(), block.line + 1):
        if not buf:
            start = n
        buf = buf + "\n" + line if buf else line
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        try:
            argv = shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        buf = ""
        if argv:
            out.append((start, argv))
    assert not buf, f"README.md:{start}: unterminated command {buf!r}"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str | bytes | None, n: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


class Server:
    """One `genforge serve` line, running in the background on a free port."""

    def __init__(self, argv: list[str], where: str, cwd: Path, env: dict[str, str], ports: dict[int, int]):
        self.where = where
        readme_port = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("port=")), 8000)
        self.port = ports.setdefault(readme_port, _free_port())
        args = [a for a in argv[1:] if not a.startswith("port=")] + [f"port={self.port}"]
        self.log = cwd / f"serve_{self.port}.log"
        self.cmd = shlex.join(argv)
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([PYTHON, "-m", "genforge", *args], cwd=cwd, env=env, stdout=f,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def fail(self, why: str) -> None:
        pytest.fail(f"{self.where}: `{self.cmd}`: {why}\n{_tail(self.log.read_text())}")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"exited with status {self.proc.returncode} before /health answered")
            try:
                if self.get("/health").get("status") == "ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            self.fail(f"/health did not answer within {HEALTH_TIMEOUT:.0f} s")
        # one real completion, so an adapter or draft that loads but cannot generate fails here: the prompt's own
        # log-probs (echo) must be finite, and the model must either write tokens or choose to stop (a smoke-sized
        # chat adapter over a base model may end its turn at once on a plain-text prompt: a real generation)
        model = self.get("/v1/models")["data"][0]["id"]
        plain = {"model": model, "prompt": "Mara lives in", "max_tokens": 8, "temperature": 0}
        try:
            r = self.post("/v1/completions", {**plain, "echo": True, "logprobs": 1})
        except urllib.error.HTTPError as e:
            if e.code != 400:
                raise
            # static batching (speculative decoding) refuses log-probs with a 400: there the plain completion
            # must write tokens
            r = self.post("/v1/completions", plain)
            if r["usage"]["completion_tokens"] < 1:
                self.fail(f"a completion returned no tokens: {r}")
            return
        choice = r["choices"][0]
        scored = [x for x in choice["logprobs"]["token_logprobs"] if x is not None]
        if not scored or not all(math.isfinite(x) for x in scored):
            self.fail(f"the prompt's log-probs are missing or not finite: {r}")
        if r["usage"]["completion_tokens"] < 1 and choice["finish_reason"] != "stop":
            self.fail(f"a completion returned no tokens and did not stop: {r}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run(argv: list[str], where: str, cwd: Path, env: dict[str, str], timeout: float, shown: str | None = None):
    shown = shown or shlex.join(argv)
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{where}: `{shown}` ran past {timeout:.0f} s\n{_tail(e.stdout)}{_tail(e.stderr)}")
    if r.returncode != 0:  # the README's form of the command (what a reader looks for), then its output's tail
        pytest.fail(f"{where}: `{shown}` exited with status {r.returncode}\n{_tail(r.stdout)}{_tail(r.stderr)}")
    return r


def _with_ports(text: str, ports: dict[int, int]) -> str:
    for readme_port, port in ports.items():
        text = text.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
    return text


def test_readme_blocks_are_found():
    """The parser sees the README's blocks (so the slow test below cannot pass by running nothing)."""
    blocks = readme_blocks(README.read_text())
    commands = [argv for b in blocks if b.lang == "bash" for _, argv in bash_commands(b)]
    firsts = {argv[0] for argv in commands}
    assert {"genforge", "torchrun", "curl", "make"} <= firsts
    assert any(argv[:2] == ["genforge", "serve"] for argv in commands)
    assert sum(b.lang == "python" for b in blocks) >= 2


def test_bash_commands_parse_multiline_quotes_and_comments():
    text = "genforge a 'x # y'  # comment\ncurl -d '{\n  \"k\": 1}'\n# only a comment\nmake \\\n  test"
    block = Block("bash", text, 0)
    assert bash_commands(block) == [(1, ["genforge", "a", "x # y"]), (2, ["curl", "-d", '{\n  "k": 1}']),
                                    (5, ["make", "test"])]


def run_readme(text: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """Run every command of a README's bash and python blocks in `cwd`; fail on the first that fails.

    Returns one line per command: its seconds, README line and the command."""
    ports: dict[int, int] = {}
    server: Server | None = None
    ran: list[str] = []
    try:
        for block in readme_blocks(text):
            t0 = time.perf_counter()
            if block.lang == "python":
                where = f"README.md:{block.line}"
                code = _with_ports(block.text, ports)
                r = _run([PYTHON, "-c", code], where, cwd, env, TIMEOUT["python"], shown=f"python block\n{code}")
                if "OpenAI(" in block.text:  # the client block printed a reply and its usage
                    assert "CompletionUsage" in r.stdout, f"{where}: unexpected client output:\n{_tail(r.stdout)}"
                ran.append(f"{time.perf_counter() - t0:6.1f} s  {where} python block")
                continue
            for line, argv in bash_commands(block):
                where, t0 = f"README.md:{line}", time.perf_counter()
                if argv[0] in ALLOWED:
                    ALLOWED[argv[0]](argv, cwd)
                elif argv[:2] == ["genforge", "serve"]:
                    if server is not None:
                        server.stop()
                    server = Server(argv, where, cwd, env, ports)
                    server.wait_healthy()
                elif argv[0] == "genforge":
                    _run([PYTHON, "-m", "genforge", *argv[1:]], where, cwd, env, TIMEOUT["genforge"], shlex.join(argv))
                elif argv[0] == "torchrun":
                    _run([TORCHRUN, *argv[1:]], where, cwd, env, TIMEOUT["torchrun"], shlex.join(argv))
                elif argv[0] == "curl":
                    assert server is not None, f"{where}: a curl line before any `genforge serve` line"
                    # --fail-with-body: an HTTP error status fails the line instead of printing a JSON error
                    cmd = ["curl", "-sS", "--fail-with-body", *(_with_ports(a, ports) for a in argv[1:])]
                    r = _run(cmd, where, cwd, env, TIMEOUT["curl"], shown=shlex.join(cmd))
                    assert '"choices"' in r.stdout or "data: " in r.stdout, f"{where}: no completion:\n{r.stdout}"
                else:
                    pytest.fail(f"{where}: `{shlex.join(argv)}`: unknown command '{argv[0]}'; make it runnable here "
                                "or add it to ALLOWED in tests/test_readme.py with the reason")
                ran.append(f"{time.perf_counter() - t0:6.1f} s  {where} {shlex.join(argv)[:100]}")
    finally:
        if server is not None:
            server.stop()
    return ran


def test_an_unknown_or_failing_command_fails(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with pytest.raises(pytest.fail.Exception, match="unknown command 'rm'"):
        run_readme("```bash\nrm -rf runs   # not on the allowlist\n```\n", tmp_path, env)
    with pytest.raises(pytest.fail.Exception, match=r"README.md:3: `genforge export runs/none runs/x` exited"):
        run_readme("text\n```bash\ngenforge export runs/none runs/x\n```\n", tmp_path, env)


@pytest.mark.slow
def test_every_readme_command_runs(smoke_run):
    ran = run_readme(README.read_text(), smoke_run.root, smoke_run.env)
    assert ran, "no README command ran"
    print("\n".join(["README commands (seconds, README line, command):", *ran]))  # `pytest -s` shows where time goes
