"""Lab stage 3: train the bottom-up pose estimator (MobileNetV2 + associative-embedding head) on lab images.

Losses of Newell et al. 2017 (associative embedding) as mmpose 0.x trains bottom-up models: per-joint Gaussian
heatmaps (MSE) plus the tag pull/push loss (``exp`` push). Inputs go through the estimator's own preprocessing
(``BottomUpPoseEstimator.preprocess``), so training and inference see identical tensors (docs/lab.md §3).

Every image the estimator judges in the lab is a decode of the lab autoencoder, whose round trip blurs thin limbs
far more than SD1.5's VAE does; ``round_trip_fraction`` of the training images are therefore replaced by their own
round trip through the lab autoencoder (same keypoints), so the estimator learns the domain it scores (§3).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from grpose.diffusion.autoencoder import AutoencoderKL
from grpose.pose.estimator import BottomUpPoseEstimator
from grpose.pose.skeleton import COCO_FLIP_INDEX


def heatmap_targets(
    poses: np.ndarray,
    image_size: int,
    input_size: int,
    heatmap_size: int,
    sigma: float,
    threshold: float,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of a batch of poses (B, P, 17, 3) in image pixels, for square images of ``image_size`` resized to
    the network input ``input_size`` and heatmaps of ``heatmap_size``, computed on ``device``.

    The joint's heatmap position mirrors inference: heatmaps are upsampled to the input size by bilinear
    interpolation with ``align_corners=False`` (docs/pose_pipeline.md), under which heatmap cell u lands on input
    pixel stride·u + (stride - 1)/2; so the target sits at u = (input position - (stride - 1)/2) / stride.

    Returns heatmaps (B, 17, h, h) (max over people of a Gaussian at each joint), joint positions (B, P', 17) as
    flat heatmap indices, and a visibility mask (B, P', 17); a joint counts when its score > ``threshold`` and it
    lies inside the image. P' <= P drops the trailing person slots that no image of the batch uses (the dataset
    pads every image to its maximum number of people), which keeps the (B, P', 17, h, h) Gaussians small.
    """
    pose = torch.as_tensor(np.asarray(poses, dtype=np.float32), device=device)
    b, _, k, _ = pose.shape
    slot_used = (pose[..., 2] > 0).any(-1).any(0)  # (P,) a person slot with any joint in some image
    used = int(slot_used.nonzero().max()) + 1 if bool(slot_used.any()) else 0
    pose = pose[:, :used]  # (B, P', 17, 3)
    stride = input_size / heatmap_size
    xy = (pose[..., :2] * (input_size / image_size) - (stride - 1) / 2) / stride  # (B, P', 17, 2) heatmap pixels
    visible = (pose[..., 2] > threshold) & (pose[..., 0] >= 0) & (pose[..., 1] >= 0)
    visible &= (pose[..., 0] < image_size) & (pose[..., 1] < image_size)
    grid = torch.arange(heatmap_size, dtype=torch.float32, device=pose.device)
    gx = torch.exp(-((grid - xy[..., 0, None]) ** 2) / (2 * sigma**2))  # (B, P', 17, w)
    gy = torch.exp(-((grid - xy[..., 1, None]) ** 2) / (2 * sigma**2))  # (B, P', 17, h)
    maps = gy[..., :, None] * gx[..., None, :] * visible[..., None, None]  # (B, P', 17, h, w)
    heatmaps = maps.amax(dim=1) if used else torch.zeros((b, k, heatmap_size, heatmap_size), device=pose.device)
    cells = torch.round(xy).long().clamp(0, heatmap_size - 1)
    flat = cells[..., 1] * heatmap_size + cells[..., 0]  # (B, P', 17)
    return heatmaps, flat, visible


def associative_embedding_loss(
    tags: torch.Tensor, joints: torch.Tensor, visible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull and push losses (Newell et al. 2017, Eq. 3), mmpose's ``exp`` form, averaged over the batch.

    tags (B, 17, h, w); joints / visible (B, P, 17) flat indices and mask. Pull: variance of each person's tags
    around its mean tag; push: mean over pairs of people of exp(-(mean_a - mean_b)^2).
    """
    b = tags.shape[0]
    flat = tags.flatten(2)  # (B, 17, h*w)
    values = torch.gather(flat, 2, joints.permute(0, 2, 1).clamp(min=0))  # (B, 17, P)
    values = values.permute(0, 2, 1)  # (B, P, 17)
    weight = visible.float()
    count = weight.sum(-1)  # (B, P)
    present = count > 0
    mean = (values * weight).sum(-1) / count.clamp(min=1)  # (B, P)
    pull_each = (((values - mean[..., None]) ** 2) * weight).sum(-1) / count.clamp(min=1)  # (B, P)
    pulls, pushes = [], []
    for i in range(b):
        m = mean[i][present[i]]
        n = m.numel()
        pulls.append(pull_each[i][present[i]].mean() if n else tags.new_zeros(()))
        if n < 2:
            pushes.append(tags.new_zeros(()))
            continue
        diff = m[:, None] - m[None, :]
        pushes.append((torch.exp(-(diff**2)).sum() - n) / ((n - 1) * n) * 0.5)
    return torch.stack(pulls).mean(), torch.stack(pushes).mean()


def augment(image: np.ndarray, pose: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip (with left/right joint swap), brightness/contrast jitter and a random blur of one uint8 RGB image.

    The blur makes the estimator robust to the softer images a diffusion model generates.
    """
    size = image.shape[1]
    pose = pose.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        present = pose[..., 2] > 0
        pose[..., 0] = np.where(present, size - 1 - pose[..., 0], pose[..., 0])
        pose = pose[:, list(COCO_FLIP_INDEX)]
    x = image.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(rng.uniform(0.3, 1.5)))
    return np.clip(x, 0, 255).astype(np.uint8), pose


@torch.no_grad()
def autoencoder_round_trip(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Decode(posterior mean of encode(x)) of uint8 (N, S, S, 3) RGB images, as uint8 (N, S, S, 3): what the lab
    autoencoder keeps of each image (deterministic; S a multiple of 8)."""
    vae.eval()
    device = next(vae.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S) in [-1, 1]
        decoded = vae.decode(vae.encode(x).mean).clamp(-1.0, 1.0)  # (B, 3, S, S)
        out.append(torch.round((decoded + 1.0) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else images.copy()


def estimator_step_fn(
    estimator: BottomUpPoseEstimator,
    images: np.ndarray,
    poses: np.ndarray,
    batch_size: int,
    sigma: float,
    tag_weight: float,
    keypoint_threshold: float,
    round_trips: np.ndarray | None = None,
    round_trip_fraction: float = 0.0,
):
    """The stage's ``step_fn``: images uint8 (N, S, S, 3) RGB, poses (N, P, 17, 3) in image pixels.

    ``round_trips`` (N, S, S, 3), the same images through the lab autoencoder (``autoencoder_round_trip``), replace
    each drawn image with probability ``round_trip_fraction``.
    """
    num_joints = poses.shape[2]
    if round_trip_fraction > 0 and (round_trips is None or round_trips.shape != images.shape):
        raise ValueError("round_trip_fraction > 0 needs round_trips of the same shape as images")

    def step(_: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator).tolist()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
        if round_trip_fraction > 0:
            through = (torch.rand(batch_size, generator=generator) < round_trip_fraction).tolist()
            batch = [augment((round_trips if t else images)[i], poses[i], rng) for i, t in zip(index, through)]
        else:  # the draws of builds made before round trips existed
            batch = [augment(images[i], poses[i], rng) for i in index]
        x, _ = estimator.preprocess([image for image, _ in batch])  # (B, 3, in, in)
        output = estimator.model(x)[0]  # (B, 2K, in/4, in/4): heatmaps then tags
        heatmap_size = output.shape[-1]
        target, joints, visible = heatmap_targets(
            np.stack([pose for _, pose in batch]),
            images.shape[1],
            x.shape[-1],
            heatmap_size,
            sigma,
            keypoint_threshold,
            device=output.device,
        )
        heatmap_loss = F.mse_loss(output[:, :num_joints], target)
        pull, push = associative_embedding_loss(output[:, num_joints:], joints, visible)
        return {"heatmap": heatmap_loss, "pull": tag_weight * pull, "push": tag_weight * push}

    return step
