"""The settings of each suite (cpu: tiny model; gpu: SD1.5-size model, bf16) and of their one-step smoke variants."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from grpose.bench.model import POSE_NET_OVERRIDES, REAL, REAL_POSELOSS, TINY, TINY_POSELOSS_OVERRIDES

# Real PGI levels of configs/grpose/humanart.yaml: (channels, feature-map size) at 512 px (64x64 latents).
GCN_LEVELS = ((320, 64), (640, 32), (1280, 16), (1280, 8))
# (pose loss, activation checkpointing) of each training-step model, in the order they run.
ALL_TRAIN_VARIANTS = ((False, False), (False, True), (True, False), (True, True))


@dataclass(frozen=True)
class PoseSettings:
    """Pose estimator section: network images/s and grouping ms/image (``pose.benchmark_pose_estimator``)."""

    num_images: int
    batch_size: int
    input_size: int = 512
    arch: str = "higherhrnet_w48"
    num_people: int = 30
    warmup: int = 1


@dataclass(frozen=True)
class GraphSettings:
    """Graph section: the GCN block at each (channels, size) level (``graph.benchmark_gcn``)."""

    levels: tuple[tuple[int, int], ...]
    batch: int
    repeats: int
    warmup: int


@dataclass(frozen=True)
class DataSettings:
    """Data section: PoseDataset on generated Human-Art-sized JPEGs (``data.benchmark_dataset``)."""

    num_images: int = 8
    num_samples: int = 32
    warmup: int = 2
    image_size: int = 512


@dataclass(frozen=True)
class Suite:
    """Everything a suite's sections read: device, model, sizes, repeats, and which extras run."""

    name: str
    device: str
    configs: tuple[Path, ...]
    pose_loss_configs: tuple[Path, ...]  # added to ``configs`` for the training step with the pose loss
    pose_loss_overrides: tuple[str, ...]
    model: str
    precision: str
    eval_label: str
    image_size: int
    train_batch_sizes: tuple[int, ...]
    train_variants: tuple[tuple[bool, bool], ...]
    repeats: int
    warmup: int
    sample_batch_sizes: tuple[int, ...]
    sample_steps: int
    sample_warmup: int
    pose: PoseSettings
    graph: GraphSettings
    data: DataSettings
    compile: bool  # --compile may add the torch.compile'd sampling variant
    speed: bool  # the optional 'speed' section may run
    targets: bool  # the README targets are checked

    def smoke(self) -> Suite:
        """One step of everything at tiny sizes (the test): the plain step and the step with everything on."""
        return dataclasses.replace(
            self,
            train_batch_sizes=self.train_batch_sizes[:1],
            train_variants=((False, False), (True, True)),
            repeats=1,
            warmup=0,
            sample_batch_sizes=(1,),
            sample_steps=1,
            sample_warmup=0,
            # the small MobileNetV2 AE model through the same code (HigherHRNet-W48's first CPU call takes ~15 s)
            pose=PoseSettings(num_images=1, batch_size=1, input_size=128, arch="mobilenetv2", num_people=5, warmup=0),
            graph=GraphSettings(levels=((64, 16),), batch=2, repeats=1, warmup=0),
            data=DataSettings(num_images=2, num_samples=2, warmup=0),
            compile=False,
            speed=False,
            targets=False,
        )


CPU_SUITE = Suite(
    name="cpu",
    device="cpu",
    configs=(TINY,),
    pose_loss_configs=(),
    pose_loss_overrides=TINY_POSELOSS_OVERRIDES,
    model="tiny",
    precision="fp32",
    eval_label="TINY model at 64 px on CPU (not the real model)",
    image_size=64,
    train_batch_sizes=(2,),
    train_variants=ALL_TRAIN_VARIANTS,
    repeats=5,
    warmup=2,
    sample_batch_sizes=(1, 4),
    sample_steps=50,
    sample_warmup=1,
    pose=PoseSettings(num_images=2, batch_size=1),
    # level 1 only (the others take minutes on 2 cores and add little)
    graph=GraphSettings(levels=GCN_LEVELS[:1], batch=2, repeats=2, warmup=1),
    data=DataSettings(),
    compile=True,
    speed=False,
    targets=False,
)

GPU_SUITE = Suite(
    name="gpu",
    device="cuda",
    configs=(REAL,),
    pose_loss_configs=(REAL_POSELOSS,),
    pose_loss_overrides=POSE_NET_OVERRIDES,
    model="sd15-size",
    precision="bf16-autocast",
    eval_label="SD1.5-size GRPose, bf16, this GPU",
    image_size=512,
    train_batch_sizes=(1, 2, 6),
    train_variants=ALL_TRAIN_VARIANTS,
    repeats=5,
    warmup=2,
    sample_batch_sizes=(1, 4, 8),
    sample_steps=50,
    sample_warmup=1,
    pose=PoseSettings(num_images=64, batch_size=8),
    graph=GraphSettings(levels=GCN_LEVELS, batch=6, repeats=5, warmup=2),
    data=DataSettings(),
    compile=True,
    speed=True,
    targets=True,
)

SUITES = {suite.name: suite for suite in (CPU_SUITE, GPU_SUITE)}


def suite_settings(name: str, smoke: bool) -> Suite:
    """The named suite, or its smoke variant."""
    suite = SUITES[name]
    return suite.smoke() if smoke else suite
