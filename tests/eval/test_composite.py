import pytest

from genforge.errors import DataError
from genforge.eval.composite import composite_items, normalise


def test_normalise_anchors():
    assert normalise(0.25, 0.25) == 0.0 and normalise(1.0, 0.25) == 1.0
    assert normalise(0.0, 0.5) == pytest.approx(-1.0)
    with pytest.raises(DataError):
        normalise(0.5, 1.0, 1.0)


def test_tasks_weigh_equally_whatever_their_size():
    items, per_task = composite_items({"a": [1.0] * 10, "b": [0.0, 0.0]})
    assert per_task == {"a": 1.0, "b": 0.0}
    assert sum(items) / len(items) == pytest.approx(0.5)
    items, per_task = composite_items({"mc": [1, 0, 0, 0]}, low={"mc": 0.25})
    assert per_task["mc"] == pytest.approx(0.0)
