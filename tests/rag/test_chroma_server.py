"""The server backend against a live Chroma server started here (`chroma run` from the rag-server extra)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from genforge.rag.cli_main import IndexConfig, QueryConfig, main_index, main_query
from genforge.rag.store import StoreError, open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(exe).exists():
        raise RuntimeError("the chroma server is not installed: pip install -c constraints.txt '.[rag-server]'")
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma")
    log = open(path / "server.log", "w")
    p = subprocess.Popen([exe, "run", "--path", str(path / "data"), "--host", "127.0.0.1", "--port", str(port)],
                         stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, ANONYMIZED_TELEMETRY="False"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if p.poll() is not None:
                raise RuntimeError(f"chroma server exited: {(path / 'server.log').read_text()[-500:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("chroma server did not answer within 30 s")
        yield url
    finally:
        p.terminate()
        p.wait(timeout=30)
        log.close()


def test_add_search_and_errors(server):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    with pytest.raises(StoreError, match="no collection 'vecs' on the Chroma server"):
        open_store(server, "vecs")
    s = open_store(server, "vecs", dim=16, embedder="hashing-16", create=True)
    with pytest.raises(StoreError, match="'vecs' is empty"):
        s.search(v[0], 3)
    s.add([f"c{i}" for i in range(40)], v, [f"t{i}" for i in range(40)], [{"doc_id": f"d{i}", "n": [i]}
                                                                         for i in range(40)])
    s2 = open_store(server, "vecs", dim=16, embedder="hashing-16")
    assert s2.count() == 40
    hits = s2.search(v[5], 5)
    exact = np.argsort(-(v @ v[5]))[:5]
    assert [h.id for h in hits] == [f"c{i}" for i in exact]  # HNSW is exact at this size
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[0].meta == {"doc_id": "d5", "n": [5]}
    with pytest.raises(StoreError, match="holds 16-d vectors from hashing-16.*384-d"):
        open_store(server, "vecs", dim=384, embedder="minilm")
    with pytest.raises(StoreError, match="query is 8-d"):
        s2.search(np.ones(8), 1)


def test_server_down_is_one_line():
    with pytest.raises(StoreError, match=r"cannot reach the Chroma server at http://127.0.0.1:\d+.*chroma run"):
        open_store(f"http://127.0.0.1:{_free_port()}", "kb")


def test_cli_through_server(server, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Bram owns the red lamp in Alder.")
    (tmp_path / "docs" / "b.txt").write_text("The Lark Bridge was built over the River Tam.")
    cfg = IndexConfig(input=str(tmp_path / "docs"), store=server, collection="cli", embedder="hashing",
                      local_dir=str(tmp_path / "local"))
    assert main_index(cfg)["chunks"] == 2
    with pytest.raises(StoreError, match="already exists"):
        main_index(cfg)
    cfg.overwrite = True
    assert main_index(cfg)["chunks"] == 2
    hits = main_query(QueryConfig(query="which bridge crosses the river", store=server, collection="cli",
                                  local_dir=str(tmp_path / "local"), k=1))
    assert hits[0].text.startswith("The Lark Bridge")
