"""Progress output: a bar in place on a terminal, a bounded number of plain lines in a log."""

import io

import pytest

from genforge.progress import Progress, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("GENFORGE_PROGRESS", raising=False)


def test_log_file_gets_a_line_every_ten_percent_and_no_carriage_returns():
    out = io.StringIO()
    bar = Progress(total=100_000, desc="pretrain", unit="step", file=out)
    for i in range(100_000):
        bar.update(1)
        if i % 1000 == 0:
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 10 <= len(lines) <= 11, lines  # 10 %, 20 %, ..., 100 %: bounded whatever the step count
    assert lines[0].startswith("[pretrain] 10,000/100,000 step (10%) | ") and "left" in lines[0]
    assert "loss=" in lines[0] and ("step/s" in lines[0] or "s/step" in lines[0])
    assert lines[-1].startswith("[pretrain] 100,000/100,000 step (100%)") and lines[-1].count("done") == 1


def test_resumed_run_counts_from_its_start():
    out = io.StringIO()
    with Progress(total=1000, initial=500, desc="sft", file=out) as bar:
        for _ in range(500):
            bar.update()
    lines = out.getvalue().splitlines()
    assert [ln.split("(")[1].split(")")[0] for ln in lines] == ["60%", "70%", "80%", "90%", "100%"]


def test_unknown_total_prints_heartbeats_and_a_final_line():
    out = io.StringIO()
    for _ in progress(iter(range(5000)), desc="clean", unit="doc", file=out):
        pass
    assert out.getvalue().splitlines() == [out.getvalue().strip()]  # one final line: a fast run needs no more
    assert "5,000 doc" in out.getvalue() and "done" in out.getvalue()
    out = io.StringIO()
    with Progress(desc="clean", unit="doc", file=out, heartbeat_s=0.0) as bar:
        for _ in range(3):
            bar.update()
    assert len(out.getvalue().splitlines()) == 4  # three heartbeats and the final line


def test_progress_takes_len_and_says_stopped_when_cut_short():
    out = io.StringIO()
    for i in progress(list(range(50)), desc="eval", file=out):
        if i == 30:
            break
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[eval] 5/50 it (10%)")
    assert lines[-1].startswith("[eval] 30/50") and lines[-1].endswith("stopped")


def test_terminal_gets_a_bar_drawn_in_place():
    out = _Terminal()
    with Progress(total=50, desc="pretrain", file=out) as bar:
        for _ in range(50):
            bar.update()
    assert "\r" in out.getvalue() and "50/50" in out.getvalue()


def test_off_and_overrides(monkeypatch):
    out = io.StringIO()
    with Progress(total=10, file=out, enabled=False) as bar:
        bar.update(10)
    assert out.getvalue() == ""
    monkeypatch.setenv("GENFORGE_PROGRESS", "lines")
    term = _Terminal()
    with Progress(total=10, file=term) as bar:
        bar.update(10)
    assert "\r" not in term.getvalue() and "10/10" in term.getvalue()
    monkeypatch.setenv("GENFORGE_PROGRESS", "loud")
    with pytest.raises(ValueError, match="GENFORGE_PROGRESS"):
        Progress(total=10, file=out)
