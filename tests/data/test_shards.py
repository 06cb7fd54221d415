"""Shard packing is atomic (issue 12, case 8): a failed pack into an existing folder leaves the old shards and
manifest intact, leaves no empty folder, and an empty validation split is reported."""

import json

import pytest

import genforge.data.shards as shards_mod
from genforge.data.shards import TokenShards, pack_shards
from genforge.errors import DataError

DOCS = [f"The cat {i} sat on the mat and was good. " * 3 for i in range(200)]


def _bad_input(n_good: int):
    """Documents, then the failure a reader raises deep in a file (as `data pack` sees it)."""
    yield from DOCS[:n_good]
    raise DataError("corpus.jsonl:1901: invalid JSON (Expecting value at column 1)")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_pack_keeps_the_old_shards(tmp_path, tiny_tokenizer, monkeypatch):
    out = tmp_path / "shards"
    pack_shards(DOCS[:50], tiny_tokenizer, out, val_fraction=0.1)
    before = _snapshot(out)
    monkeypatch.setattr(shards_mod, "SHARD_TOKENS", 500)  # the failing run flushes shard files before it fails
    with pytest.raises(DataError, match="1901"):
        pack_shards(_bad_input(150), tiny_tokenizer, out, val_fraction=0.1)
    assert _snapshot(out) == before, "a failed pack changed the shard folder"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temp folder left behind"
    assert TokenShards(out, "train", seq_len=16).n_tokens == json.loads(before["manifest.json"])["splits"]["train"][
        "n_tokens"]


def test_successful_repack_replaces_everything(tmp_path, tiny_tokenizer, monkeypatch):
    out = tmp_path / "shards"
    monkeypatch.setattr(shards_mod, "SHARD_TOKENS", 500)
    pack_shards(DOCS, tiny_tokenizer, out, val_fraction=0.1)
    many = {p.name for p in out.glob("train_*.bin")}
    pack_shards(DOCS[:20], tiny_tokenizer, out, val_fraction=0.1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {p.name for p in out.glob("train_*.bin")} == {f["path"] for f in manifest["splits"]["train"]["files"]}
    assert len(many) > len(manifest["splits"]["train"]["files"]), "stale shards of the first pack survived"


def test_failed_pack_into_a_new_folder_leaves_nothing(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError):
        pack_shards(_bad_input(10), tiny_tokenizer, tmp_path / "new", val_fraction=0.1)
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_shards(tmp_path, tiny_tokenizer):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a shard folder"):
        pack_shards(DOCS[:5], tiny_tokenizer, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_warns_when_validation_gets_no_tokens(tmp_path, tiny_tokenizer, capsys):
    one_big_doc = ["The cat sat on the mat. " * 2000]
    m = pack_shards(one_big_doc, tiny_tokenizer, tmp_path / "s", val_fraction=0.05)
    assert m["splits"]["val"]["n_tokens"] == 0  # the split is by whole document
    err = capsys.readouterr().err
    assert "validation split got 0 tokens" in err and str(tmp_path / "s") in err
    pack_shards(DOCS, tiny_tokenizer, tmp_path / "t", val_fraction=0.2)
    assert "0 tokens" not in capsys.readouterr().err
