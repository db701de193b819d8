"""The FSDP wrap policy is derived from the backbone. (A CPU FSDP run is impossible: torch's FSDP refuses to
initialise without an accelerator, "FSDP needs a non-CPU accelerator device", so the wrapped run is GPU work.)"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import FSDPPrecision
from torch import nn
from torch.distributed.fsdp import MixedPrecision

from gr_lightning.cli import main
from gr_lightning.module import GRModule
from gr_lightning.strategies import BackboneFSDPStrategy, backbone_block_classes, wrap_classes
from gr_lightning.zoo import Backbone
from gr_lightning.zoo.hstu import HSTU, HSTUBlock
from gr_lightning.zoo.sasrec import SASRec, _SASRecBlock
from tests.conftest import REPO_ROOT


def _module(backbone) -> GRModule:
    return GRModule(backbone, num_items=50, max_seq_len=8, embedding_dim=8)


def test_policy_wraps_each_backbone_block_class_and_the_embedding_table():
    hstu = _module(partial(HSTU, num_blocks=3, num_heads=2, attention_dim=4, linear_dim=4))
    assert backbone_block_classes(hstu) == {HSTUBlock}
    assert wrap_classes(hstu) == {HSTUBlock}  # tables stay in the root unit: GRModule reads them outside forward
    assert wrap_classes(hstu, shard_embeddings=True) == {HSTUBlock, nn.Embedding}
    sasrec = _module(partial(SASRec, num_blocks=2, num_heads=2))
    assert backbone_block_classes(sasrec) == {_SASRecBlock}


class _Hooked(Backbone):
    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__(dim, max_seq_len)
        self.layers = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim))

    def fsdp_wrap_classes(self) -> set[type[nn.Module]]:
        return {nn.Linear}

    def forward(self, x, offsets, max_len, timestamps, query_times=None):
        return self.layers(x)


class _Flat(_Hooked):
    fsdp_wrap_classes = None  # neither the hook nor `blocks`


def test_backbone_hook_overrides_the_blocks_convention_and_its_absence_is_an_error():
    assert backbone_block_classes(_module(_Hooked)) == {nn.Linear}
    with pytest.raises(ValueError, match="fsdp_wrap_classes"):
        backbone_block_classes(_module(_Flat))
    with pytest.raises(ValueError, match=r"no gr_lightning\.zoo\.Backbone"):
        backbone_block_classes(nn.Linear(2, 2))


def test_strategy_derives_wrap_and_checkpointing_policies_from_the_model():
    model = _module(partial(HSTU, num_blocks=2, num_heads=1, attention_dim=4, linear_dim=4))
    strategy = BackboneFSDPStrategy(activation_checkpointing=True, shard_embeddings=True)
    strategy.derive_policies(model)
    assert set(strategy.kwargs["auto_wrap_policy"]._module_classes) == {HSTUBlock, nn.Embedding}
    assert set(strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes) == {HSTUBlock}
    assert strategy._state_dict_type == "full"  # checkpoints load on one device
    plain = BackboneFSDPStrategy()
    plain.derive_policies(model)
    assert plain._activation_checkpointing_kwargs == {}
    assert set(plain.kwargs["auto_wrap_policy"]._module_classes) == {HSTUBlock}


def _mixed_precision(precision: str, **kwargs) -> MixedPrecision | None:
    strategy = BackboneFSDPStrategy(**kwargs)
    strategy.precision_plugin = FSDPPrecision(precision)
    return strategy.mixed_precision_config


def _dtypes(config: MixedPrecision) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    return config.param_dtype, config.reduce_dtype, config.buffer_dtype


def test_mixed_precision_gathers_and_reduces_float32_by_default_as_ddp_does():
    fp32, bf16, fp16 = torch.float32, torch.bfloat16, torch.float16
    assert _dtypes(_mixed_precision("bf16-mixed")) == (fp32, fp32, fp32)  # autocast computes in bf16
    assert _dtypes(_mixed_precision("16-mixed")) == (fp32, fp32, fp32)
    assert _dtypes(_mixed_precision("bf16-mixed", param_dtype="bfloat16")) == (bf16, bf16, bf16)  # Lightning's
    assert _dtypes(_mixed_precision("16-mixed", param_dtype="float16")) == (fp16, fp16, fp16)
    for precision in ("32-true", "bf16-true"):  # the "-true" precisions keep Lightning's config
        lightning_default = FSDPPrecision(precision).mixed_precision_config
        assert _dtypes(_mixed_precision(precision)) == _dtypes(lightning_default)
    assert _dtypes(_mixed_precision("32-true", param_dtype="float32")) == (fp32, fp32, fp32)


def test_an_explicit_mixed_precision_object_wins_over_param_dtype():
    mine = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert _mixed_precision("bf16-mixed", mixed_precision=mine) is mine
    assert _mixed_precision("bf16-mixed", mixed_precision=mine, param_dtype="float16") is mine


def test_bad_param_dtype_is_an_error_naming_the_allowed_values():
    with pytest.raises(ValueError, match=r"param_dtype='bf16'.*\['bfloat16', 'float16', 'float32'\]"):
        BackboneFSDPStrategy(param_dtype="bf16")
    with pytest.raises(ValueError, match="param_dtype='float32' under precision='bf16-true'"):
        _mixed_precision("bf16-true", param_dtype="float32")


def test_strategy_and_precision_are_chosen_in_yaml(capsys):
    args = ["fit", "--config", str(REPO_ROOT / "conf" / "demo.yaml"), "--trainer.precision=bf16-mixed",
            "--trainer.num_nodes=2", "--trainer.strategy=gr_lightning.strategies.BackboneFSDPStrategy",
            "--trainer.strategy.activation_checkpointing=true", "--trainer.strategy.param_dtype=bfloat16",
            "--print_config"]
    with pytest.raises(SystemExit):
        main(args)
    config = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert config["strategy"]["class_path"] == "gr_lightning.strategies.BackboneFSDPStrategy"
    assert config["strategy"]["init_args"]["activation_checkpointing"] is True
    assert config["strategy"]["init_args"]["param_dtype"] == "bfloat16"
    assert config["precision"] == "bf16-mixed" and config["num_nodes"] == 2


def test_flop_estimate_reads_layer_shapes_not_weights_that_fsdp_flattens_into_shards():
    from gr_lightning.callbacks import backbone_flops

    backbone = HSTU(16, 8, num_blocks=2, num_heads=2, attention_dim=4, linear_dim=4)
    before = backbone_flops(backbone, tokens=40, sum_sq_len=300)
    for module in backbone.modules():
        if isinstance(module, nn.Linear):  # what FSDP leaves outside a unit's forward: a flat view of this rank's shard
            module.weight.data = module.weight.data.flatten()[: module.weight.numel() // 2]
    assert backbone_flops(backbone, tokens=40, sum_sq_len=300) == before
