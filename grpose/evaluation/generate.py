"""One process's share of an evaluation: generate (or read) the images of its batches, detect people, append one
results line per image to its shard ``results.rank<R>.jsonl`` (README "Evaluation").

Whole batches of the sorted ids are dealt to the processes (``grpose.eval_results.shard_batches``) and every image's
noise comes from the seed and its entry id, so the results are the same for any number of processes; finished
entries are skipped on a rerun.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpose.eval_results import append_results, image_seed, read_results, shard_batches, shard_path
from grpose.evaluation.panels import load_generated, save_panel
from grpose.validation import seeded_noise, to_uint8


def pending_batches(
    ids: Sequence[str], *, batch_size: int, rank: int, world_size: int, out_dir: Path
) -> tuple[list[list[str]], set[str]]:
    """This rank's batches that still hold an entry without a results line, and the ids already done (any shard).

    A torn last line of this rank's own shard (a killed run) is cut off on the way.
    """
    own_shard = shard_path(out_dir, rank)
    done = {r["id"] for p in out_dir.glob("results.rank*.jsonl") for r in read_results(p, repair=p == own_shard)}
    todo = [batch for batch in shard_batches(ids, batch_size, rank, world_size) if not set(batch) <= done]
    return todo, done


@torch.no_grad()
def sample_images(
    model,
    samples: Sequence[dict[str, Any]],
    *,
    seed: int,
    ddim_steps: int,
    guidance_scale: float,
    eta: float,
    protocol: str,
    device: torch.device,
) -> np.ndarray:
    """DDIM with classifier-free guidance from each entry's seeded noise; uint8 RGB (B, H, W, 3) as the protocol
    converts it (docs/metrics.md §7). bf16 autocast on CUDA."""
    hint = torch.stack([torch.from_numpy(s["hint"]) for s in samples]).permute(0, 3, 1, 2).to(device)
    latent_shape = (model.latent_channels, hint.shape[2] // 8, hint.shape[3] // 8)
    noise = seeded_noise([s["id"] for s in samples], seed=seed, shape=latent_shape).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        images = model.sample(
            hint,
            [s["txt"] for s in samples],
            noise=noise,
            num_steps=ddim_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=torch.Generator(device=device).manual_seed(image_seed(seed, samples[0]["id"])),
        )
    return to_uint8(images, protocol)


def generate_shard(
    batches: Sequence[Sequence[str]],
    *,
    dataset,
    done: set[str],
    model,
    estimator,
    images_dir: Path | None,
    out_dir: Path,
    rank: int,
    panels: bool,
    seed: int,
    ddim_steps: int,
    guidance_scale: float,
    eta: float,
    protocol: str,
    device: torch.device,
) -> None:
    """Generate (``model``) or read (``images_dir``) each batch, detect people (``estimator``, if any), write the
    panels (generated images only) and append the records of the entries not yet ``done`` to this rank's shard.

    A partly written batch (killed run) is regenerated whole; its done records are not rewritten.
    """
    from tqdm import tqdm

    index_of = {entry_id: i for i, entry_id in enumerate(dataset.ids)}
    results_path = shard_path(out_dir, rank)
    bar = tqdm(total=sum(map(len, batches)), desc=f"rank {rank}", unit="img", disable=rank != 0, dynamic_ncols=True)
    for batch_ids in batches:
        samples = [dataset[index_of[i]] for i in batch_ids]
        if images_dir is not None:
            generated = np.stack([load_generated(images_dir, s) for s in samples])
        else:
            generated = sample_images(
                model, samples, seed=seed, ddim_steps=ddim_steps, guidance_scale=guidance_scale, eta=eta,
                protocol=protocol, device=device,
            )  # fmt: skip
        people = estimator(list(generated)) if estimator is not None else [None] * len(samples)
        if panels and images_dir is None:
            for sample, image in zip(samples, generated):
                save_panel(out_dir, sample, image)
        records = [
            record_of(sample, image, detected, seed=seed)
            for sample, image, detected in zip(samples, generated, people)
            if sample["id"] not in done
        ]
        append_results(results_path, records)
        bar.update(len(batch_ids))
    bar.close()


def record_of(sample: dict[str, Any], image: np.ndarray, detected: dict | None, *, seed: int) -> dict[str, Any]:
    """One results line: the entry, its seed, the ground-truth poses and the detections."""
    gt = sample["pose"]
    record = {
        "id": sample["id"],
        "scene": sample["scene"],
        "img_path": sample["img_path"],
        "prompt": sample["txt"],
        "seed": image_seed(seed, sample["id"]),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "gt": np.asarray(gt, dtype=np.float32).round(3).tolist(),
        "num_gt": int((gt[:, :, 0] > 0).any(axis=1).sum()),
    }
    if detected is not None:
        record["detections"] = detections_to_json(detected)
        record["num_det"] = len(record["detections"]["scores"])
    return record


def detections_to_json(people: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "keypoints": np.asarray(people["keypoints"], dtype=np.float32).round(3).tolist(),
        "scores": np.asarray(people["scores"], dtype=np.float32).round(6).tolist(),
    }
