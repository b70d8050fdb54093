"""Speed switches: dtype names, native CPU bf16, regional torch.compile, and a CUDA-graphed DDIM denoiser step.

Each switch keeps the numbers of the plain path within bf16 rounding; ``GRPoseModel.configure_speed`` applies them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "32": torch.float32,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'bf16' / 'fp16' / 'fp32' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[key]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16, slower than
    fp32, so bf16-mixed is only worth it on such CPUs (docs/lab.md §6: a lab training step 1.31 s -> 0.83 s)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_for(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast a Lightning ``precision`` runs its forward passes under ("bf16-mixed": bf16, "16-mixed": fp16,
    else none), for sampling outside the Trainer (train.py's final evaluation, the lab study)."""
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if str(precision) not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtypes[str(precision)])


def compile_targets() -> tuple[type[nn.Module], ...]:
    """The repeated blocks that regional compilation compiles: every block with convs, norms and elementwise ops
    between graph-free boundaries (the kNN graph stays eager)."""
    from grpose.diffusion.attention import SpatialTransformer
    from grpose.diffusion.blocks import Downsample, ResBlock, Upsample

    return (ResBlock, SpatialTransformer, Downsample, Upsample)


def compile_blocks(model: nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """torch.compile each ResBlock / SpatialTransformer / Down- / Upsample of the UNet and adapter in place.

    Regional compilation: blocks of equal shapes (most of the UNet's, and the adapter's copies of the encoder)
    share one compiled graph, so compile time stays a fraction of compiling the whole model. Static shapes
    (``dynamic=False``) and a recompile limit of 64 per code object (one ResBlock code object serves ~30 shapes
    and dtype/requires-grad variants). Returns the number of compiled modules.
    """
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(64, getattr(config, name)))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(1024, config.accumulated_recompile_limit)
    targets = compile_targets()
    parts = [getattr(model, name) for name in ("unet", "control_model") if hasattr(model, name)]
    count = 0
    for part in parts:
        for module in part.modules():
            if isinstance(module, targets):
                module.compile(dynamic=False, mode=mode, backend=backend)
                count += 1
    return count


class GraphedDenoiser:
    """Replays ``denoiser(x, t, context)`` as one CUDA graph captured at the first call (static shapes).

    One DDIM step of the SD1.5-size model is several thousand kernel launches; their CPU cost exceeded the GPU time
    of the step on an H200. The first call warms up on a side stream, captures, then every call copies the inputs
    into the static buffers and replays. Autocast's weight cache is disabled during warm-up and capture: cast
    weights cached outside the graph's memory pool would be freed when autocast exits. The output is cloned, so a
    caller may keep it across calls. Any shape change recaptures.
    """

    def __init__(self, denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], warmup: int = 1):
        self.denoiser = denoiser
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.output: torch.Tensor | None = None
        self.captures = 0

    def _autocast(self, device: torch.device):
        enabled = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if enabled else None
        return torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)

    def _capture(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        self.static = (x.clone(), t.clone(), context.clone())
        self.graph = None
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream), self._autocast(x.device):
            for _ in range(self.warmup):
                self.denoiser(*self.static)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with self._autocast(x.device), torch.cuda.graph(graph):
            self.output = self.denoiser(*self.static)
        self.graph = graph
        self.captures += 1

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shapes = tuple((a.shape, a.dtype) for a in (x, t, context))
        if self.graph is None or shapes != tuple((a.shape, a.dtype) for a in self.static):
            self._capture(x, t, context)
        for static, value in zip(self.static, (x, t, context)):
            static.copy_(value)
        self.graph.replay()
        return self.output.clone()
