"""Loaders (file:line errors, counted skips) and token chunking (boundaries, overlap)."""

import pytest

from genforge.errors import ConfigError, DataError
from genforge.rag.chunk import WhitespaceTokenizer, chunk_documents, size_for_context, windows
from genforge.rag.loaders import Document, load_documents


def test_folder_of_txt_jsonl_markdown(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha town lies north.\n")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "b.jsonl").write_text('{"id": "k1", "text": "Bram owns a lamp.", "topic": "x"}\n\n'
                                      '{"id": "k2", "text": ""}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("# Title\n\nIntro text.\n\n## Part\n```\n# not a heading\n```\nMore.\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    rep = load_documents(tmp_path)
    ids = [d.id for d in rep.documents]
    assert "k1" in ids and len(ids) == 4  # a.txt, k1, two markdown sections
    k1 = next(d for d in rep.documents if d.id == "k1")
    assert k1.source.endswith("b.jsonl:1") and k1.meta == {"topic": "x"}
    md = [d for d in rep.documents if d.meta.get("title")]
    assert [d.meta["title"] for d in md] == ["Title", "Part"]
    assert "# not a heading" in md[1].text
    assert rep.n_skipped == 2 and any("b.jsonl:3: empty" in s for s in rep.skipped)


def test_bad_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "k.jsonl"
    f.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"k\.jsonl:2: invalid JSON"):
        load_documents(f)
    f.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r'k\.jsonl:2: missing field "text".*this row has .body.'):
        load_documents(f)


def test_empty_unreadable_and_missing(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="no non-empty documents"):
        load_documents(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa text")
    with pytest.raises(DataError, match=r"bad\.txt: not UTF-8"):
        load_documents(bad)
    (tmp_path / "ok.txt").write_text("fine")
    rep = load_documents(tmp_path, skip_unreadable=True)
    assert [d.text for d in rep.documents] == ["fine"] and rep.n_skipped == 2
    with pytest.raises(DataError, match="no such file"):
        load_documents(tmp_path / "nope")
    pdf = tmp_path / "x.pdf"
    pdf.write_text("x")
    pdf = tmp_path / "x.pdf"
    pdf.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_documents(pdf)


def test_windows_boundaries_and_overlap():
    assert windows(0, 4, 1) == []
    assert windows(3, 4, 1) == [(0, 3)]
    assert windows(4, 4, 1) == [(0, 4)]
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert windows(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (7, 11)]  # last aligned to the end
    assert windows(8, 4, 0) == [(0, 4), (4, 8)]
    for n in range(1, 40):
        spans = windows(n, 5, 2)
        covered = set()
        for i, (s, e) in enumerate(spans):
            assert e - s == min(5, n)
            covered |= set(range(s, e))
            if i:
                assert spans[i - 1][1] - s >= 2  # neighbours share at least `overlap` tokens
        assert covered == set(range(n))
    with pytest.raises(ConfigError, match="overlap"):
        windows(10, 4, 4)
    with pytest.raises(ConfigError, match="size"):
        windows(10, 0, 0)


def test_chunk_documents_text_and_ids():
    doc = Document(id="d", text=" ".join(f"w{i}" for i in range(10)), source="f.txt")
    chunks = chunk_documents([doc], WhitespaceTokenizer(), size=4, overlap=1)
    assert [c.id for c in chunks] == ["d@0", "d@1", "d@2"]
    assert chunks[1].text == "w3 w4 w5 w6" and chunks[2].text == "w6 w7 w8 w9"
    assert size_for_context(512, 4, 128) == 96
    with pytest.raises(ConfigError, match="lower k"):
        size_for_context(64, 8, 40)


def test_chunk_with_genforge_tokenizer():
    from genforge.tokenizer import TokenizerConfig, train_tokenizer
    texts = ["the lamp of Alder is red and old"] * 50
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300))
    doc = Document(id="d", text="the lamp of Alder is red and old " * 6, source="x")
    n = len(tok.encode(doc.text))
    chunks = chunk_documents([doc], tok, size=10, overlap=3)
    assert chunks[-1].end == n and all(c.end - c.start == 10 for c in chunks)
    assert all(c.text.strip() for c in chunks)
