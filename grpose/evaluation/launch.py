"""The processes of an evaluation, with Lightning Fabric (README "Evaluation").

One machine, N processes: ``python eval_pose.py ... --devices N`` spawns them (strategy ``ddp_spawn``, which also
works when ``eval_pose.main`` is called inside another Python program such as pytest); the process group uses gloo
on CPU and nccl on CUDA, one GPU per process.

Under a launcher the launcher starts the processes and Fabric reads their ranks from the environment; ``--devices``
is then ignored (the launcher's processes per node are used):

    torchrun --nproc_per_node 8 eval_pose.py --config_model ... --ckpt ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 eval_pose.py ...
    srun --ntasks-per-node 8 --gpus-per-node 8 python eval_pose.py --config_model ... --ckpt ...

Every process evaluates whole batches of the sorted ids (``grpose.eval_results.shard_batches``), so the results do
not depend on how the processes were started.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment


def process_layout(devices: int) -> dict[str, Any]:
    """Fabric's ``devices``, ``num_nodes``, ``strategy`` and cluster environment for this run: the launcher's (torchrun,
    or srun with more than one task) or ``devices`` processes spawned on this machine."""
    if TorchElasticEnvironment.detect():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // per_node
        return {"devices": per_node, "num_nodes": num_nodes, "strategy": "ddp" if per_node * num_nodes > 1 else "auto"}
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        num_nodes = int(os.environ["SLURM_NNODES"])
        per_node = int(os.environ["SLURM_NTASKS"]) // num_nodes
        return {"devices": per_node, "num_nodes": num_nodes, "strategy": "ddp"}
    # spawned here: Lightning's own environment, whatever scheduler variables a single-task job carries
    return {
        "devices": devices,
        "num_nodes": 1,
        "strategy": "ddp_spawn" if devices > 1 else "auto",
        "plugins": [LightningEnvironment()],
    }


def make_fabric(*, devices: int, accelerator: str) -> Fabric:
    """A Fabric for ``devices`` processes on ``accelerator`` ("cuda" or "cpu"), or the launcher's processes."""
    return Fabric(accelerator=accelerator, precision="32-true", **process_layout(devices))


def launch(fabric: Fabric, function: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``function(fabric, **kwargs)`` in every process; returns what it returned in the process of rank 0 (and
    None in the other processes of a launcher).

    Every process keeps this process's number of torch threads: Lightning would give each cpu_count / processes
    threads, and CPU results depend on the thread count (summation order), while an image must not depend on the
    number of processes. The environment is restored afterwards: the spawn launcher's MASTER_PORT, WORLD_SIZE and
    the like must not leak into a next run in this process or into a program it starts (a later ``train.py``
    subprocess would believe it is one rank of a distributed job).
    """
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # Lightning leaves a set value alone
    try:  # kwargs bound here: the spawn launcher walks its own arguments and refuses frozen dataclasses in them
        return fabric.launch(functools.partial(function, **kwargs))
    finally:
        os.environ.clear()
        os.environ.update(saved)
