"""The web chat page, driven end to end in headless Chromium (Playwright) against a real server.

Needs `pip install playwright` and a Chromium binary (Debian: `apt-get install -y chromium`; or
`python -m playwright install chromium`). Skips, saying why, only when no browser can be launched.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.serve.app import create_app
from genforge.serve.testing import running_server, tiny_model_and_tokenizer

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for name in (os.environ.get("GENFORGE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None  # let Playwright try its own downloaded browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs `pip install playwright`")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=_chromium(), args=CHROME_ARGS)
        except Exception as e:  # no binary, or it cannot start here
            pytest.skip(f"cannot launch Chromium ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "install it with `apt-get install -y chromium`")
        yield b
        b.close()


class Recorder:
    """The real engine, a little slowed down (so the page is seen mid-stream), recording each batch's prompts."""

    def __init__(self, model, delay: float = 0.03):
        self.engine, self.delay, self.prompts = Engine(model), delay, []

    def __call__(self, prompts, params, **kw):
        self.prompts.append(prompts)
        inner = kw["stop_fn"]

        def slow(row, tokens):
            time.sleep(self.delay)
            return inner(row, tokens)
        return self.engine.generate(prompts, params, **{**kw, "stop_fn": slow})


@pytest.fixture(scope="module")
def served():
    model, tok = tiny_model_and_tokenizer(max_seq_len=128)
    rec = Recorder(model)
    with running_server(create_app(model, tok, "tiny", generate_fn=rec)) as url:
        yield url, model, tok, rec


def test_chat_page_streams_a_reply_and_keeps_history(browser, served):
    url, model, tok, rec = served
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    assert "tiny" in page.inner_text("#model-name")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.fill("#prompt", "hello there")
    page.click("#send")
    # part of the reply is on screen while the stream is still open: it really streams
    page.wait_for_function("document.body.dataset.state === 'streaming' && "
                           "(document.querySelector('.msg.assistant .text')?.textContent || '').length > 0",
                           timeout=10_000)
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=20_000)
    shown = page.inner_text(".msg.assistant .text")
    expected = Engine(model).generate(
        [tok.encode(tok.render_chat([{"role": "user", "content": "hello there"}], add_generation_prompt=True))],
        SamplingParams(max_new_tokens=12), stop_ids=[tok.end_id, tok.eos_id])[0]
    assert page.eval_on_selector(".msg.assistant .text", "e => e.textContent") == tok.decode(expected)
    assert shown.strip()
    assert "12 tokens" in page.inner_text(".msg.assistant .meta")  # usage from the final chunk

    # a second turn sends the whole conversation
    page.fill("#prompt", "and then?")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .meta').length === 2", timeout=20_000)
    sent = tok.decode(rec.prompts[-1][0], skip_special=False)
    assert "hello there" in sent and "and then?" in sent and tok.decode(expected, skip_special=False) in sent
    assert [e.get_attribute("class") for e in page.query_selector_all(".msg")] == \
        ["msg user", "msg assistant", "msg user", "msg assistant"]

    # the history survives a reload (localStorage), and "New chat" clears it
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert len(page.query_selector_all(".msg")) == 4
    page.click("#new-chat")
    assert page.query_selector_all(".msg") == []

    # a server-side error is shown to the user
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "too long")
    page.click("#send")
    page.wait_for_selector(".msg.error", timeout=10_000)
    assert "context" in page.inner_text(".msg.error")
    assert errors == []
    page.close()
