"""The copy curriculum: a pure function of the step, spans really repeated, fraction 0 = the corpus alone."""

import numpy as np
import pytest
import torch

from genforge.data.copymix import CopyMix


class _Windows:
    """A batch source of constant windows (token 1 everywhere), so pasted spans are easy to find."""

    n_tokens = 123

    def get_batch(self, step, micro, rank, world):
        t = torch.ones(4, 65, dtype=torch.long)
        return {"input_ids": t[:, :-1], "labels": t[:, 1:]}


WORDS = list(range(100, 200))


def _spans(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) runs of pasted word tokens (>= 100) in a row."""
    runs, start = [], None
    for i, v in enumerate(list(row) + [0]):
        if v >= 100 and start is None:
            start = i
        elif v < 100 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_fraction_zero_is_the_corpus():
    mix = CopyMix(_Windows(), WORDS, 0.0)
    b = mix.get_batch(3, 0, 0, 1)
    assert (b["input_ids"] == 1).all() and mix.n_tokens == 123


def test_every_chosen_row_repeats_its_spans_and_is_a_pure_function_of_the_step():
    mix = CopyMix(_Windows(), WORDS, 1.0, seed=5, spans=2, max_len=12)
    a, b = mix.get_batch(7, 0, 0, 1), mix.get_batch(7, 0, 0, 1)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], mix.get_batch(8, 0, 0, 1)["input_ids"])
    full = torch.cat([a["input_ids"], a["labels"][:, -1:]], dim=1).numpy()
    lengths = set()
    for row in full:
        assert row[0] == 1  # position 0 (the document's <|bos|>) is never overwritten
        runs = _spans(row)
        # two copies per span; adjacent copies (gap 0) merge into one run of twice the length
        seqs = [row[s:e] for s, e in runs]
        pasted = np.concatenate(seqs)
        assert len(pasted) % 2 == 0 and len(pasted) >= 2 * 2 * 4
        for s, e in runs:
            lengths.add(e - s)
    assert len(lengths) > 1  # lengths vary, so copying cannot be learned by position


def test_one_process_two_microbatches_equals_two_processes():
    mix = CopyMix(_Windows(), WORDS, 0.5, seed=1)
    one = torch.cat([mix.get_batch(2, m, 0, 1)["input_ids"] for m in range(2)])
    two = torch.cat([mix.get_batch(2, 0, r, 2)["input_ids"] for r in range(2)])
    assert torch.equal(one, two)


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="copy fraction"):
        CopyMix(_Windows(), WORDS, 1.5)
