"""The soft-updated "old" policy of the forward-process algorithms (DiffusionNFT's ``old`` adapter, AWM's "ema"
adapter): a copy of the trainable weights, equal to them at the start, moved toward them after each epoch, and a
plain transformer with those weights merged for rollouts and ``v_old`` predictions."""

from __future__ import annotations

import torch

from .lora import merged_transformer


class OldPolicy:
    """The old weights of the trainer ``tr``'s trainable tensors (same names as ``tr.params``)."""

    def __init__(self, trainer):
        self.tr = trainer
        # laid out as the EMA: FSDP2 shards, else whole (the float32 master weights under DeepSpeed's bf16)
        with trainer.policy.current() as cur:
            self.weights = {n: v.clone() for n, v in cur.items()}
        self._model = None  # a plain transformer with the old weights merged, rebuilt only when they moved
        self._stale = True

    def model(self):
        """The plain transformer with the old weights merged (exact: the old weights do not change within an
        epoch); rebuilt only after :meth:`soft_update` or :meth:`load` moved them."""
        if self._stale or self._model is None:
            with self.tr.swapped_weights(self.weights):
                self._model = merged_transformer(self.tr.raw_transformer, into=self._model)
            self._stale = False
        return self._model

    @torch.no_grad()
    def soft_update(self, decay: float) -> None:
        """``old = decay * old + (1 - decay) * current``."""
        with self.tr.policy.current() as cur:
            for n, v in cur.items():
                self.weights[n].mul_(decay).add_(v, alpha=1 - decay)
        self._stale = True

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The old weights as whole float32 CPU tensors: ``old.safetensors`` in each checkpoint (exact resume)."""
        return {"old": self.tr.policy.as_whole(self.weights)}

    def load(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore :meth:`state_tensors`."""
        self.weights = self.tr.policy.laid_out(tensors["old"])
        self._stale = True
