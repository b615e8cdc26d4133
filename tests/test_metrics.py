import pytest
import torch

from smec_fast.metrics import confusion_matrix, summarize


def test_confusion_matrix_and_metrics_by_hand():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    m = summarize(cm, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(500 / 7)
    # recalls 3/4, 1/2, 1/1; class d has no test samples and is left out
    assert m["balanced_accuracy"] == pytest.approx(100 * (0.75 + 0.5 + 1.0) / 3)
    assert m["per_class_accuracy"] == {"a": 75.0, "b": 50.0, "c": 100.0, "d": None}
