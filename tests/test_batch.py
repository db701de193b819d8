import pytest
import torch

from gr_lightning.batch import JaggedBatch


def test_from_sequences_layout():
    batch = JaggedBatch.from_sequences([[3, 4], [], [5, 6, 7]], targets=[1, 2, 3])
    assert batch.offsets.tolist() == [0, 2, 2, 5]
    assert batch.lengths.tolist() == [2, 0, 3]
    assert batch.max_len == 3 and batch.batch_size == 3
    assert batch.last_index().tolist() == [1, 1, 4]
    batch.validate()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"offsets": torch.tensor([1, 2, 5])}, "offsets\\[0\\] must be 0"),
        ({"offsets": torch.tensor([0, 3, 2])}, "non-decreasing"),
        ({"offsets": torch.tensor([0, 2, 4])}, "offsets\\[-1\\]=4 but there are 5 items"),
        ({"timestamps": torch.zeros(4, dtype=torch.long)}, "timestamps"),
        ({"max_len": 2}, "max_len=2 is below the longest sequence \\(3\\)"),
        ({"targets": torch.tensor([1])}, "targets must have shape \\(2,\\)"),
    ],
)
def test_validate_names_the_broken_invariant(change, message):
    batch = JaggedBatch.from_sequences([[1, 2], [3, 4, 5]])
    for key, value in change.items():
        setattr(batch, key, value)
    with pytest.raises(ValueError, match=message):
        batch.validate()
