"""One tiny model + tokenizer and one in-process client per serve test module."""

import pytest
from fastapi.testclient import TestClient

from genforge.serve.app import create_app
from genforge.serve.testing import tiny_model_and_tokenizer

CTX = 128  # the tiny model's context, small enough that context-overflow errors are easy to provoke


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer(max_seq_len=CTX)


@pytest.fixture(scope="module")
def client(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, "tiny")) as c:
        yield c
