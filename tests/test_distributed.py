"""The global-batch split of several processes: each rank's weighted loss sums to the single-process loss."""

from __future__ import annotations

import pytest
import torch

from lora_repro import distributed


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def token_mean_loss(batch: dict) -> torch.Tensor:
    """A causal-LM-like loss: the mean of a per-token value over supervised positions."""
    supervised = batch["labels"][:, 1:] != -100
    return batch["values"][:, 1:][supervised].mean()


@pytest.mark.parametrize(("rows", "world"), [(5, 2), (8, 3), (2, 4)])
def test_weighted_rank_losses_average_to_the_global_loss(monkeypatch, rows, world):
    generator = torch.Generator().manual_seed(rows)
    labels = torch.randint(0, 5, (rows, 7), generator=generator)
    labels[labels == 0] = -100  # unsupervised positions, unevenly spread over rows
    batch = {"input_ids": torch.zeros(rows, 7, dtype=torch.long), "labels": labels,
             "values": torch.rand(rows, 7, generator=generator)}
    total = torch.zeros(())
    for rank in range(world):
        as_rank(monkeypatch, rank, world)
        part, weight = distributed.shard(batch)
        total += token_mean_loss(part) * weight
    assert float(total / world) == pytest.approx(float(token_mean_loss(batch)), rel=1e-6)


def test_rows_are_split_contiguously_and_a_rank_without_rows_weighs_nothing(monkeypatch):
    batch = {"input_ids": torch.arange(3)[:, None], "labels": torch.tensor([0, 1, 0])}
    parts = []
    for rank in range(4):
        as_rank(monkeypatch, rank, 4)
        parts.append(distributed.shard(batch))
    assert [p["input_ids"].flatten().tolist() for p, _ in parts] == [[0], [1], [2], [0]]
    assert [w for _, w in parts] == pytest.approx([4 / 3, 4 / 3, 4 / 3, 0.0])


def test_one_process_trains_on_the_batch_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.ones(2)}
    part, weight = distributed.shard(batch)
    assert part is batch and weight == 1.0


@pytest.mark.parametrize("engine", distributed.MODEL_SHARDING)
def test_an_accelerate_config_asking_for_model_sharding_is_refused_not_ignored(monkeypatch, engine):
    monkeypatch.setenv(engine, "true")
    with pytest.raises(distributed.ConfigError, match=f"{engine}=true.*data-parallel"):
        distributed.setup(torch.device("cpu"))


def test_several_slurm_tasks_without_a_launcher_are_refused(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(distributed.ConfigError, match="tasks_per_node=1"):
        distributed.setup(torch.device("cpu"))
