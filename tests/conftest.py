"""Every test runs offline: no hub, no wandb server, results written to a temporary store."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Tiny models on a shared 2-core machine: one thread is ~100x faster than oversubscribed threads.
torch.set_num_threads(1)


@pytest.fixture
def store_root(tmp_path, monkeypatch):
    """A fresh results store for one test, so tests never write into results/."""
    root = tmp_path / "results"
    monkeypatch.setenv("LORA_REPRO_RESULTS", str(root))
    return root
