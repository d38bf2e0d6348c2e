"""`make bench-step`: one protocol run's training step two ways, paired on the run's own batches.

    python -m experiments.bench_step --compare attention [--steps 30] [--threads N] [overrides]

Two copies of the run's model, built as `run.build` builds it (same seed, same method), train side by
side on the first batches of the run's own loader (its batch size, lengths and grouping), with one fused
AdamW each. Step i of both sides sees batch i and the same dropout seed; the order alternates, so the
ratio B / A is paired within a step. What B changes (`--compare`):

- `attention`: sdpa -> eager (`model.attn_implementation`); each side prints the kernel it ran;
- `frozen-cast`: autocast casting frozen weights at every call -> cast once (`train.frozen_weights_cast`);
  the two sides' losses must agree exactly; needs `train.precision` bf16 or fp16;
- `compile`: the eager loss -> `torch.compile`d (`train.compile`); the first compilation falls in the
  warm-up steps, a recompilation for a new batch shape may fall in a timed step (the median resists it);
- `fast-dropout`: torch's dropout -> `train.fast_dropout` (lora_repro/dropout.py); its masks are another
  random draw, so the losses differ by what dropout's randomness moves (no longer a check).

Both sides run the run's `train.fast_dropout` (except under `--compare fast-dropout`); neither casts its
frozen weights once (except B under `--compare frozen-cast`), which on MiniLM at 1 thread measured no
difference (CHANGELOG, session 8). Under `--compare attention` with fast dropout on, eager attention's
dropout is the fast one and sdpa keeps its internal draw: add `train.fast_dropout=false` to compare the
kernels alone (the committed numbers were measured that way, before fast dropout existed).

Threads: the run's `train.num_threads` unless `--threads`. Prints each side's median step and warm-up
time, the paired ratio B / A with its 95 % interval, and the largest difference between the two sides'
losses (a check that B computes what A does). The numbers are printed, not stored.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lora_repro.bench.stats import Paired
from lora_repro.config import resolve_overrides
from lora_repro.dropout import fast_dropout
from lora_repro.errors import OneLineParser, one_line_errors, positive_int
from lora_repro.methods import MethodHandle
from lora_repro.run import build
from lora_repro.schemas import ConfigError
from lora_repro.train import autocast, build_optimizer, epoch_batches, frozen_weights_cast, move, train_config

COMPARISONS = {"attention": ("sdpa attention", "eager attention"), "frozen-cast": ("cast per call", "cast once"),
               "compile": ("eager", "compiled"), "fast-dropout": ("torch dropout", "fast dropout")}
DEFAULT_RUN = ["+experiment=glue_cpu", "task=rte", "method=lora"]


@dataclass
class Side:
    """One copy of the run's model with what B changes applied; `stack` holds its open contexts, `around`
    makes the context each of its steps runs in (a global switch, such as dropout's, only there)."""

    name: str  # what the side runs, e.g. "eager attention"
    model: nn.Module
    handle: MethodHandle
    loss: Callable[[dict], torch.Tensor]
    optimizer: torch.optim.Optimizer
    stack: contextlib.ExitStack
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def build_side(cfg: dict, compare: str, changed: bool, task_loss: Callable) -> Side:
    """The run's model (A), or the run's model with `compare` changed (B)."""
    cfg = copy.deepcopy(cfg)
    if compare == "attention":
        cfg["model"]["attn_implementation"] = "eager" if changed else "sdpa"
    loaded, handle, _ = build(cfg)
    model = loaded.model.train()
    train_cfg = train_config(cfg["train"])
    stack = contextlib.ExitStack()
    if compare == "frozen-cast" and changed:
        stack.enter_context(frozen_weights_cast(model, train_cfg))
    loss = functools.partial(task_loss, model)
    if compare == "compile" and changed:
        loss = torch.compile(loss)
    optimizer = build_optimizer(model, train_cfg.lr, train_cfg.weight_decay, train_cfg.adam_betas, train_cfg.adam_eps)
    name = COMPARISONS[compare][int(changed)]
    if compare == "attention":  # the kernel the model reports, not the one asked for
        name = f"{model.config._attn_implementation} attention"
    fast = changed if compare == "fast-dropout" else train_cfg.fast_dropout  # else: as the run has it
    around = functools.partial(fast_dropout, fast)
    return Side(name, model, handle, loss, optimizer, stack, around)


def run_batches(cfg: dict, count: int) -> tuple[list[dict], Callable]:
    """The first `count` training batches of the run's own loader (epoch 1's order) and the task's loss.

    Built from a model of its own (the loader needs a tokenizer and method handle), dropped on return.
    """
    loaded, handle, tasks = build(cfg)
    data = tasks.prepare(cfg, loaded.tokenizer, handle, torch.device("cpu"))
    return list(itertools.islice(epoch_batches(data.train_batches, 0, 0), count)), data.loss


def timed_step(side: Side, batch: dict, amp: contextlib.AbstractContextManager, seed: int) -> tuple[float, float]:
    """Seconds of one training step of `side` on `batch` (dropout seeded by `seed`), and its loss."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    with side.around():
        with amp:
            loss = side.loss(move(side.handle.prepare_batch(dict(batch)), torch.device("cpu")))
        loss.backward()
    side.optimizer.step()
    side.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started, loss.item()


def race(sides: tuple[Side, Side], batches: list[dict], amp, warmup: int) -> tuple[dict, dict, float]:
    """Per side: the step times after `warmup` and the warm-up seconds; the largest loss difference."""
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    warm = dict.fromkeys(times, 0.0)
    drift = 0.0
    for index, batch in enumerate(batches):
        order = sides if index % 2 == 0 else sides[::-1]
        losses = {}
        for side in order:
            seconds, losses[side.name] = timed_step(side, batch, amp, seed=index)
            if index < warmup:
                warm[side.name] += seconds
            else:
                times[side.name].append(seconds)
        drift = max(drift, abs(losses[sides[0].name] - losses[sides[1].name]))
    return times, warm, drift


@one_line_errors("experiments.bench_step")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), required=True)
    parser.add_argument("--steps", type=positive_int, default=30, help="paired steps timed (after the warm-up)")
    parser.add_argument("--warmup", type=positive_int, default=3, help="steps per side before timing")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: the run's train.num_threads)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides naming the run (default: GLUE cpu, RTE, LoRA)")
    args = parser.parse_args(argv)
    cfg = resolve_overrides(args.overrides or DEFAULT_RUN)
    train_cfg = train_config(cfg["train"])
    if args.compare == "frozen-cast" and train_cfg.precision == "fp32":
        raise ConfigError("--compare frozen-cast needs autocast: add train.precision=bf16 (fp32 casts nothing)")
    threads = args.threads or train_cfg.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batches, task_loss = run_batches(cfg, args.warmup + args.steps)
    if len(batches) <= args.warmup:
        raise ConfigError(f"the run has {len(batches)} training batches, not more than --warmup {args.warmup}; "
                         "lower --warmup or pick a larger task")
    sides = (build_side(cfg, args.compare, False, task_loss), build_side(cfg, args.compare, True, task_loss))
    if sides[0].name == sides[1].name:
        raise ConfigError(f"both sides run {sides[0].name}: this model cannot switch what --compare {args.compare} "
                         "changes")
    with sides[0].stack, sides[1].stack:
        times, warm, drift = race(sides, batches, autocast(train_cfg, torch.device("cpu")), args.warmup)
    a, b = (side.name for side in sides)
    tokens = statistics.fmean(batch["input_ids"].numel() for batch in batches)
    print(f"{cfg['experiment_name']} {cfg['method']['name']} on {cfg['task']['name']} ({train_cfg.precision}): "
          f"{threads} threads, {len(times[a])} paired steps after {args.warmup} warm-up steps per side "
          f"(the run's own batches: {tokens:.0f} padded tokens on average)")
    for name in (a, b):
        print(f"  {name:16s} median step {1e3 * statistics.median(times[name]):8.1f} ms  warm-up {warm[name]:6.1f} s")
    print(f"  {b} / {a}: {Paired.of(times[b], times[a]).ratio()}; largest loss difference: {drift:.2e}")


if __name__ == "__main__":
    main()
