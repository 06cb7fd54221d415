"""The filters as datatrove pipeline steps write the same documents as the local pipeline."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("datatrove", reason="datatrove is in the `data` extra")

from genforge.data.distributed import clean_with_datatrove, read_rows  # noqa: E402
from genforge.data.pipeline import CleanConfig, clean_corpus  # noqa: E402
from genforge.world import generate_world  # noqa: E402


def test_datatrove_run_equals_local_run(tmp_path):
    generate_world(tmp_path / "w", seed=2, size="smoke")
    docs = (tmp_path / "w" / "corpus.jsonl").read_text().splitlines()
    src = tmp_path / "shards"
    src.mkdir()
    for i in range(3):  # three input files, spread over two tasks
        (src / f"part{i}.jsonl").write_text("\n".join(docs[i::3]) + "\n")
    labels = str(tmp_path / "w" / "corpus_labels.jsonl")
    cfg = CleanConfig(dedup_exact=False, dedup_near=False, classifier="off")
    local = clean_corpus(src, tmp_path / "local" / "clean.jsonl", cfg)
    kept = clean_with_datatrove(src, tmp_path / "dt", cfg, tasks=2, workers=1)
    rows = read_rows(kept)
    local_rows = [json.loads(line) for line in open(local.out_path, encoding="utf-8")]
    assert sorted((r["id"], r["text"]) for r in rows) == sorted((r["id"], r["text"]) for r in local_rows)
    removed = {r["id"]: r["reason"] for r in read_rows(tmp_path / "dt" / "removed")}
    assert removed == local.removed_ids and len(removed) >= 20
    # the learned filters travel too (trained once, loaded in every task)
    cfg2 = CleanConfig(dedup_exact=False, dedup_near=False, classifier=labels)
    local2 = clean_corpus(src, tmp_path / "local2" / "clean.jsonl", cfg2)
    kept2 = clean_with_datatrove(src, tmp_path / "dt2", cfg2, tasks=2, workers=1)
    assert sorted(r["id"] for r in read_rows(kept2)) == sorted(local2.kept_ids)


def test_datatrove_engine_refuses_pack_to(tmp_path):
    from genforge.errors import ConfigError

    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 1, "text": "A plain sentence about the river."}) + "\n")
    with pytest.raises(ConfigError, match="does not pack"):
        clean_with_datatrove(tmp_path / "in.jsonl", tmp_path / "dt",
                             CleanConfig(classifier="off", pack_to=str(tmp_path / "s"), pack_tokenizer="tok"))
