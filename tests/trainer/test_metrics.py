import numpy as np
import pytest

from trainer.metrics import classification_metrics, sentiment_metrics


def test_classification_metrics_by_hand():
    truth, predicted = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    result = classification_metrics(truth, predicted, 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per class precision 1/2, 2/3, 1; recall 1/2, 1, 1/2
    assert result["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert result["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_sentiment_metrics_follow_mmsa_definitions():
    truth = np.array([-2.6, -1.0, 0.0, 0.4, 1.6, 3.0])
    predicted = np.array([-1.8, 0.2, -0.3, 0.6, 2.4, 2.2])
    result = sentiment_metrics(truth, predicted)
    # has0: negative vs >= 0 over all six: sample 2 (-1.0 -> 0.2) and sample 3 (0.0 -> -0.3) are wrong
    assert result["acc2_has0"] == pytest.approx(4 / 6)
    # non0 drops the true 0: five samples, only -1.0 -> 0.2 is wrong
    assert result["acc2_non0"] == pytest.approx(4 / 5)
    # acc7: rounded classes truth [-3,-1,0,0,2,3] vs predicted [-2,0,0,1,2,2]
    assert result["acc7"] == pytest.approx(2 / 6)
    # acc5 clips to [-2, 2]: truth [-2,-1,0,0,2,2] vs predicted [-2,0,0,1,2,2]
    assert result["acc5"] == pytest.approx(4 / 6)
    assert result["mae"] == pytest.approx(np.mean(np.abs(truth - predicted)))
