"""Vector stores: same behaviour for both backends, one-line errors, and a SIGKILL mid-insert."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genforge.rag.store import FORMAT_VERSION, StoreError, drop_collection, open_store

BACKENDS = ["lance", "flat"]
ROOT = Path(__file__).resolve().parents[2]


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_search_reopen(tmp_path, backend):
    rng = np.random.default_rng(0)
    vecs = _unit(rng, 50, 16)
    s = open_store(tmp_path, "kb", backend=backend, dim=16, embedder="hashing-16", create=True)
    s.add([f"c{i}" for i in range(30)], vecs[:30], [f"t{i}" for i in range(30)], [{"i": i} for i in range(30)])
    s.add([f"c{i}" for i in range(30, 50)], vecs[30:], [f"t{i}" for i in range(30, 50)])
    s2 = open_store(tmp_path, "kb", dim=16, embedder="hashing-16")
    assert s2.count() == 50
    exact = np.argsort(-(vecs @ vecs[7]))[:5]
    hits = s2.search(vecs[7], 5)
    assert [h.id for h in hits] == [f"c{i}" for i in exact]
    assert hits[0].text == "t7" and hits[0].meta == {"i": 7} and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(s2.search(vecs[0], 500)) == 50


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_name_collection_and_fix(tmp_path, backend):
    with pytest.raises(StoreError, match="no collection 'kb'.*genforge rag index"):
        open_store(tmp_path, "kb")
    s = open_store(tmp_path, "kb", backend=backend, dim=8, embedder="hashing-8", create=True)
    with pytest.raises(StoreError, match="'kb' is empty; index documents first"):
        s.search(np.ones(8), 3)
    with pytest.raises(StoreError, match=r"holds 8-d vectors from hashing-8.*384-d \(minilm\).*use embedder hashing-8"):
        open_store(tmp_path, "kb", dim=384, embedder="minilm")
    with pytest.raises(StoreError, match="do not match its dimension 8"):
        s.add(["a"], np.ones((1, 4)), ["x"])
    s.add(["a"], np.ones((1, 8)) / np.sqrt(8), ["x"])
    with pytest.raises(StoreError, match="query is 4-d; query with embedder hashing-8"):
        s.search(np.ones(4), 1)
    man_path = tmp_path / "kb.genforge-rag.json"
    man = json.loads(man_path.read_text())
    man_path.write_text(json.dumps(dict(man, format=FORMAT_VERSION + 1)))
    with pytest.raises(StoreError, match=f"written by store format {FORMAT_VERSION + 1}.*re-index"):
        open_store(tmp_path, "kb")
    man_path.write_text(json.dumps(man))
    drop_collection(tmp_path, "kb")
    with pytest.raises(StoreError, match="no collection"):
        open_store(tmp_path, "kb")


WRITER = """
import sys, numpy as np
from genforge.rag.store import open_store
root, backend = sys.argv[1], sys.argv[2]
s = open_store(root, "kb", backend=backend, dim=64, embedder="hashing-64", create=True)
rng = np.random.default_rng(0)
B = 2000
i = 0
while True:
    v = rng.standard_normal((B, 64)).astype(np.float32)
    s.add([f"b{i}-{j}" for j in range(B)], v / np.linalg.norm(v, axis=1, keepdims=True), ["x" * 200] * B)
    i += 1
    if i == 2:
        print("ready", flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_insert_leaves_previous_index(tmp_path, backend):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), backend], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(0.35)  # inside some later add(): the writer does nothing else
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    s = open_store(tmp_path, "kb", dim=64, embedder="hashing-64")
    n = s.count()
    assert n >= 4000 and n % 2000 == 0  # whole batches only: nothing half-written is visible
    hits = s.search(np.ones(64) / 8.0, 10)
    assert len(hits) == 10 and all(h.text == "x" * 200 for h in hits)
    # and the store still accepts writes after the crash
    s.add(["after"], np.ones((1, 64), np.float32) / 8.0, ["y"])
    assert open_store(tmp_path, "kb").count() == n + 1
    assert open_store(tmp_path, "kb").search(np.ones(64) / 8.0, 1)[0].id == "after"
