"""E2E, WebNLG and DART for the run loop: completion-only loss, validation loss per epoch, then
beam search once per unique test input and the official-equivalent scorers.

The LoRA repo beams every test line (one per reference) and keeps one output per input; decoding
each unique input once gives the same hypotheses at a fraction of the cost (E2E: 630 inputs for
4,693 lines).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lora_repro.config import method_label
from lora_repro.data.nlg import (
    Collator,
    InputGroup,
    encode_prompts,
    encode_split,
    filter_groups,
    group_examples,
    load_examples,
    make_loader,
    pad_id_for,
    select_groups,
    source_path,
)
from lora_repro.methods import MethodHandle
from lora_repro.metrics.e2e import score_e2e
from lora_repro.metrics.files import clean_hypothesis, write_e2e_files, write_multi_ref_files
from lora_repro.metrics.webnlg import score_generation
from lora_repro.paths import cache_dir
from lora_repro.store import run_key
from lora_repro.tasks.base import TaskData
from lora_repro.train import causal_lm_loss, move

log = logging.getLogger(__name__)

TASK_KIND = "causal_lm"
SAMPLES_KEPT = 5


def num_labels(task: str) -> None:
    return None


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, handle: MethodHandle, groups: list[InputGroup], decode: dict,
             device: torch.device) -> list[str]:
    """One hypothesis per unique input: batched, left-padded beam search, cleaned as gpt2_decode.py does.

    A prompt longer than the model's positions minus the tokens to generate keeps its last tokens
    (as the LoRA repo's beam query does), so it still ends with the separator.
    """
    positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    prompts = encode_prompts(tokenizer, groups, max_length=positions - int(decode["max_new_tokens"]))
    collate = Collator(tokenizer, padding_side="left")
    eos = tokenizer.eos_token_id
    hypotheses: list[str] = []
    size = int(decode["batch_size"])
    for start in tqdm(range(0, len(prompts), size), desc="decode", leave=False, mininterval=2.0):
        batch = collate([{"input_ids": p} for p in prompts[start:start + size]])
        batch = move(handle.prepare_batch(batch), device)
        width = batch["input_ids"].shape[1]
        out = model.generate(
            **batch, num_beams=int(decode["num_beams"]), length_penalty=float(decode["length_penalty"]),
            no_repeat_ngram_size=int(decode["no_repeat_ngram_size"]), max_new_tokens=int(decode["max_new_tokens"]),
            do_sample=False, early_stopping=True, eos_token_id=eos, pad_token_id=pad_id_for(tokenizer),
        )
        for row in out[:, width:]:
            hypotheses.append(clean_hypothesis(tokenizer.decode(row, skip_special_tokens=True)))
    return hypotheses


def score(metric: str, groups: list[InputGroup], hyps: list[str], out_dir: Path) -> dict[str, float]:
    """Write the scorer's files (for inspection and the official scripts) and score them."""
    if metric == "e2e":
        write_e2e_files(groups, hyps, out_dir / "e2e_ref.txt", out_dir / "e2e_hyp.txt")
        refs = [g.references for g in groups]
        try:
            return {**score_e2e(refs, hyps, mode="python"), "bleu_nist_mode": "python"}
        except ValueError as err:  # -p mode is undefined for very short outputs (the scorer crashes)
            log.warning("E2E python-mode BLEU/NIST undefined (%s); scoring with the perl mode", err)
            return {**score_e2e(refs, hyps, mode="perl"), "bleu_nist_mode": "perl"}
    write_multi_ref_files(groups, hyps, out_dir)
    scores: dict[str, float] = {}
    splits = ("all", "seen", "unseen") if any(g.seen is not None for g in groups) else ("all",)
    hyp_of = {id(g): h for g, h in zip(groups, hyps, strict=True)}
    for which in splits:
        picked = filter_groups(groups, which)
        if not picked:
            continue
        part = score_generation([g.references for g in picked], [hyp_of[id(g)] for g in picked])
        prefix = "" if which == "all" else f"{which}_"
        scores.update({f"{prefix}{k}": v for k, v in part.items()})
    return scores


def data_files(cfg: dict) -> list[Path]:
    """The train, eval and test files `prepare` reads, for the record's data fingerprint."""
    task = cfg["task"]
    return [source_path(task["dataset"], task[split], cfg["data_root"])
            for split in ("train_split", "eval_split", "test_split")]


def prepare(cfg: dict, tokenizer, handle: MethodHandle, device: torch.device) -> TaskData:
    task, train_cfg = cfg["task"], cfg["train"]
    dataset, root = task["dataset"], cfg["data_root"]
    max_length = int(train_cfg["max_length"])
    train = encode_split(tokenizer, dataset, task["train_split"], max_length, train_cfg["train_subset"],
                         int(train_cfg["subset_seed"]), root)
    valid = encode_split(tokenizer, dataset, task["eval_split"], max_length, train_cfg["eval_subset"],
                         int(train_cfg["subset_seed"]), root)
    collate = Collator(tokenizer)
    group = bool(train_cfg["group_by_length"])
    loader = make_loader(train, int(train_cfg["batch_size"]), collate, shuffle=True, seed=int(cfg["seed"]),
                         group_by_length=group)
    valid_loader = make_loader(valid, int(train_cfg["eval_batch_size"]), collate, group_by_length=group)

    @torch.inference_mode()
    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in valid_loader:
            batch = move(handle.prepare_batch(batch), device)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += causal_lm_loss(model, batch, 0.0).item() * tokens
            count += tokens
        return {"val_loss": total / max(1, count)}

    decode = task["decode"]
    groups = select_groups(group_examples(load_examples(dataset, task["test_split"], root)),
                           decode["test_inputs"], decode["test_seed"])

    def finish(model: nn.Module) -> dict[str, Any]:
        model.eval()
        hyps = generate(model, tokenizer, handle, groups, decode, device)
        # named by the run key too: two configs of one method (a sweep) must not overwrite each other's files
        label = method_label(cfg)
        name = f"{task['name']}-{label}-s{cfg['seed']}-{run_key(cfg)}"
        out_dir = cache_dir() / "generations" / cfg["experiment_name"] / name
        out_dir.mkdir(parents=True, exist_ok=True)
        scores = score(task["metric"], groups, hyps, out_dir)
        samples = [{"input": g.context, "output": h, "reference": g.references[0]}
                   for g, h in list(zip(groups, hyps, strict=True))[:SAMPLES_KEPT]]
        return {**scores, "decoded_inputs": len(hyps), "samples": samples, "generations_dir": str(out_dir)}

    smoothing = float(train_cfg["label_smoothing"])
    return TaskData(loader, len(loader), lambda model, batch: causal_lm_loss(model, batch, smoothing), evaluate,
                    "val_loss", maximize=False, finish=finish)
