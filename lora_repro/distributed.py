"""One run on several processes (torchrun, accelerate launch): data-parallel, the single-process result.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; `setup` joins the process
group from them (gloo on CPU, nccl on CUDA, one GPU per local rank). Without them (one process)
nothing here changes what the loop does.

Global batch semantics: `train.batch_size` is the global batch. Every rank builds the same seeded
batch order, reads each global batch and trains its contiguous slice of rows (`shard`). Its loss is
weighted by the share of the batch's loss units it holds (rows; supervised tokens for a causal LM,
whose loss is a per-token mean), times the world size, so DDP's gradient average is the
single-process gradient up to float reassociation, also for an uneven last batch. A rank with no
rows of a batch runs the first row at weight 0, because DDP needs every rank's backward.
Dropout masks are drawn per rank, so a model with dropout matches the single process in
distribution, not number for number.

Evaluation runs on every rank over the whole eval split: the weights are identical, so the metrics
and the best-epoch choice agree without a collective. Writes (record, weights, resume state,
tracker, log files) and the NLG test decode happen on rank 0 only.

Why torch DDP and not `accelerate.Accelerator`: the causal LM loss runs the base model and the LM
head separately (train.causal_lm_loss), which DDP only synchronises when its forward runs, so the
model and the loss are wrapped as one module (`LossForward`); `accelerate launch` starts the same
processes as torchrun and needs nothing else. Model sharding (FSDP, DeepSpeed ZeRO) is not
implemented: an accelerate config asking for it is refused before any work rather than ignored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lora_repro.schemas import ConfigError

LossFn = Callable[[nn.Module, dict], torch.Tensor]
# accelerate launch settings this loop does not implement (it shards the data, never the model)
MODEL_SHARDING = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the launcher's process group (once); return this rank's device (cuda:LOCAL_RANK on GPUs)."""
    for name in MODEL_SHARDING:
        if os.environ.get(name, "").lower() == "true":
            raise ConfigError(f"{name}=true (accelerate config): this suite trains data-parallel (DDP) only; "
                              "use conf/accelerate/multi_gpu.yaml or torchrun (see README, Scaling out)")
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "RANK" not in os.environ:
        raise ConfigError("SLURM started several tasks for this run but no launcher set RANK: each would train it "
                          "alone; use hydra.launcher.tasks_per_node=1, or srun torchrun for several GPUs per run")
    if world_size() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not is_rank_zero():  # one log per run: the other ranks keep warnings on the console only
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
        root.setLevel(logging.WARNING)
    return device


class LossForward(nn.Module):
    """`loss(model, batch)` as a module's forward, so DDP sees the whole loss computation."""

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss(self.model, batch)


def loss_fn(model: nn.Module, loss: LossFn, device: torch.device) -> Callable[[dict], torch.Tensor]:
    """batch -> loss: the plain loss in one process, through DDP (gradients averaged) in several."""
    if world_size() == 1:
        return lambda batch: loss(model, batch)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossForward(model, loss), device_ids=ids)


def loss_units(batch: dict) -> torch.Tensor:
    """Per row, how many terms it adds to the batch loss's mean: supervised tokens (2-D labels) or 1."""
    labels = batch["labels"]
    if labels.dim() == 2:
        return (labels[:, 1:] != -100).sum(dim=1)
    return torch.ones(labels.shape[0], device=labels.device)


def shard(batch: dict) -> tuple[dict, float]:
    """This rank's rows of a global batch and the weight of its loss (1.0 and the batch itself in one process)."""
    if world_size() == 1:
        return batch, 1.0
    count = batch["input_ids"].shape[0]
    rows = torch.tensor_split(torch.arange(count), world_size())[rank()]
    units = loss_units(batch)
    weight = float(units[rows].sum() / units.sum()) * world_size()
    if len(rows) == 0:
        rows, weight = torch.arange(1), 0.0
    index = rows.to(batch["input_ids"].device)
    part = {k: v[index] if torch.is_tensor(v) and v.dim() and v.shape[0] == count else v for k, v in batch.items()}
    return part, weight


def wait_for_rank_zero() -> None:
    """Hold every rank until rank 0 has written (a record, weights): the next run of a protocol may
    start from those weights (`train.init_from_task`) or skip on that record, on every rank alike."""
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a per-rank tensor (a weighted loss sum: the single-process loss sum)."""
    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()
