"""Embedders: the packaged MiniLM equals sentence-transformers for the same folder; hashing is deterministic."""

import numpy as np
import pytest

from genforge.errors import ConfigError
from genforge.rag.embed import Embedder, HashingEmbedder, MiniLMEmbedder, make_embedder, minilm_model_dir

TEXTS = ["Bram owns the red lamp in Alder.", "The capital moved to Essen in the year 12.",
         "a", "A much longer sentence " * 40]


def test_hashing_embedder_deterministic_and_normalised():
    e = HashingEmbedder(64)
    a, b = e.embed(TEXTS), HashingEmbedder(64).embed(TEXTS)
    assert a.shape == (4, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    q = e.embed(["who owns the red lamp"])[0]
    assert int(np.argmax(a @ q)) == 0
    assert isinstance(e, Embedder)
    with pytest.raises(ConfigError, match="unknown embedder"):
        make_embedder("nope")


def test_minilm_equals_sentence_transformers():
    import sentence_transformers as st  # dev extra: the reference implementation

    folder = minilm_model_dir()
    ours = MiniLMEmbedder(threads=1, batch_size=3)  # batches of 3 exercise padding across batches
    got = ours.embed(TEXTS)
    assert got.shape == (4, 384) and ours.dim == 384
    ref = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # semantic, not lexical: a paraphrase sits closer than an unrelated sentence
    q = ours.embed(["Who is the owner of the crimson lamp?"])[0]
    assert q @ got[0] > q @ got[1]
