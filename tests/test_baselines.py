import numpy as np

from gr_lightning.baselines import most_popular_metrics
from gr_lightning.batch import JaggedBatch


def test_most_popular_ranks_by_training_counts_and_filters_history():
    counts = np.array([0, 50, 40, 30, 20, 10])  # item 1 most popular
    batch = JaggedBatch.from_sequences([[1], [2, 3], []], targets=[2, 1, 5])
    metrics = most_popular_metrics(counts, [batch])
    # user 0: item 1 filtered -> target 2 ranks 1st; user 1: target 1 ranks 1st; user 2: target 5 ranks 5th
    assert abs(float(metrics["hr_1"]) - 2 / 3) < 1e-6
    assert abs(float(metrics["mrr"]) - (1 + 1 + 1 / 5) / 3) < 1e-6
    unfiltered = most_popular_metrics(counts, [batch], filter_history=False)
    assert abs(float(unfiltered["hr_1"]) - 1 / 3) < 1e-6  # user 0's target now sits behind item 1
