"""Training callbacks: image grids, RNG state and config in checkpoints, a usable last.ckpt on Ctrl-C."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from grpose.checkpoint import read_checkpoint
from grpose.pose.skeleton import render_skeleton

log = logging.getLogger(__name__)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` steps on rank 0: a grid of pose image | sample | sample with skeleton | ground truth.

    Runs under no_grad in eval mode and restores train mode; at most ``max_images`` (4) rows, so it never
    causes an out-of-memory the training step would not.
    """

    def __init__(self, every_n_steps: int = 300, max_images: int = 4, num_steps: int = 20, out_dir: str | None = None):
        self.every_n_steps = every_n_steps
        self.max_images = min(max_images, 4)
        self.num_steps = num_steps
        self.out_dir = out_dir
        self._logged_step: int | None = None

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        self.log_batch(trainer, pl_module, batch, step)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        batch = getattr(self, "_last_batch", None)
        if batch is not None and self._logged_step != trainer.global_step:  # the last step's grid, unless written
            self.log_batch(trainer, pl_module, batch, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            self._last_batch = {k: v[: self.max_images] for k, v in batch.items()}

    def log_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Any], step: int) -> Path:
        n = min(self.max_images, len(batch["txt"]))
        was_training = pl_module.training
        pl_module.eval()
        try:
            hint = pl_module.batch_images(batch, "hint")[:n]
            generator = torch.Generator(device=hint.device).manual_seed(step)
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                samples = pl_module.sample(hint, list(batch["txt"][:n]), num_steps=self.num_steps, generator=generator)
        finally:
            pl_module.train(was_training)
        grid = self.make_grid(batch, samples, n)
        out_dir = Path(self.out_dir or os.path.join(trainer.default_root_dir, "images"))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step_{step:07d}.png"
        from PIL import Image

        Image.fromarray(grid).save(path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("train/samples", grid, step, dataformats="HWC")
        self._logged_step = step
        log.info("image grid written to %s", path)
        return path

    @staticmethod
    def make_grid(batch: dict[str, Any], samples: torch.Tensor, n: int) -> np.ndarray:
        """Rows of [pose image | sample | sample with skeleton | ground truth], uint8 (n·H, 4·W, 3)."""
        hints = _to_uint8(batch["hint"][:n].permute(0, 3, 1, 2))
        truth = _to_uint8(batch["jpg"][:n].permute(0, 3, 1, 2))
        generated = _to_uint8(samples)
        poses = batch["pose"][:n].cpu().numpy()
        rows = []
        for i in range(n):
            h, w = generated[i].shape[:2]
            overlay = render_skeleton(poses[i], h, w, canvas=generated[i].copy())
            rows.append(np.concatenate([hints[i], generated[i], overlay, truth[i]], axis=1))
        return np.concatenate(rows, axis=0)


def stored_config(checkpoint: Mapping[str, Any]) -> str | None:
    """The resolved config (YAML text) that ``ResumeState`` stored in a train.py checkpoint, or None."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("config_yaml"):
            return state["config_yaml"]
    return None


class ResumeState(pl.Callback):
    """Stores what plain Lightning checkpoints lack for an exact resume: every rank's RNG state and the config.

    On load, each rank gets its own RNG state back, so a resumed run draws the same timesteps and noise as an
    uninterrupted one. The resolved config is stored so a resume with another config fails early (train.py).
    """

    def __init__(self, config_yaml: str | None = None):
        self.config_yaml = config_yaml

    @staticmethod
    def _portable(states: dict[str, Any]) -> dict[str, Any]:
        """numpy's state holds an ndarray, which ``torch.load(weights_only=True)`` refuses: store it as a tensor."""
        kind, keys, pos, has_gauss, cached = states["numpy"]
        return {**states, "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached)}

    @staticmethod
    def _restored(states: dict[str, Any]) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        return {**states, "numpy": (kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached)}

    def state_dict(self) -> dict[str, Any]:
        states = self._portable(_collect_rng_states(include_cuda=torch.cuda.is_available()))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        return {"rng_states": gathered, "config_yaml": self.config_yaml}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's RNG state now: Lightning restores callbacks before it builds the first iterator."""
        self.config_yaml = state_dict.get("config_yaml", self.config_yaml)
        states = state_dict.get("rng_states")
        if not states:
            return
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        states = self._restored(dict(states[rank if rank < len(states) else 0]))
        if not torch.cuda.is_available():
            states.pop("torch.cuda", None)
        _set_rng_states(states)


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping one file, ``last.ckpt``: every ``every_n_steps`` steps
    (``every_n_train_steps``), on an exception such as Ctrl-C (``save_on_exception``), and at the end of training.

    The one addition: Lightning 2.6 writes the final ``last.ckpt`` at the end of training only when nothing was
    saved before (and then after the loop, with the RNG states advanced past the last batch), so a run of 600
    steps saving every 500 would end with a step-500 file; here the last step (``max_steps`` or the last epoch) is
    saved right after its batch, so ``--resume`` continues exactly where the run stopped. Written through
    ``trainer.save_checkpoint`` (rank 0 writes), it holds weights, optimizer, loop progress and (with ResumeState)
    the RNG states.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 500):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            every_n_train_steps=every_n_steps if every_n_steps > 0 else None,
            save_top_k=0,  # no other file: only the "last" one below
            save_last=True,
            save_on_exception=True,
            enable_version_counter=False,
        )

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, "last.ckpt")

    def _save_final(self, trainer: pl.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step:  # the last step, saved right after its batch (exact resume)
            self._save_final(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0:
            self._save_final(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if trainer.is_global_zero:
            log.warning(
                "%s at step %d: wrote %s (resume with --resume %s)",
                type(exception).__name__,
                trainer.global_step,
                self.path,
                self.path,
            )


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose loading (``trainer.fit(ckpt_path=...)``) runs no code from the file.

    Lightning 2.6 resumes through ``strategy.checkpoint_io.load_checkpoint`` -> ``torch.load``, with
    ``weights_only`` left to torch's default (and so to environment variables such as
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``). Here it goes through ``grpose.checkpoint.read_checkpoint``: weights-only
    or the restricted unpickler, and the whole checkpoint refused if any part needs more, unless the user trusts
    checkpoints (``--trust_checkpoint`` / ``GRPOSE_TRUST_CHECKPOINTS=1``). Saving is Lightning's.
    """

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")
