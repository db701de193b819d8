import pytest
import torch

from gr_lightning.ops import jagged


@pytest.fixture(params=[True, False], ids=["fbgemm", "torch"])
def backend(request, monkeypatch):
    if request.param and not jagged.HAS_FBGEMM:
        pytest.fail("fbgemm_gpu is part of the CI install ([cpu] extra) but did not load")
    monkeypatch.setattr(jagged, "HAS_FBGEMM", request.param)
    return request.param


def test_round_trip_and_padding(backend):
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 3, 3, 4, 9])
    values = torch.randn(9, 2, 5, generator=gen)
    dense = jagged.jagged_to_padded(values, offsets, 5, padding_value=-7.0)
    assert dense.shape == (4, 5, 2, 5)
    assert torch.equal(dense[0, :3], values[:3])
    assert (dense[1] == -7.0).all()
    assert (dense[0, 3:] == -7.0).all()
    assert torch.equal(dense[3], values[4:9])
    assert torch.equal(jagged.padded_to_jagged(dense, offsets, 9), values)


def test_gradients_flow_back_to_values(backend):
    offsets = torch.tensor([0, 2, 5])
    values = torch.randn(5, 3, requires_grad=True)
    dense = jagged.jagged_to_padded(values, offsets, 3)
    weight = torch.randn_like(dense)
    (dense * weight).sum().backward()
    expected = torch.cat([weight[0, :2], weight[1, :3]])
    torch.testing.assert_close(values.grad, expected)


def test_seq_index():
    seq, pos = jagged.seq_index(torch.tensor([0, 2, 2, 5]), 5)
    assert seq.tolist() == [0, 0, 2, 2, 2]
    assert pos.tolist() == [0, 1, 0, 1, 2]


def test_max_length():
    lengths = torch.randint(0, 9, (6,), generator=torch.Generator().manual_seed(3))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    assert jagged.max_length(offsets) == int(lengths.max())
    assert jagged.max_length(torch.tensor([0, 0, 0])) == 0  # sequences may be empty
    assert jagged.max_length(torch.tensor([5])) == 0  # an empty batch
    assert isinstance(jagged.max_length(offsets.int()), int)


@pytest.mark.parametrize("offsets", [torch.tensor(3), torch.zeros(0, dtype=torch.long), torch.zeros(2, 2)],
                         ids=["0-d", "empty", "2-d"])
def test_max_length_rejects_offsets_that_are_not_1d_with_an_element(offsets):
    with pytest.raises(ValueError, match=r"offsets must be 1-D with at least one element .* got shape"):
        jagged.max_length(offsets)
