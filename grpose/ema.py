"""Exponential moving average of trained weights (docs/design.md §7), shared by GRPose training and the lab.

The usual warm-up (as in timm / ldm's ``LitEma``): at update t the decay is min(decay, (1 + t) / (10 + t)), so the
first averages are not dominated by the initial weights. Buffers (e.g. BatchNorm statistics) are copied, not
averaged. Knows nothing of Lightning: the owner calls ``update`` after each optimizer step and stores
``state_dict()`` with its checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class ExponentialMovingAverage:
    """Shadow copies of ``modules``' parameters and buffers, keyed as in ``prefix + module.state_dict()``."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        """``modules``: {state-dict prefix: module}, e.g. {"control_model.": adapter}."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.modules = modules
        self.shadow = {key: t.detach().clone() for key, t in self._live(params=True).items()}
        self.shadow.update({key: t.detach().clone() for key, t in self._live(params=False).items()})

    def _live(self, params: bool) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in self.modules.items():
            names = {name for name, _ in module.named_parameters()}
            entries = module.state_dict(keep_vars=True).items()  # persistent buffers only, as checkpoints hold
            out.update({prefix + name: t for name, t in entries if (name in names) == params})
        return out

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """One step: shadow <- decay * shadow + (1 - decay) * live for parameters; buffers copied."""
        self.updates += 1
        decay = self.current_decay()
        params = self._live(params=True)
        shadows = [self.shadow[k] for k in params]
        torch._foreach_lerp_(shadows, [p.detach().to(s.dtype) for p, s in zip(params.values(), shadows)], 1.0 - decay)
        for key, buffer in self._live(params=False).items():
            self.shadow[key].copy_(buffer)

    def to(self, device: torch.device | str) -> ExponentialMovingAverage:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average; its keys must be exactly this average's (same trainable modules)."""
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        unexpected = sorted(set(state["shadow"]) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(
                f"EMA state does not fit the trainable weights: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.updates = int(state["updates"])
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the average into the live modules for the block, and the trained weights back afterwards."""
        live = {**self._live(params=True), **self._live(params=False)}
        saved = {key: t.detach().clone() for key, t in live.items()}
        with torch.no_grad():
            for key, t in live.items():
                t.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, t in live.items():
                    t.copy_(saved[key])
