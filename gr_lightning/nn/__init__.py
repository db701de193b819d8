"""Model parts around the backbone: input encoding and prediction heads."""

from gr_lightning.nn.input_encoding import PositionalInputEncoder
from gr_lightning.nn.retrieval import SampledSoftmaxLoss, next_item_targets

__all__ = ["PositionalInputEncoder", "SampledSoftmaxLoss", "next_item_targets"]
