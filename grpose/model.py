"""The GRPose LightningModule: wires the frozen SD1.5 parts, the trainable adapter, the schedule and the losses.

Longer than the project's usual 400 lines because it also holds sampling and the speed switches' plumbing
(``configure_speed``), which change how the parts are called; the switches' helpers live in grpose/speed.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf
from torch import nn

from grpose.diffusion.ddim import ddim_sample
from grpose.diffusion.schedule import make_beta_schedule, predict_x0_from_eps, q_sample, schedule_buffers
from grpose.ema import ExponentialMovingAverage
from grpose.pose.masks import pose_masks
from grpose.speed import GraphedDenoiser, compile_blocks, parse_dtype

log = logging.getLogger(__name__)

NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality"
)


def _dtype_of(module: nn.Module) -> torch.dtype:
    """dtype of a module's first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


compile_blocks_fn = compile_blocks


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step, the loss terms and the images."""


class _DiffusionWrapper(nn.Module):
    """Holds the UNet under the ldm name ``model.diffusion_model`` so SD1.5 checkpoints load unchanged."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model


class GRPoseModel(pl.LightningModule):
    """Frozen SD1.5 + a trainable pose adapter (GRPose, paper Sec. 3; docs/design.md §3, docs/checkpoints.md).

    State-dict layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.*``
    (CLIP text encoder), ``control_model.*`` (adapter) and the ldm schedule buffers. The optional pose feature
    network of the perception loss is frozen, loaded from its own file, and kept out of the state dict.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        adapter: nn.Module,
        pose_feature_network: nn.Module | None = None,
        timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        scale_factor: float = 0.18215,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.01,
        sd_locked: bool = True,
        alpha: float = 5.0,
        gaussian_kernels: Sequence[int] = (23, 13),
        mask_sigma: float = 3.0,
        percept_loss_weight: float = 0.0,
        nonfinite_loss: str = "raise",
        sample_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: str = NEGATIVE_PROMPT,
        frozen_dtype: str | None = None,
        channels_last: bool = False,
        compile_blocks: bool | str = False,
        sample_cache_pose: bool = False,
        sample_cuda_graph: bool = False,
        ema_decay: float | None = None,
    ) -> None:
        """Speed switches (README "Benchmarks"; each off = the plain path, see ``configure_speed``): ``frozen_dtype``
        stores the frozen parts in that dtype ("bf16", "fp16"; None keeps fp32 and lets autocast cast per op),
        ``channels_last`` puts UNet, adapter and VAE in NHWC, ``compile_blocks`` torch.compiles the repeated blocks
        (True or a torch.compile mode), ``sample_cache_pose`` computes the pose-only part of the adapter once per
        sample() call and ``sample_cuda_graph`` replays each DDIM step as one captured CUDA graph.

        ``ema_decay``: keep an exponential moving average of the trainable weights (docs/design.md §7; None = off,
        as released), stored in checkpoints; ``sample_with_ema = True`` makes ``sample`` use it.
        """
        super().__init__()
        # The scalar arguments go to checkpoints and loggers; the parts are modules built from the config, which
        # load_from_checkpoint rebuilds from the resolved config train.py stores with every checkpoint.
        self.save_hyperparameters(ignore=["unet", "vae", "text_encoder", "adapter", "pose_feature_network"])
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"model.params.nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        if percept_loss_weight > 0 and pose_feature_network is None:
            raise ValueError(
                "model.params.percept_loss_weight > 0 needs model.params.pose_feature_network "
                "(e.g. grpose.pose.features.PoseFeatureNetwork with the MobileNetV2 checkpoint)"
            )
        self.model = _DiffusionWrapper(unet)
        self.first_stage_model = vae
        self.cond_stage_model = text_encoder
        self.control_model = adapter
        # Kept outside the module tree: frozen, loaded from its own file, never checkpointed or wrapped by DDP.
        self._pose_net: list[nn.Module] = [pose_feature_network] if pose_feature_network is not None else []
        for name, value in schedule_buffers(make_beta_schedule("linear", timesteps, linear_start, linear_end)).items():
            self.register_buffer(name, value)
        self.num_timesteps = timesteps
        self.scale_factor = scale_factor
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.sd_locked = sd_locked
        self.alpha = alpha
        self.gaussian_kernels = tuple(gaussian_kernels)
        self.mask_sigma = mask_sigma
        self.percept_loss_weight = percept_loss_weight
        self.nonfinite_loss = nonfinite_loss
        self.sample_steps = sample_steps
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        self.num_skipped_batches = 0
        self.ema_decay = ema_decay
        self.ema: ExponentialMovingAverage | None = None  # created at fit start or from a checkpoint
        self.sample_with_ema = False
        self._negative_cache: dict[tuple, torch.Tensor] = {}
        self._freeze()
        self.frozen_dtype = self.channels_last = self.compile_blocks = None
        self.sample_cache_pose = self.sample_cuda_graph = False
        self.configure_speed(
            frozen_dtype=frozen_dtype,
            channels_last=channels_last,
            compile_blocks=compile_blocks,
            sample_cache_pose=sample_cache_pose,
            sample_cuda_graph=sample_cuda_graph,
        )

    def configure_speed(
        self,
        frozen_dtype: str | None = None,
        channels_last: bool | None = None,
        compile_blocks: bool | str | None = None,
        sample_cache_pose: bool | None = None,
        sample_cuda_graph: bool | None = None,
        knn_backend: str | None = None,
        cudnn_benchmark: bool | None = None,
    ) -> GRPoseModel:
        """Switch speed options on (None leaves one as it is); ``eval_pose.py --fast`` turns them all on
        (``grpose.evaluation.model_loading.load_model``).

        frozen_dtype: cast the frozen modules (VAE, text encoder, the UNet or its frozen encoder; not the pose
        network of the perception loss, which runs in fp32 with autocast off as released) to
        this dtype once, instead of autocast casting each weight at every op (15 % of the GPU time of a training
        step). Needs autocast in that dtype (bf16-mixed) on the trainable parts, as training and sampling use.
        knn_backend: the adapter's kNN implementation (``grpose.graph.knn.dense_knn``: torch, triton, auto).
        cudnn_benchmark: set ``torch.backends.cudnn.benchmark`` (process-wide: cuDNN times its algorithms per shape).
        """
        if frozen_dtype is not None and parse_dtype(frozen_dtype) != torch.float32:
            dtype = parse_dtype(frozen_dtype)
            for module in self._frozen_modules():
                if module is not self.pose_feature_network:  # runs in fp32 with autocast off, as released
                    module.to(dtype=dtype)
            self.frozen_dtype = str(frozen_dtype)
        if channels_last:
            for module in (self.unet, self.control_model, self.first_stage_model):
                module.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile_blocks:
            compile_blocks_fn(self, None if compile_blocks is True else str(compile_blocks))
            self.compile_blocks = compile_blocks
        if sample_cache_pose is not None:
            self.sample_cache_pose = bool(sample_cache_pose)
        if sample_cuda_graph is not None:
            self.sample_cuda_graph = bool(sample_cuda_graph)
        if knn_backend is not None:
            from grpose.graph.gcn import DynamicGraphConv
            from grpose.graph.knn import resolve_backend

            resolve_backend(knn_backend, torch.device("cpu"))  # checks the name
            for module in self.control_model.modules():
                if isinstance(module, DynamicGraphConv):
                    module.knn_backend = knn_backend
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        return self

    def _input(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """x in the dtype of a frozen module stored in ``frozen_dtype`` (and NHWC with channels_last)."""
        if self.frozen_dtype is not None and x.is_floating_point():
            x = x.to(_dtype_of(module))
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = "cpu", strict: bool = True, **params: Any
    ) -> GRPoseModel:
        """Rebuild the model of a train.py checkpoint, without its YAML file, and load the weights.

        Lightning's default calls ``cls(**hyper_parameters)``, but the parts (UNet, VAE, text encoder, adapter, pose
        network) are modules, not hyperparameters: the model is instead built from the ``model`` node of the
        resolved config stored in the checkpoint (``grpose.callbacks.stored_config``). ``params`` override entries
        of ``model.params`` (e.g. ``sample_steps=20``).
        """
        from grpose.callbacks import stored_config
        from grpose.config import instantiate

        checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
        config_yaml = stored_config(checkpoint)
        if config_yaml is None:
            raise ValueError(
                f"{checkpoint_path} holds no stored config (not written by train.py); build the model "
                "from its YAML config and load the weights with grpose.checkpoint.load_into"
            )
        node = OmegaConf.to_container(OmegaConf.create(config_yaml).model, resolve=True)
        node["params"].update(params)
        model = instantiate(node, "model")
        if not isinstance(model, cls):
            raise TypeError(f"{checkpoint_path} stores a {type(model).__name__}, not a {cls.__name__}")
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model

    # ------------------------------------------------------------------ parts and freezing
    @property
    def unet(self) -> nn.Module:
        return self.model.diffusion_model

    @property
    def latent_channels(self) -> int:
        return self.unet.in_channels

    @property
    def pose_feature_network(self) -> nn.Module | None:
        return self._pose_net[0] if self._pose_net else None

    def trainable_modules(self) -> list[nn.Module]:
        """The adapter, plus the UNet decoder (``output_blocks`` and ``out``) when ``sd_locked`` is False."""
        modules: list[nn.Module] = [self.control_model]
        if not self.sd_locked:
            modules += [self.unet.output_blocks, self.unet.out]
        return modules

    def _frozen_modules(self) -> list[nn.Module]:
        frozen = [self.first_stage_model, self.cond_stage_model]
        if self.pose_feature_network is not None:
            frozen.append(self.pose_feature_network)
        if self.sd_locked:
            frozen.append(self.unet)
        else:
            frozen += [self.unet.time_embed, self.unet.input_blocks, self.unet.middle_block]
        return frozen

    def _freeze(self) -> None:
        """The one place that freezes: frozen parts get ``requires_grad_(False)`` and stay in eval mode."""
        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> GRPoseModel:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for m in self.trainable_modules() for p in m.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP last hidden state (B, 77, context_dim)."""
        return self.cond_stage_model(list(prompts))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """VAE latent z0 = E(x)·scale_factor of images (B, 3, H, W) in [-1, 1]; a posterior sample as ldm."""
        posterior = self.first_stage_model.encode(self._input(images, self.first_stage_model))
        z = posterior.sample() if sample else posterior.mode()
        return z * self.scale_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in about [-1, 1] from latents; differentiable (used by the perception loss)."""
        return self.first_stage_model.decode(self._input(z / self.scale_factor, self.first_stage_model))

    def apply_model(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        hint: torch.Tensor | None,
        pose_cond: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """eps prediction of the frozen UNet steered by the adapter's 13 residuals (docs/design.md §3).

        ``pose_cond``: the adapter's ``pose_condition(hint)`` computed beforehand (Graph Pose Adapter only).
        """
        if self.channels_last:
            z_t = z_t.contiguous(memory_format=torch.channels_last)
            hint = None if hint is None else hint.contiguous(memory_format=torch.channels_last)
        if self.frozen_dtype is not None:  # no-ops under autocast; keep the adapter's inputs in its own dtype
            dtype = _dtype_of(self.control_model)
            z_in, ctx_in = z_t.to(dtype), context.to(dtype)
        else:
            z_in, ctx_in = z_t, context
        if pose_cond is not None:
            control = self.control_model(z_in, t, ctx_in, hint, pose_cond=pose_cond)
        else:
            control = self.control_model(z_in, t, ctx_in, hint)
        control = [self._input(c, self.unet) for c in control]
        return self.unet(self._input(z_t, self.unet), t, self._input(context, self.unet), control=control)

    @staticmethod
    def batch_images(batch: dict[str, Any], key: str) -> torch.Tensor:
        """(B, H, W, 3) channels-last arrays of the dataset -> (B, 3, H, W) contiguous float tensors."""
        x = batch[key]
        return x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.contiguous_format)

    # ------------------------------------------------------------------ losses
    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample loss terms of one training step (docs/design.md §3)."""
        images = self.batch_images(batch, "jpg")  # (B, 3, H, W) in [-1, 1]
        hint = self.batch_images(batch, "hint")  # (B, 3, H, W) in [-1, 1]
        z0 = self.encode_images(images)  # (B, 4, H/8, W/8)
        context = self.encode_text(batch["txt"])  # (B, 77, C)
        # Only the last kernel's mask weights the loss, as released (docs/release_behaviours.md §3.5).
        masks = pose_masks(hint, kernel_sizes=self.gaussian_kernels[-1:], sigma=self.mask_sigma)  # (1, B, H/8, W/8)
        mask = masks[-1].unsqueeze(1).to(z0.dtype)  # (B, 1, H/8, W/8)
        t = torch.randint(0, self.num_timesteps, (z0.shape[0],), device=z0.device)
        noise = torch.randn_like(z0)
        z_t = q_sample(z0, t, noise, self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod)
        eps = self.apply_model(z_t, t, context, hint)
        weight = mask * self.alpha + (1.0 - mask)  # alpha inside the pose region, 1 outside
        loss_simple = (weight * (eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
        terms = {"loss_simple": loss_simple}
        if self.percept_loss_weight > 0:
            terms["loss_pose"] = self.pose_perception_loss(z_t, t, eps, images)
        return terms

    def pose_perception_loss(
        self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """w · ᾱ_t · ||F(D(x̂0)) − F(x)||² per sample (paper Sec. 3.3), differentiable w.r.t. the adapter.

        x̂0 is predicted from eps, decoded by the frozen VAE and fed to the frozen pose network F; gradients
        flow through both into eps (the released code detached this term, docs/release_behaviours.md Q1).
        """
        pose_net = self.pose_feature_network
        pose_net.to(device=images.device)
        x0 = predict_x0_from_eps(z_t, t, eps, self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod)
        predicted = self.decode_latents(x0)  # (B, 3, H, W)
        with torch.no_grad():
            target = pose_net(images.float())
        features = pose_net(predicted.float())  # (B, 1280, H/32, W/32)
        per_sample = F.mse_loss(features.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return self.percept_loss_weight * self.alphas_cumprod[t] * per_sample

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        # Skipping a bad batch must also undo what its forward did to BatchNorm running statistics (GCN blocks).
        saved = [(b, b.detach().clone()) for b in self.control_model.buffers()] if self.nonfinite_loss == "skip" else []
        terms = self.compute_losses(batch)
        loss = sum(terms.values()).mean()
        if not torch.isfinite(loss):
            for buffer, value in saved:
                buffer.copy_(value)
            return self._handle_nonfinite(loss, terms, batch)
        bs = len(batch["txt"])
        for name, value in terms.items():
            self.log(f"train/{name}", value.mean(), prog_bar=name == "loss_simple", batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def _handle_nonfinite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch: dict) -> None:
        values = {k: v.detach().float().cpu().tolist() for k, v in terms.items()}
        message = (
            f"non-finite loss {loss.item()} at global step {self.global_step}: terms {values}; "
            f"images {list(batch.get('img_path', []))}"
        )
        if self.nonfinite_loss == "raise":
            raise NonFiniteLossError(message + " (set model.params.nonfinite_loss=skip to skip such batches)")
        self.num_skipped_batches += 1
        log.warning("skipping batch: %s", message)
        return None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for m in self.trainable_modules() for p in m.parameters()]
        # The fused CUDA kernel: the foreach AdamW step took 14 ms of a 230 ms step on an H200 (batch 6).
        fused = all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay, fused=fused)

    def on_fit_start(self) -> None:
        if self._ensure_ema() is not None:  # after a resume it holds the checkpoint's average already
            self.ema.to(self.device)
        if self.compile_blocks:
            log.warning(
                "compile_blocks is on for training: on an H200 it was slower than eager and the adapter gradient "
                "differed from the plain path by 67 %% (README 'Benchmarks'); use it for sampling"
            )
        rank_zero_info(
            f"GRPose: {self.num_trainable_parameters() / 1e6:.2f} M trainable parameters "
            f"(sd_locked={self.sd_locked}), learning rate {self.learning_rate:g}"
        )

    def on_train_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        skipped = getattr(getattr(datamodule, "train_dataset", None), "num_skipped", 0) if datamodule else 0
        if skipped:
            self.log("train/skipped_entries", float(skipped), rank_zero_only=True)

    # ------------------------------------------------------------------ moving average (docs/design.md §7)
    def trainable_state_modules(self) -> dict[str, nn.Module]:
        """The trainable modules under their state-dict prefixes: the keys of the average and of a slim export."""
        modules = {"control_model.": self.control_model}
        if not self.sd_locked:
            modules.update({"model.diffusion_model.output_blocks.": self.unet.output_blocks})
            modules.update({"model.diffusion_model.out.": self.unet.out})
        return modules

    def _ensure_ema(self) -> ExponentialMovingAverage | None:
        if self.ema_decay and self.ema is None:
            self.ema = ExponentialMovingAverage(self.trainable_state_modules(), self.ema_decay)
        return self.ema

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then one update of the average: once per optimizer step (not per accumulated
        micro-batch), and before the step's checkpoint callbacks run, so ``last.ckpt`` holds an exact average."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the average exactly; a checkpoint without one (or ``ema_decay`` unset) starts none."""
        if self.ema_decay and "ema" in checkpoint:
            self._ensure_ema().load_state_dict(checkpoint["ema"])

    # ------------------------------------------------------------------ sampling
    def sample(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``_sample`` (DDIM + CFG), with the moving average swapped in when ``sample_with_ema`` is set."""
        if self.sample_with_ema and self.ema is not None:
            with self.ema.applied():
                return self._sample(*args, **kwargs)
        return self._sample(*args, **kwargs)

    @torch.no_grad()
    def _sample(
        self,
        hint: torch.Tensor,
        prompts: Sequence[str],
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        use_adapter: bool = True,
    ) -> torch.Tensor:
        """DDIM with classifier-free guidance (text only, same hint in both branches; docs/release_behaviours.md §11).

        hint (B, 3, H, W) in [-1, 1]; returns images (B, 3, H, W) in [-1, 1]. ``use_adapter=False`` samples the
        frozen base model alone (the hint is then unused): the floor every pose-control number is compared with.
        """
        b, _, h, w = hint.shape
        if noise is None:
            noise = torch.randn((b, self.latent_channels, h // 8, w // 8), generator=generator, device=hint.device)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        context = self.encode_text(prompts)
        uncond = None
        if scale != 1.0:
            neg = self.negative_prompt if negative_prompt is None else negative_prompt
            uncond = self.negative_context(neg, b)
        pose_cond = None
        if self.sample_cache_pose and hasattr(self.control_model, "pose_condition"):
            pose_cond = self.control_model.pose_condition(
                hint.contiguous(memory_format=torch.channels_last) if self.channels_last else hint
            )
        repeated: dict[int, tuple] = {}  # the hint / pose condition tiled for the CFG batch, made once

        def denoiser(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            if not use_adapter:
                return self.unet(self._input(x, self.unet), t, self._input(ctx, self.unet))
            repeat = x.shape[0] // b  # 2 when cond and uncond run in one batch
            if repeat not in repeated:
                if pose_cond is None:
                    repeated[repeat] = (hint.repeat(repeat, 1, 1, 1), None)
                else:
                    repeated[repeat] = (None, {i: v.repeat(repeat, 1, 1, 1) for i, v in pose_cond.items()})
            tiled_hint, tiled_cond = repeated[repeat]
            return self.apply_model(x, t, ctx, tiled_hint, pose_cond=tiled_cond)

        if self.sample_cuda_graph and hint.is_cuda:
            denoiser = GraphedDenoiser(denoiser)

        z = ddim_sample(
            denoiser,
            noise.to(hint.device),
            context,
            self.alphas_cumprod,
            num_steps=num_steps or self.sample_steps,
            eta=eta,
            guidance_scale=scale,
            uncond_context=uncond,
            generator=generator,
            progress=progress,
        )
        return self.decode_latents(z).clamp(-1, 1)

    @torch.no_grad()
    def negative_context(self, prompt: str, batch: int) -> torch.Tensor:
        """The negative prompt's embedding (batch, 77, C), computed once per run (text encoder frozen) and expanded.

        Keyed by prompt, device, dtype and the version counter of the token embedding, so loading new text-encoder
        weights (an in-place copy) recomputes it.
        """
        first = next(self.cond_stage_model.parameters(), None)
        autocast = torch.is_autocast_enabled(self.device.type)
        key = (prompt, str(self.device), autocast, None if first is None else (first.dtype, first._version))
        if key not in self._negative_cache:
            self._negative_cache = {key: self.encode_text([prompt])}
        return self._negative_cache[key].expand(batch, -1, -1)
