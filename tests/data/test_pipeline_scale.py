"""The pipeline at scale: learned filters vs heuristics, --skip-bad, workers, resume after SIGKILL, the index."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genforge.data.classify import TextClassifier, is_holdout, prf
from genforge.data.dedup import BatchMinHash, RunIndex, jaccard, shingles
from genforge.data.pipeline import CleanConfig, clean_corpus, per_filter_scores, score_against_labels
from genforge.errors import ConfigError, DataError
from genforge.world import generate_world

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny world, cleaned once with the default learned filters (trained on another world)."""
    d = tmp_path_factory.mktemp("tiny")
    generate_world(d / "world", seed=3, size="tiny")
    rep = clean_corpus(d / "world" / "corpus.jsonl", d / "out" / "clean.jsonl", CleanConfig())
    return d, rep


def test_classifiers_match_or_beat_the_rules_on_held_out_planted_docs(tiny):
    _, rep = tiny
    f = rep.filters["filters"]
    for name in ("quality", "harm"):
        clf, base = f[name]["classifier"], f[name]["baseline"]
        assert f[name]["n_heldout_positive"] >= 30, f[name]
        assert clf["recall"] >= 0.95 and clf["precision"] >= 0.95, (name, clf)
        # On the world's templated junk the rules are already perfect; the model must not be worse.
        assert clf["f1"] >= base["f1"] - 0.02, (name, clf, base)
    training = json.loads((Path(rep.out_path).with_name("clean.filters") / "training_report.json").read_text())
    assert training["filters"]["quality"]["classifier"] == f["quality"]["classifier"]
    text = Path(rep.data_report_path).read_text()
    assert "quality classifier" in text and "harmful blocklist" in text and "| near_dup |" in text


def test_classifier_learns_what_a_blocklist_misses(tmp_path):
    """Harmful requests phrased without any blocklisted phrase: the blocklist is blind, the model is not."""
    rng = np.random.default_rng(0)
    verbs = ["assemble", "rig", "put together", "prepare", "cook up", "wire"]
    things = ["a device that hurts a crowd", "a trap for my neighbour", "something to make the guard sick",
              "a package that goes off when opened", "a drink that knocks a person out for good"]
    places = ["in the garage", "at the school", "on the bus", "near the station", "at home"]
    safe = ["a bird feeder", "a birthday cake", "a bookshelf", "a kite for the park", "a pot of soup"]
    rows = []
    for i in range(400):
        harmful = i % 2 == 0
        thing = things[rng.integers(len(things))] if harmful else safe[rng.integers(len(safe))]
        text = (f"Tell me how to {verbs[rng.integers(len(verbs))]} {thing} {places[rng.integers(len(places))]}, "
                f"step by step, number {i}.")
        rows.append({"text": text, "label": "harmful" if harmful else "clean"})
    rows += [{"text": f"Junk junk ### @@@ {i} $$$ !!!", "label": "junk"} for i in range(40)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": rows[0]["text"]}) + "\n")
    rep = clean_corpus(tmp_path / "in.jsonl", tmp_path / "out.jsonl", CleanConfig(classifier=str(labels)))
    harm = rep.filters["filters"]["harm"]
    assert harm["baseline"]["recall"] == 0.0 and harm["classifier"]["recall"] >= 0.9, harm
    assert harm["classifier"]["precision"] >= 0.9, harm
    assert rep.removed == {"harm_classifier": 1}
    # the saved model is reusable: classifier=<folder>
    folder = tmp_path / "out.filters"
    clf = TextClassifier.load(folder / "harm.pkl")
    assert clf.flags([rows[0]["text"], rows[1]["text"]]).tolist() == [True, False]
    rep2 = clean_corpus(tmp_path / "in.jsonl", tmp_path / "again" / "out.jsonl", CleanConfig(classifier=str(folder)))
    assert rep2.removed == {"harm_classifier": 1}


def test_prf_and_holdout_helpers():
    m = prf([True, True, False, False], [True, False, True, False])
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    share = np.mean([is_holdout(f"text {i}", 0.25) for i in range(4000)])
    assert 0.22 < share < 0.28 and is_holdout("same", 0.5) == is_holdout("same", 0.5)


def test_per_filter_precision_and_recall(tiny):
    d, rep = tiny
    scores = per_filter_scores(rep.removed_path, d / "world" / "corpus_labels.jsonl")
    assert set(scores) == set(rep.removed)
    for reason, s in scores.items():
        assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and len(s["hits"]) == s["n"], reason
    assert scores["harmful"]["precision"] == 1.0 and scores["harmful"]["recall"] >= 0.9
    assert scores["exact_dup"]["recall"] >= 0.95
    overall = score_against_labels(rep, d / "world" / "corpus_labels.jsonl")
    assert min(overall["recall"].values()) >= 0.9 and overall["clean_keep_rate"] >= 0.95, overall


# ---- --skip-bad ------------------------------------------------------------------------------------------------

def _bad_file(p: Path) -> None:
    good = [json.dumps({"id": f"g{i}", "text": f"This is a perfectly ordinary sentence about garden number {i} and "
                                                 "the people who tend it every day."}) for i in range(6)]
    lines = [good[0], "{not json", good[1], json.dumps({"body": "no text field"}), good[2],
             json.dumps({"text": 42}), good[3], "[1, 2]", good[4]]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9 latin-1"}\n' + (good[5] + "\n").encode())


def test_skip_bad_counts_and_samples(tmp_path):
    p = tmp_path / "in.jsonl"
    _bad_file(p)
    with pytest.raises(DataError, match=r"in\.jsonl:2: invalid JSON.*skip_bad"):
        clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off"))
    rep = clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off", skip_bad=True))
    assert rep.bad_lines == 5 and rep.docs_in == 6
    where = [b["where"].rsplit(":", 1)[1] for b in rep.bad_samples]
    assert where == ["2", "4", "6", "8", "10"]
    assert "not UTF-8" in rep.bad_samples[-1]["error"] and "missing field" in rep.bad_samples[1]["error"]
    text = Path(rep.data_report_path).read_text()
    assert "5 line(s) skipped" in text and "in.jsonl:4" in text
    assert json.loads(Path(rep.report_path).read_text())["bad_lines"] == 5


def test_every_bad_input_is_one_line_naming_file_and_line(tmp_path):
    cases = {"json": "{oops\n", "field": '{"body": "x"}\n', "type": '{"text": [1]}\n', "object": '"just a string"\n'}
    for name, content in cases.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text('{"text": "fine words here"}\n' + content)
        with pytest.raises(DataError) as e:
            clean_corpus(p, tmp_path / f"{name}.out.jsonl", CleanConfig(classifier="off"))
        msg = str(e.value)
        assert f"{name}.jsonl:2:" in msg and "\n" not in msg, msg


def test_cli_skip_bad_flag(tmp_path, capsys):
    from genforge.cli import main

    p = tmp_path / "in.jsonl"
    _bad_file(p)
    assert main(["data", "clean", str(p), f"out={tmp_path / 'o.jsonl'}", "--skip-bad", "clean.classifier=off"]) == 0
    assert "skipped 5 malformed line(s)" in capsys.readouterr().out


# ---- workers, resume, index ------------------------------------------------------------------------------------

def _outputs(out: Path) -> tuple[bytes, bytes]:
    return out.read_bytes(), out.with_name(out.name.removesuffix(".jsonl") + ".removed.jsonl").read_bytes()


def test_two_workers_write_the_same_bytes(tiny, tmp_path):
    d, rep = tiny
    cfg = CleanConfig(workers=2, chunk_docs=97, classifier=str(Path(rep.out_path).with_name("clean.filters")))
    out = tmp_path / "w2" / "clean.jsonl"
    clean_corpus(d / "world" / "corpus.jsonl", out, cfg)
    assert _outputs(out) == _outputs(Path(rep.out_path))


@pytest.mark.slow  # ~20 s on an idle machine: two full cleans of the tiny world plus a killed one
def test_sigkilled_clean_resumes_byte_identical(tiny, tmp_path):
    d, rep = tiny
    filters = Path(rep.out_path).with_name("clean.filters")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes((d / "world" / "corpus.jsonl").read_bytes())
    ref = tmp_path / "ref" / "clean.jsonl"
    clean_corpus(corpus, ref, CleanConfig(classifier=str(filters)))
    out = tmp_path / "run" / "clean.jsonl"
    cmd = [sys.executable, "-m", "genforge", "data", "clean", str(corpus), f"out={out}",
           f"clean.classifier={filters}", "clean.checkpoint_docs=1500", "clean.chunk_docs=100"]
    env = {**os.environ, "GENFORGE_PROGRESS": "off"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out.with_name("clean.jsonl.work") / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("docs_done", 0) >= 3000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    assert json.loads(out.with_name("clean_report.json").read_text())["resumed_from"] >= 3000
    assert _outputs(out) == _outputs(ref)
    assert not out.with_name("clean.jsonl.work").exists()


def test_changed_config_starts_over(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": f"A plain sentence about the river and boat number {i} today."})
                         + "\n" for i in range(50)))
    work = tmp_path / "out.jsonl.work"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"fingerprint": "stale", "docs_done": 10}))
    rep = clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off"))
    assert rep.resumed_from == 0 and rep.docs_in == 50


def test_run_index_matches_a_dict_of_lists():
    rng = np.random.default_rng(0)
    idx, ref = RunIndex(), {}
    for step in range(40):
        for v in range(step * 10, step * 10 + 10):
            ks = rng.integers(0, 50, 3, dtype=np.uint64)
            idx.add(ks, v)
            for k in ks.tolist():
                ref.setdefault(k, []).append(v)
        idx.seal()
    assert len(idx.runs) <= 8 and len(idx) == sum(map(len, ref.values()))
    q = np.arange(60, dtype=np.uint64).reshape(-1, 2)
    for row, got in zip(q, idx.lookup(q)):
        want = [v for k in row.tolist() for v in ref.get(k, [])]
        assert sorted(got) == sorted(want)


def test_batch_minhash_estimates_jaccard():
    base = " ".join(f"word{i}" for i in range(200))
    edited = base.replace("word5 ", "other ").replace("word50 ", "x ").replace("word120 ", "y z ")
    other = " ".join(f"token{i}" for i in range(200))
    mh = BatchMinHash(0.5, num_perm=256)
    sig = mh.signatures([base, edited, other, ""])
    est = float(np.mean(sig[0] == sig[1]))
    assert abs(est - jaccard(shingles(base), shingles(edited))) < 0.08
    assert np.mean(sig[0] == sig[2]) < 0.05
    bands = mh.band_keys(sig)
    assert bands.shape == (4, mh.bands) and (bands[0] == bands[1]).any() and not (bands[0] == bands[2]).any()


def test_run_index_bitmap_filter_finds_the_same_entries():
    """The presence bitmap only skips searches: lookups give what an unfiltered index gives, hits and misses."""
    rng = np.random.default_rng(1)
    plain, filtered = RunIndex(np.uint32), RunIndex(np.uint32, filter_bits=12)  # small: many false hits too
    stored = rng.integers(0, 1 << 32, 6000, dtype=np.uint64).astype(np.uint32)
    for lo in range(0, 6000, 500):
        for idx in (plain, filtered):
            idx.add_run(stored[lo:lo + 500], np.arange(lo, lo + 500))
    q = np.concatenate([stored[rng.integers(0, 6000, 300)],
                        rng.integers(0, 1 << 32, 300, dtype=np.uint64).astype(np.uint32)]).reshape(-1, 3)
    want = sorted(zip(*(x.tolist() for x in plain.lookup_flat(q))))
    assert want and sorted(zip(*(x.tolist() for x in filtered.lookup_flat(q)))) == want
    with pytest.raises(ValueError, match="filter_bits"):
        RunIndex(np.uint32, filter_bits=40)


def test_compiled_minhash_gives_the_numpy_signatures():
    """The numba loop and the numpy path give the same signatures bit for bit (so outputs do not depend on numba)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    lens = np.concatenate([[0, 1, 2, 3, 4, 0], rng.integers(0, 400, 300)])
    flat = rng.integers(0, 1 << 32, int(lens.sum()), dtype=np.uint64)
    flat[:50] = flat[50:100]  # repeated shingles
    for shingle, perms in ((3, 128), (1, 64), (5, 200)):
        fast = BatchMinHash(0.5, perms, shingle, seed=4, compiled=True)
        slow = BatchMinHash(0.5, perms, shingle, seed=4, compiled=False)
        assert fast.kernel is not None and slow.kernel is None
        got, want = fast.signatures_of_hashes(flat, lens), slow.signatures_of_hashes(flat, lens)
        assert got.dtype == want.dtype == np.uint32 and np.array_equal(got, want)
        assert (got[0] == 0xFFFFFFFF).all() and not (got[1] == 0xFFFFFFFF).all()


def test_run_index_caps_merged_runs():
    rng = np.random.default_rng(3)
    idx, ref = RunIndex(np.uint32, max_run=1000), {}
    for step in range(30):
        ks = rng.integers(0, 5000, 300, dtype=np.uint64).astype(np.uint32)
        idx.add_run(ks, np.arange(step * 300, step * 300 + 300))
        for k, v in zip(ks.tolist(), range(step * 300, step * 300 + 300)):
            ref.setdefault(k, []).append(v)
    assert max(len(k) for k, _ in idx.runs) <= 1000 and len(idx.runs) > 3
    q = np.arange(5000, dtype=np.uint32).reshape(-1, 5)
    for row, got in zip(q, idx.lookup(q)):
        assert sorted(got) == sorted(v for k in row.tolist() for v in ref.get(k, []))


def test_synthetic_corpus_vary_swaps_words_and_zero_keeps_the_old_file(tmp_path):
    from genforge.data.synth import write_synthetic_corpus

    a, b, c = (tmp_path / f"{x}.jsonl" for x in "abc")
    write_synthetic_corpus(a, 0.3, seed=5)
    write_synthetic_corpus(b, 0.3, seed=5, vary=0.0)
    info = write_synthetic_corpus(c, 0.3, seed=5, vary=0.5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert info["labels"]["clean"] > 100 and info["labels"]["near_dup"] > 0
    with pytest.raises(ValueError, match="vary"):
        write_synthetic_corpus(c, 0.1, vary=2)


# ---- clean + tokenise + pack in one pass (pack_to) ---------------------------------------------------------------

def _shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def packed_reference(tiny, tmp_path_factory):
    """A tokenizer trained on the tiny world, and `pack_shards` of the cleaned output (clean, then pack)."""
    from genforge.data.readers import iter_documents
    from genforge.data.shards import pack_shards
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    d, rep = tiny
    root = tmp_path_factory.mktemp("packref")
    tok = train_tokenizer((doc.text for doc in iter_documents(d / "world" / "corpus.jsonl")),
                          TokenizerConfig(vocab_size=700))
    tok.save(root / "tok")
    pack_shards((doc.text for doc in iter_documents(rep.out_path)), tok, root / "shards", val_fraction=0.1)
    return root / "tok", root / "shards"


@pytest.mark.parametrize("workers", [1, 2])
def test_fused_clean_and_pack_equals_clean_then_pack(tiny, packed_reference, tmp_path, workers, monkeypatch):
    import genforge.data.shards as shards_mod

    d, rep = tiny
    tok, ref_shards = packed_reference
    filters = Path(rep.out_path).with_name("clean.filters")
    out, shards = tmp_path / "clean.jsonl", tmp_path / "shards"
    cfg = CleanConfig(classifier=str(filters), workers=workers, chunk_docs=97, pack_to=str(shards),
                      pack_tokenizer=str(tok), pack_val_fraction=0.1)
    fused = clean_corpus(d / "world" / "corpus.jsonl", out, cfg)
    assert _outputs(out) == _outputs(Path(rep.out_path))  # the clean itself is unchanged
    assert _shard_files(shards) == _shard_files(ref_shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["val"]["n_docs"] > 0 and manifest["encoder"].startswith("tiktoken")
    assert fused.tokens == {k: v["n_tokens"] for k, v in manifest["splits"].items()}
    assert manifest["splits"]["train"]["n_docs"] + manifest["splits"]["val"]["n_docs"] == rep.docs_kept
    assert "## Packed" in Path(fused.data_report_path).read_text()
    assert not out.with_name("clean.jsonl.work").exists()
    # many shard files: a document's tokens cross file boundaries the same way
    monkeypatch.setattr(shards_mod, "SHARD_TOKENS", 5_000)
    small = tmp_path / "small_ref"
    shards_mod.pack_shards((json.loads(x)["text"] for x in out.read_text().splitlines()),
                           shards_mod.Tokenizer.load(tok), small, val_fraction=0.1)
    clean_corpus(d / "world" / "corpus.jsonl", tmp_path / "again" / "clean.jsonl",
                 dataclasses.replace(cfg, pack_to=str(tmp_path / "small")))
    assert len(list(small.glob("train_*.bin"))) > 3
    assert _shard_files(tmp_path / "small") == _shard_files(small)


def test_fused_pack_config_errors(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"id": 1, "text": "A plain sentence about the river and the boat today."}) + "\n")
    with pytest.raises(ConfigError, match="pack_tokenizer"):
        clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off", pack_to=str(tmp_path / "s")))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off", pack_to=str(tmp_path / "s"),
                                                            pack_tokenizer=str(tmp_path)))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a shard folder"):
        clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off", pack_to=str(tmp_path / "mine"),
                                                            pack_tokenizer=str(tmp_path)))


@pytest.mark.slow  # ~20 s: a fused clean killed after its first checkpoints, then resumed
def test_sigkilled_fused_clean_and_pack_resumes_byte_identical(tiny, packed_reference, tmp_path):
    d, rep = tiny
    tok, ref_shards = packed_reference
    filters = Path(rep.out_path).with_name("clean.filters")
    out, shards = tmp_path / "run" / "clean.jsonl", tmp_path / "shards"
    cmd = [sys.executable, "-m", "genforge", "data", "clean", str(d / "world" / "corpus.jsonl"), f"out={out}",
           f"clean.classifier={filters}", "clean.checkpoint_docs=1500", "clean.chunk_docs=100",
           f"clean.pack_to={shards}", f"clean.pack_tokenizer={tok}", "clean.pack_val_fraction=0.1"]
    env = {**os.environ, "GENFORGE_PROGRESS": "off"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out.with_name("clean.jsonl.work") / "state.json"
    shard = state.with_name("shards") / "train_000.bin"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # kill once the shard file holds tokens past the last checkpoint, so resume must cut them off
        s = json.loads(state.read_text() or "{}") if state.exists() else {}
        if s.get("docs_done", 0) >= 3000 and shard.stat().st_size > 2 * s["pack"]["train"]["n_tokens"] + 20_000:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not shards.exists() and json.loads(state.read_text())["pack"]["train"]["n_tokens"] > 0
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    assert _outputs(out) == _outputs(Path(rep.out_path))
    assert _shard_files(shards) == _shard_files(ref_shards)
