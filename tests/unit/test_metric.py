import math

import pytest

import taskvec


@pytest.mark.parametrize(
    "pred,label,expected",
    [(" Par", "Paris", True), ("Paris", "Par", True), ("Rome", "Paris", False), ("", "Paris", False),
     ("  ", "x", False), ("Paris", "", False), ("paris", "Paris", False), ("Canis", "Canis lupus", True)],
)
def test_prefix_match_both_ways(pred, label, expected):
    assert taskvec.is_correct(pred, label) is expected


def test_case_insensitive_option():
    assert taskvec.is_correct("paris", "Paris", case_sensitive=False)


def test_accuracy_and_majority():
    assert taskvec.accuracy(["Par", "Ber", "x"], ["Paris", "Rome", "y"]) == pytest.approx(1 / 3)
    assert math.isnan(taskvec.accuracy([], []))
    with pytest.raises(taskvec.TaskvecError, match="one label per prediction"):
        taskvec.accuracy(["a"], [])
    assert taskvec.majority(["b", "a", "a", "b", "c"]) == "b"
