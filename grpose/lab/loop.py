"""A small resumable training loop for the lab's pretraining stages (autoencoder, base UNet, pose estimator).

Deterministic on one machine type: every random draw comes from one ``torch.Generator`` seeded by the stage's
seed, the thread count is fixed by the config, and the whole state (weights, optimizer, EMA, generator, step)
is saved every ``save_every`` steps, so a killed run resumes to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from grpose.ema import ExponentialMovingAverage

log = logging.getLogger(__name__)

StepFn = Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def lr_at(step: int, learning_rate: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of ``learning_rate`` at ``total_steps``."""
    import math

    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def run_loop(
    name: str,
    module: nn.Module,
    step_fn: StepFn,
    steps: int,
    learning_rate: float,
    work_dir: str | Path,
    seed: int,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    ema_decay: float | None = None,
    grad_clip: float = 1.0,
    save_every: int = 200,
    log_every: int = 25,
    max_seconds: float | None = None,
) -> nn.Module:
    """Train ``module`` for ``steps`` AdamW steps of ``step_fn(step, generator) -> {loss terms}`` (summed).

    Resumes from ``work_dir/state.pt`` when present; logs to ``work_dir/log.csv``. Returns the trained module, holding
    the EMA weights when ``ema_decay`` is set. ``max_seconds`` stops early (state saved; rerun to continue) and
    sets ``module.stopped_at_step``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "state.pt"
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    ema = ExponentialMovingAverage({"": module}, ema_decay) if ema_decay else None
    generator = torch.Generator().manual_seed(seed)
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        log.info("%s: resumed from %s at step %d", name, state_path, start)

    def save(step: int) -> None:
        state = {
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "step": step,
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        tmp = state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(state_path)

    module.train()
    log_path = work_dir / "log.csv"
    running: dict[str, float] = {}
    tic = started = time.perf_counter()
    final = module.stopped_at_step = steps
    for step in range(start, steps):
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            log.warning(
                "%s: time budget of %.0f s reached at step %d of %d; state saved", name, max_seconds, step, steps
            )
            save(step)
            final = step
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, learning_rate, warmup_steps, steps)
        terms = step_fn(step, generator)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update()
        for key, value in terms.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            row = {
                "step": step + 1,
                **{k: v / n for k, v in running.items()},
                "sec_per_step": (time.perf_counter() - tic) / n,
            }
            new = not log_path.is_file()
            with open(log_path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
            log.info("%s step %d/%s: %s", name, step + 1, steps, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
            running, tic = {}, time.perf_counter()
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save(step + 1)
    if ema is not None:  # the exported weights are the average (the optimizer state stays in state.pt)
        module.load_state_dict(ema.shadow)
    module.stopped_at_step = final
    return module
