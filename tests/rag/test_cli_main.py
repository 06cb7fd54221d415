"""index -> query -> eval on the tiny world's knowledge base (post-cutoff facts), with the fast hashing embedder."""

import json

import pytest

from genforge.errors import ConfigError, DataError
from genforge.io import write_jsonl
from genforge.rag.cli_main import IndexConfig, QueryConfig, RagEvalConfig, main_eval, main_index, main_query
from genforge.rag.store import StoreError, open_store
from genforge.world.facts import build_world
from genforge.world.knowledge import make_knowledge


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("kb")
    rows = make_knowledge(build_world(0, n_people=120, n_towns=15, n_objects=30), 80, seed=0)
    write_jsonl(d / "knowledge.jsonl", rows)
    return d, rows


@pytest.mark.parametrize("backend", ["lance", "flat"])
def test_index_query_eval(kb, tmp_path, backend):
    d, rows = kb
    cfg = IndexConfig(input=str(d / "knowledge.jsonl"), store=str(tmp_path), backend=backend, embedder="hashing",
                      text_field="fact", chunk_size=32, overlap=4)
    s = main_index(cfg)
    assert s["documents"] == 80 and s["chunks"] == 80 and s["embedder"] == "hashing-256-bi"
    with pytest.raises(StoreError, match="already exists.*overwrite=true"):
        main_index(cfg)
    cfg.overwrite = True
    assert main_index(cfg)["chunks"] == 80
    hits = main_query(QueryConfig(query=rows[3]["question"], store=str(tmp_path), k=3))
    assert hits[0].meta["doc_id"] == rows[3]["id"]
    res = main_eval(RagEvalConfig(questions=str(d / "knowledge.jsonl"), store=str(tmp_path)))
    m = res["metrics"]
    assert set(m) == {"dense", "bm25", "hybrid"} and res["n"] == 80
    # the question names the fact's entities, so lexical retrieval finds most facts first
    assert m["bm25"]["hit@1"] > 0.6 and m["hybrid"]["hit@10"] > 0.9
    assert 0 <= m["dense"]["ndcg@10"] <= 1
    assert json.loads((tmp_path / "kb.eval.json").read_text())["n"] == 80


def test_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="set input="):
        main_index(IndexConfig())
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="no non-empty documents"):
        main_index(IndexConfig(input=str(tmp_path), store=str(tmp_path / "s"), embedder="hashing"))
    with pytest.raises(StoreError, match="no collection 'kb'"):
        main_query(QueryConfig(query="x", store=str(tmp_path / "s")))
    with pytest.raises(ConfigError, match="unknown retrieval mode 'sparse'"):
        main_query(QueryConfig(query="x", store=str(tmp_path / "s"), mode="sparse"))


KILLED_INDEX = """
import sys
from genforge.rag.cli_main import IndexConfig, main_index
main_index(IndexConfig(input=sys.argv[1], store=sys.argv[2], backend=sys.argv[3], embedder="hashing",
                       text_field="fact", batch_size=32, overwrite=True))
"""


@pytest.mark.parametrize("backend", ["lance", "flat"])
def test_sigkill_during_reindex_keeps_previous_index(kb, tmp_path, backend):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    d, rows = kb
    store = tmp_path / "store"
    main_index(IndexConfig(input=str(d / "knowledge.jsonl"), store=str(store), backend=backend, embedder="hashing",
                           text_field="fact"))
    big = tmp_path / "big.jsonl"
    write_jsonl(big, ({"id": f"new{i}", "fact": f"Filler fact number {i} about nothing at all."}
                      for i in range(20000)))
    p = subprocess.Popen([sys.executable, "-c", KILLED_INDEX, str(big), str(store), backend],
                         cwd=Path(__file__).resolve().parents[2], env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while b"indexed 640/" not in seen:  # 20 batches committed to the new version: well inside indexing
        ch = p.stdout.read(1)
        assert ch, p.stderr.read().decode()
        seen += ch
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert open_store(store, "kb").count() == 80  # the previous index, whole
    hits = main_query(QueryConfig(query=rows[5]["question"], store=str(store), k=1, mode="hybrid"))
    assert hits[0].meta["doc_id"] == rows[5]["id"]
    # the next rebuild clears the killed one's leftovers and replaces the index
    small = tmp_path / "small.jsonl"
    write_jsonl(small, [{"id": "only", "fact": "The Sleepy Walrus opened in Alder."}])
    main_index(IndexConfig(input=str(small), store=str(store), backend=backend, embedder="hashing",
                           text_field="fact", overwrite=True))
    assert open_store(store, "kb").count() == 1
    leftovers = sorted(q.name for q in store.iterdir() if q.name.startswith(".") or q.name.endswith(".bm25"))
    assert len([n for n in leftovers if n.endswith(".bm25")]) == 1 and not any("staging" in n for n in leftovers)
    tables = list((store / "lance").iterdir()) if backend == "lance" else [q for q in store.iterdir() if q.is_dir()
                                                                          and not q.name.endswith(".bm25")]
    assert len(tables) == 1  # the killed rebuild's table and the replaced one are gone
