"""The main process's share of a clean: JSONL lines parsed in the workers, in-chunk dedup pairs found with numpy.

Each fast path is compared with what it replaced: the reader's documents, brute-force pair lists, and the same
clean with one document a chunk (every dedup decision then goes through the sorted index, none through the
in-chunk pairs).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from genforge.data.pipeline import (
    CleanConfig,
    _raw_chunks,
    _same_key_groups,
    _sharing_pairs,
    _Worker,
    clean_corpus,
)
from genforge.data.readers import iter_documents
from genforge.errors import DataError
from tests.data.test_fast_paths import _corpus
from tests.data.test_pipeline_scale import _bad_file


def test_sharing_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    for m, w, vocab in ((1, 3, 5), (7, 1, 3), (40, 4, 30), (120, 6, 400), (60, 3, 2)):
        keys = rng.integers(0, vocab, (m, w)).astype(np.uint32)
        want = sorted({(j, r) for j in range(m) for r in range(j) if set(keys[j].tolist()) & set(keys[r].tolist())})
        for block in (1 << 20, 7, 1):  # one block, and many (the repeats of a pair then meet across blocks)
            j, r = _sharing_pairs(keys, block)
            assert list(zip(j.tolist(), r.tolist())) == want


def test_same_key_groups_match_brute_force():
    rng = np.random.default_rng(1)
    for m, vocab in ((0, 1), (1, 1), (50, 10), (200, 1000), (30, 1)):
        keys = rng.integers(0, vocab, m).astype(np.uint64)
        g = _same_key_groups(keys).tolist()
        for a in range(m):
            shared = any(keys[b] == keys[a] for b in range(m) if b != a)
            assert (g[a] >= 0) == shared
            for b in range(m):
                if g[a] >= 0 and g[b] >= 0:
                    assert (g[a] == g[b]) == (keys[a] == keys[b])


def _kept_removed(out: Path) -> tuple[bytes, list[dict]]:
    rows = [json.loads(x) for x in out.with_name("clean.removed.jsonl").read_text().splitlines()]
    return out.read_bytes(), rows


@pytest.mark.parametrize("workers", [1, 2])
def test_chunk_size_does_not_change_the_output(tmp_path, workers, monkeypatch):
    """One document a chunk decides every duplicate against the sealed index; big chunks decide most of them
    from the in-chunk pairs: the outputs must be the same bytes (also with the index looked up a few rows at a
    time, `SEALED_ROWS`)."""
    import genforge.data.pipeline as P

    src = tmp_path / "in.jsonl"
    _corpus(src, n=600)
    outs = []
    for chunk, rows in ((1, 256), (7, 256), (64, 256), (1000, 256), (150, 7)):
        monkeypatch.setattr(P, "SEALED_ROWS", rows)
        out = tmp_path / f"c{chunk}" / "clean.jsonl"
        clean_corpus(src, out, CleanConfig(classifier="off", workers=workers, chunk_docs=chunk, resume=False))
        outs.append(_kept_removed(out))
    assert all(o == outs[0] for o in outs[1:])
    reasons = {r["reason"] for r in outs[0][1]}
    assert {"exact_dup", "near_dup"} <= reasons  # the corpus exercises both in-chunk paths


def _rows_via_workers(files: list[Path], cfg: CleanConfig, skip: int = 0) -> tuple[list, list, bool]:
    w = _Worker(cfg, None)
    rows, bad, seen = [], [], {"text": False}
    skipped_bad: list = []
    for chunk in _raw_chunks(files, cfg, skip, lambda *b: skipped_bad.append(b), seen):
        res = w.run(chunk)
        rows += [(d, s) for d, _, s in res["rows"]]
        bad += res["bad"]
        seen["text"] = seen["text"] or res["any_text"]
    return rows, skipped_bad + bad, seen["text"]


def test_lines_parsed_in_workers_are_the_readers_documents(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    _bad_file(a)
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write('{"text": "no id here, words enough"}\n\n   \n{"id": 7, "text": "an int id"}\n'
                '{"id": null, "text": "x"}\n')
    files = [a, b]
    bad_ref: list = []
    ref = [(d.id, d.source) for d in iter_documents(files, on_bad=lambda *x: bad_ref.append(x))]
    for chunk in (1, 2, 100):
        cfg = CleanConfig(classifier="off", skip_bad=True, chunk_docs=chunk, dedup_near=False)
        for skip in (0, 1, 4, len(ref)):
            rows, bad, _ = _rows_via_workers(files, cfg, skip)
            assert rows == ref[skip:]
            assert bad == bad_ref  # skipped lines are reported on resume too, as the reader does
    assert ref[6:] == [("b.jsonl.gz:1", f"{b}:1"), ("7", f"{b}:4"), ("b.jsonl.gz:5", f"{b}:5")]


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_bad_with_chunks_of_only_bad_lines(tmp_path, workers):
    p = tmp_path / "in.jsonl"
    _bad_file(p)
    rep = clean_corpus(p, tmp_path / "out.jsonl",
                       CleanConfig(classifier="off", skip_bad=True, workers=workers, chunk_docs=1, resume=False))
    assert rep.bad_lines == 5 and rep.docs_in == 6
    assert [b["where"].rsplit(":", 1)[1] for b in rep.bad_samples] == ["2", "4", "6", "8", "10"]
    with pytest.raises(DataError, match=r"in\.jsonl:2: invalid JSON.*skip_bad"):
        clean_corpus(p, tmp_path / "out2.jsonl", CleanConfig(classifier="off", workers=workers, chunk_docs=1))


def test_blank_corpus_is_the_readers_error(tmp_path):
    p = tmp_path / "blank.jsonl"
    p.write_text('{"text": "   "}\n{"text": ""}\n')
    with pytest.raises(DataError, match="empty corpus: no text in"):
        clean_corpus(p, tmp_path / "out.jsonl", CleanConfig(classifier="off"))


def test_a_chunk_of_copies_falls_back_to_kept_rows(tmp_path, monkeypatch):
    """Copies share every band key (~21 M repeated pairs for 1,000 of them): `_sharing_pairs` gives up, and the
    per-row path over kept rows decides the same as the pairs."""
    import genforge.data.pipeline as P

    keys = np.tile(np.arange(42, dtype=np.uint32), (1000, 1))
    assert _sharing_pairs(keys) is None
    src = tmp_path / "in.jsonl"
    _corpus(src, n=500)
    rows = src.read_text().splitlines()
    src.write_text("\n".join(rows[:200] + rows[100:200] * 3 + rows[200:]) + "\n")  # blocks of copies
    outs = []
    for limit in (P.IN_CHUNK_PAIRS, 0):
        monkeypatch.setattr(P, "IN_CHUNK_PAIRS", limit)
        out = tmp_path / f"l{limit}" / "clean.jsonl"
        clean_corpus(src, out, CleanConfig(classifier="off", chunk_docs=1000, resume=False))
        outs.append(_kept_removed(out))
    assert outs[0] == outs[1]
    assert sum(r["reason"] == "near_dup" for r in outs[0][1]) > 10


def test_worker_parts_join_into_the_whole_chunks_result(tmp_path, monkeypatch):
    import genforge.data.pipeline as P

    src = tmp_path / "in.jsonl"
    _corpus(src, n=500)
    chunk = [(d.id, d.text, d.source) for d in iter_documents(src)]
    w = _Worker(CleanConfig(classifier="off"), None)
    whole = w.process(chunk)
    monkeypatch.setattr(P, "WORKER_PART", 64)
    parts = w.process_parts(chunk)
    for key in ("why", "keep", "lines", "kept_bytes", "in_bytes", "heads"):
        assert parts[key] == whole[key], key
    for key in ("keys", "sigs", "bands"):
        assert np.array_equal(parts[key], whole[key]), key
