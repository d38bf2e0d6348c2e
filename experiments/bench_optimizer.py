"""`make bench-optimizer`: one AdamW step over a protocol's trainable weights, torch's for-loop vs fused.

    python -m experiments.bench_optimizer [--rounds 20] [--threads 2] [overrides, e.g. +experiment=e2e_cpu method=full]

On CPU, `torch.optim.AdamW` without arguments runs its single-tensor for-loop (torch defaults to foreach
only on accelerators, and never to fused): several element-wise passes over each tensor's weights,
gradient and moments. `fused=True` makes one pass per tensor. Both sides are plain AdamW over one
parameter group (`train.build_optimizer` exempts biases and norms from decay: the same per-element
work) with copies of the same weights and the same gradients; each round times one step of each, the
order alternating, so the ratio is paired within a round. Prints each side's median step time, the
paired ratio fused / for-loop with its 95 % interval, and the largest difference between the two
sides' weights after the same steps (the two kernels differ only in rounding). The numbers are
printed, not stored.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lora_repro.bench.stats import Paired
from lora_repro.config import resolve_overrides
from lora_repro.errors import OneLineParser, one_line_errors, positive_int
from lora_repro.run import build

IMPLEMENTATIONS = {"for-loop": {"foreach": False, "fused": False}, "fused": {"fused": True}}


def copies(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Leaf copies of `weights` holding `grads`, so each optimizer owns its weights."""
    owned = [w.detach().clone().requires_grad_(True) for w in weights]
    for weight, grad in zip(owned, grads, strict=True):
        weight.grad = grad.clone()
    return owned


def timed_step(optimizer: torch.optim.Optimizer) -> float:
    """Seconds of one `optimizer.step()` (the gradients stay: every step sees the same ones)."""
    started = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - started


@one_line_errors("experiments.bench_optimizer")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=20)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides naming the run (default: E2E full fine-tuning)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve_overrides(args.overrides or ["+experiment=e2e_cpu", "method=full"])
    loaded, _, _ = build(cfg)
    weights = [p for p in loaded.model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(w.shape, generator=generator, dtype=w.dtype) * 1e-3 for w in weights]
    lr, decay = float(cfg["train"]["lr"]), float(cfg["train"]["weight_decay"])
    sides = {name: torch.optim.AdamW(copies(weights, grads), lr=lr, weight_decay=decay, **options)
             for name, options in IMPLEMENTATIONS.items()}
    for optimizer in sides.values():  # the first step allocates the moments
        timed_step(optimizer)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed_step(sides[name]))
    paired = Paired.of(times["fused"], times["for-loop"])
    drift = max((a - b).abs().max().item() for a, b in zip(*(opt.param_groups[0]["params"] for opt in sides.values()),
                                                             strict=True))
    count = sum(w.numel() for w in weights)
    print(f"{cfg['experiment_name']} {cfg['method']['name']}: {count:,} trainable weights in {len(weights)} tensors, "
          f"{args.threads} threads, {args.rounds} paired rounds")
    for name, values in times.items():
        print(f"  {name:9s} median step {1e3 * statistics.median(values):8.1f} ms")
    print(f"  fused / for-loop: {paired.ratio()}; largest weight difference after {args.rounds + 1} steps: {drift:.2e}")


if __name__ == "__main__":
    main()
