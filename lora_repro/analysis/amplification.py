"""How ΔW relates to W (paper Sec. 7.3, Table 7; App. H.3, Figure 8).

Project the pre-trained W onto an r-dimensional subspace, U^T W V^T with U / V the top-r left /
right singular vectors of some matrix, and compare Frobenius norms: the subspace of ΔW itself, of
W (its top directions: the largest the projection can be) and of a random matrix (the floor). The
amplification factor ||ΔW||_F / ||U^T W V^T||_F (U, V of ΔW) says how much ΔW magnifies directions
that W already holds; the paper finds about 21.5 at r=4 and 1.9 at r=64 on GPT-3's W_q, layer 48.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from lora_repro.analysis.subspace import Factors, phi_grid
from lora_repro.models.arch import QKV_SLICE, SPECS


def _array(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().float().cpu().numpy()
    return np.asarray(matrix, dtype=np.float64)


def top_singular(matrix: np.ndarray | torch.Tensor, r: int) -> tuple[np.ndarray, np.ndarray]:
    """U (out, r) and V (r, in): the top-r left and right singular vectors (V as rows, as in U^T W V^T)."""
    u, _, vh = np.linalg.svd(_array(matrix), full_matrices=False)
    if r > u.shape[1]:
        raise ValueError(f"rank r={r} exceeds the matrix rank bound {u.shape[1]}")
    return u[:, :r], vh[:r]


def projected_norm(weight: np.ndarray | torch.Tensor, u: np.ndarray, v: np.ndarray) -> float:
    """||U^T W V^T||_F: how much of W lies in the subspace pair (U, V)."""
    return float(np.linalg.norm(u.T @ _array(weight) @ v.T))


def amplification_row(weight: np.ndarray | torch.Tensor, delta: np.ndarray | torch.Tensor, r: int,
                      seed: int = 0) -> dict[str, float]:
    """One rank's half of Table 7: the projections of W onto the top-r subspaces of ΔW, W and a
    random matrix, ||ΔW||_F, ||W||_F and the amplification factor."""
    weight, delta = _array(weight), _array(delta)
    if weight.shape != delta.shape:
        raise ValueError(f"W has shape {weight.shape} but ΔW {delta.shape}; pass the same weight's pair")
    random = np.random.default_rng(seed).standard_normal(weight.shape)
    proj = {name: projected_norm(weight, *top_singular(source, r))
            for name, source in (("delta", delta), ("W", weight), ("random", random))}
    delta_norm = float(np.linalg.norm(delta))
    return {"r": r, "proj_delta": proj["delta"], "proj_W": proj["W"], "proj_random": proj["random"],
            "delta_norm": delta_norm, "W_norm": float(np.linalg.norm(weight)),
            "amplification": delta_norm / proj["delta"] if proj["delta"] > 0 else float("inf")}


def delta_weight(factors: Factors, layer: int, target: str, alpha: float) -> torch.Tensor:
    """ΔW = (alpha / r) B A of one layer and target, (out, in)."""
    pair = factors[(layer, target)]
    rank = pair["A"].shape[0]
    return pair["B"] @ pair["A"] * (alpha / rank)


def base_weight(model_state: Mapping[str, torch.Tensor], family: str, layer: int, target: str) -> torch.Tensor:
    """The frozen pre-trained W of one layer and target in (out, in) orientation (a slice of GPT-2's c_attn)."""
    spec = SPECS[family]
    name = f"{spec.blocks}.{layer}.{spec.attn[target]}.base.weight"
    if name not in model_state:
        raise KeyError(f"{name} is not in the model; is target {target!r} adapted with LoRA in this run?")
    weight = model_state[name].detach().float()
    if spec.conv1d:
        weight = weight.t()
    if spec.fused_qkv and target in QKV_SLICE:
        third = weight.shape[0] // 3
        weight = weight[QKV_SLICE[target] * third:(QKV_SLICE[target] + 1) * third]
    return weight


def w_delta_similarity(weight: np.ndarray | torch.Tensor, delta: np.ndarray | torch.Tensor, r: int,
                       max_i: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Figure 8: φ between the top-i right-singular directions of W (rows, i <= max_i) and the top-j
    of ΔW (columns, j <= r), and the same against a random rank-r matrix (the baseline)."""
    weight, delta = _array(weight), _array(delta)
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((delta.shape[0], r)) @ rng.standard_normal((r, delta.shape[1]))
    return {"delta": phi_grid(weight, delta, max_i, r), "random": phi_grid(weight, random, max_i, r)}
