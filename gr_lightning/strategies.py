"""FSDP for generative recommenders: the wrap policy comes from the backbone, not from a hard-coded class list.

Which modules become FSDP units (each one's parameters sharded across ranks and gathered only while it
runs) is decided when the model is wrapped, from the model itself:

* every class returned by a backbone's optional ``fsdp_wrap_classes()`` hook, else every class that
  appears as an element of a backbone's ``blocks`` ``nn.ModuleList`` (HSTU blocks, SASRec blocks, and
  any zoo plugin that follows the convention);
* everything else (the embedding tables, input encoders, heads) belongs to the root unit: it is sharded
  across ranks at rest (parameters, gradients and optimizer state: 1/world each) and gathered for the
  whole training step, which is when :class:`~gr_lightning.module.GRModule` needs it: its sampled
  softmax and catalogue scoring read the item table's weight directly, outside the table's ``forward``;
* ``nn.Embedding`` as a unit of its own only with ``shard_embeddings=True``, for models that touch their
  tables only by calling them (FSDP swaps a unit's weights for flat shard views outside its ``forward``,
  so ``GRModule`` fails there).

With ``activation_checkpointing`` the same block classes are recomputed in the backward instead of
keeping their activations. Checkpoints are saved as a full state dict by default, so one device (or the
CLI's ``test``/``predict``) loads them as it would a DDP checkpoint.

YAML::

    trainer:
      strategy:
        class_path: gr_lightning.strategies.BackboneFSDPStrategy
        init_args:
          activation_checkpointing: true
          sharding_strategy: FULL_SHARD
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from gr_lightning.zoo import Backbone


def backbone_block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The module classes to wrap (and checkpoint) in every zoo backbone inside ``model``.

    Args:
        model: A LightningModule, a backbone, or anything containing backbones.

    Returns:
        The classes from each backbone's ``fsdp_wrap_classes()`` when it defines one, else the classes
        of the elements of its ``blocks`` ``nn.ModuleList``.

    Raises:
        ValueError: ``model`` holds no backbone, or a backbone exposes neither the hook nor ``blocks``.

    """
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    if not backbones:
        raise ValueError(f"{type(model).__name__} contains no gr_lightning.zoo.Backbone to derive an FSDP policy from")
    classes: set[type[nn.Module]] = set()
    for backbone in backbones:
        hook = getattr(backbone, "fsdp_wrap_classes", None)
        if callable(hook):
            found = set(hook())
        else:
            blocks = getattr(backbone, "blocks", None)
            found = {type(block) for block in blocks} if isinstance(blocks, nn.ModuleList) else set()
        if not found:
            raise ValueError(
                f"backbone {type(backbone).__name__} has no `blocks` nn.ModuleList and no fsdp_wrap_classes() hook;"
                " add one so FSDP knows its repeated layers"
            )
        classes |= found
    return classes


def wrap_classes(model: nn.Module, shard_embeddings: bool = False) -> set[type[nn.Module]]:
    """FSDP units of ``model``: the backbone's block classes, plus ``nn.Embedding`` with ``shard_embeddings``."""
    classes = backbone_block_classes(model)
    if shard_embeddings and any(isinstance(m, nn.Embedding) for m in model.modules()):
        classes.add(nn.Embedding)
    return classes


class BackboneFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with wrap and activation-checkpointing policies derived from the backbone.

    The policies are computed when the model is wrapped (see the module docstring).

    Args:
        activation_checkpointing: Recompute every backbone block in the backward pass.
        shard_embeddings: Make each ``nn.Embedding`` its own FSDP unit, gathered only inside its ``forward``
            (off: tables are in the root unit, sharded at rest and gathered for the step; ``GRModule`` needs
            that, see the module docstring).
        state_dict_type: ``full`` (default: checkpoints load on one device) or ``sharded``.
        **kwargs: Anything else ``FSDPStrategy`` takes (``sharding_strategy``, ``cpu_offload``,
            ``process_group_backend``, ...); ``auto_wrap_policy`` overrides the derived policy.

    """

    strategy_name = "gr_fsdp"

    def __init__(self, activation_checkpointing: bool = False, shard_embeddings: bool = False,
                 state_dict_type: str = "full", **kwargs: Any) -> None:
        self._explicit_policy = "auto_wrap_policy" in kwargs
        super().__init__(state_dict_type=state_dict_type, **kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.shard_embeddings = shard_embeddings

    def derive_policies(self, model: nn.Module) -> None:
        """Set the wrap (and activation-checkpointing) policies from ``model``'s backbone."""
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if not self._explicit_policy:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(wrap_classes(model, self.shard_embeddings))
        if self.activation_checkpointing:
            blocks = ModuleWrapPolicy(backbone_block_classes(model))
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": blocks}

    def _setup_model(self, model: nn.Module) -> nn.Module:
        self.derive_policies(model)
        return super()._setup_model(model)
