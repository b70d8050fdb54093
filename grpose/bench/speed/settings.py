"""What the speed comparison runs: the full run (SD1.5-size model on one GPU) and the smoke run (tiny model, CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grpose.bench.model import POSE_NET_OVERRIDES, REAL, REAL_POSELOSS, TINY, TINY_POSELOSS_OVERRIDES
from grpose.bench.suites import GCN_LEVELS

# The switches off: the plain path whatever the YAML says.
PLAIN_OVERRIDES = (
    "model.params.frozen_dtype=null",
    "model.params.channels_last=false",
    "model.params.compile_blocks=false",
    "model.params.sample_cache_pose=false",
    "model.params.sample_cuda_graph=false",
    "model.params.adapter.params.knn_backend=torch",
    "model.params.unet.params.use_checkpoint=false",
)

# The cumulative training variant that equals configs/grpose/humanart.yaml (no adapter checkpointing, frozen bf16,
# kNN backend auto; cuDNN autotuning, channels-last and compile stay off there).
DEFAULT_TRAIN_VARIANT = "+ knn_backend=auto (triton on CUDA)"


@dataclass(frozen=True)
class SpeedSettings:
    """Model, sizes and repeats of each section of the speed comparison."""

    configs: tuple[Path, ...]
    pose_loss_configs: tuple[Path, ...]  # added to ``configs`` for the pose-loss step
    pose_loss_overrides: tuple[str, ...]
    image_size: int
    train_batch: int
    train_repeats: int
    train_warmup: int
    pose_loss_repeats: int
    fp32_check: bool  # also compare the plain fp32 gradient with the plain bf16 one
    sample_batch: int
    sample_steps: int
    check_steps: int  # steps of the short sample whose images are compared
    knn_levels: tuple[tuple[int, int], ...]  # (channels, feature-map size)
    knn_batch: int
    compile_backend: str


FULL = SpeedSettings(
    configs=(REAL,),
    pose_loss_configs=(REAL_POSELOSS,),
    pose_loss_overrides=POSE_NET_OVERRIDES,
    image_size=512,
    train_batch=6,
    train_repeats=5,
    train_warmup=2,
    pose_loss_repeats=3,
    fp32_check=True,
    sample_batch=8,
    sample_steps=50,
    check_steps=10,
    knn_levels=GCN_LEVELS,
    knn_batch=16,  # a CFG sampling step of batch 8
    compile_backend="inductor",
)

SMOKE = SpeedSettings(
    configs=(TINY,),
    pose_loss_configs=(),
    pose_loss_overrides=TINY_POSELOSS_OVERRIDES,
    image_size=64,
    train_batch=2,
    train_repeats=1,
    train_warmup=1,
    pose_loss_repeats=1,
    fp32_check=False,
    sample_batch=2,
    sample_steps=2,
    check_steps=2,
    knn_levels=((32, 8),),
    knn_batch=2,
    compile_backend="eager",  # dynamo tracing only: inductor codegen is the GPU's job
)
