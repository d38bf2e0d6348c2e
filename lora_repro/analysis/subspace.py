"""Subspace similarity of learned LoRA matrices (paper Sec. 7.2, Eq. 4; Figures 3, 4, 6, 7).

φ(A, B, i, j) = ||U_A^i^T U_B^j||_F^2 / min(i, j), where U_X^i holds the top-i *right*-singular
vectors of X (A has shape (r, d_in), so these live in R^d_in and matrices of different r compare;
docs/paper_reference.md, "Subspace similarity", explains why the right, not the left, vectors).
φ is 1 when one span contains the other and 0 when they are orthogonal; two random i- and
j-dimensional subspaces of R^d give about max(i, j) / d.

The A matrices come from a run's method-only safetensors (trained) or from re-applying the method
to the model with the run's seed (initial): the initial A of two runs that share a seed share their
first rows, so φ of the initial matrices is shown beside φ of the trained ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch

from lora_repro.models.arch import SPECS, ArchSpec

Factors = dict[tuple[int, str], dict[str, torch.Tensor]]  # (layer, target) -> {"A": (r, in), "B": (out, r)}


def right_basis(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Right-singular vectors of `matrix` as columns, ordered by singular value: shape (d_in, rank)."""
    values = np.asarray(matrix.detach().float().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    _, _, vh = np.linalg.svd(values, full_matrices=False)
    return vh.T


def phi(basis_a: np.ndarray, basis_b: np.ndarray, i: int, j: int) -> float:
    """φ between the spans of the first i columns of basis_a and the first j columns of basis_b."""
    if not (1 <= i <= basis_a.shape[1] and 1 <= j <= basis_b.shape[1]):
        raise ValueError(f"phi: i={i}, j={j} out of range for bases with {basis_a.shape[1]} and "
                         f"{basis_b.shape[1]} columns; choose 1 <= i, j <= the ranks")
    overlap = basis_a[:, :i].T @ basis_b[:, :j]
    return float(np.sum(overlap**2) / min(i, j))


def phi_grid(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, max_i: int | None = None,
             max_j: int | None = None) -> np.ndarray:
    """φ(a, b, i, j) for i = 1..max_i (rows) and j = 1..max_j (columns): one panel of Figure 3 or 4.

    Computed from cumulative sums of the squared overlap matrix, so the 64 x 64 grid costs one product.
    """
    basis_a, basis_b = right_basis(a), right_basis(b)
    if basis_a.shape[0] != basis_b.shape[0]:
        raise ValueError(f"phi_grid: the matrices have {basis_a.shape[0]} and {basis_b.shape[0]} input "
                         "dimensions; compare A matrices of the same weight (same d_in)")
    max_i = max_i or basis_a.shape[1]
    max_j = max_j or basis_b.shape[1]
    if max_i > basis_a.shape[1] or max_j > basis_b.shape[1]:
        raise ValueError(f"phi_grid: asked for {max_i} x {max_j} but the ranks are {basis_a.shape[1]} "
                         f"and {basis_b.shape[1]}")
    squared = (basis_a[:, :max_i].T @ basis_b[:, :max_j]) ** 2
    cumulative = squared.cumsum(axis=0).cumsum(axis=1)
    sizes = np.minimum.outer(np.arange(1, max_i + 1), np.arange(1, max_j + 1))
    return cumulative / sizes


def random_like(matrix: np.ndarray | torch.Tensor, seed: int) -> np.ndarray:
    """A Gaussian matrix of the same shape: the control with no shared directions (Fig. 4, right)."""
    return np.random.default_rng(seed).standard_normal(tuple(matrix.shape))


def _target_of(spec: ArchSpec, module_path: str, branch: str) -> str | None:
    if branch != "all":  # a slice of a fused projection (GPT-2's c_attn): the branch names its target
        return branch
    for target, path in spec.attn.items():
        if path == module_path:
            return target
    return "mlp"


def parse_factors(state: Mapping[str, torch.Tensor], family: str) -> Factors:
    """Group the lora_A / lora_B tensors of a method state dict by (layer index, target)."""
    if family not in SPECS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(SPECS)}")
    spec = SPECS[family]
    pattern = re.compile(rf"^{re.escape(spec.blocks)}\.(\d+)\.(.+)\.branches\.(\w+)\.lora_([AB])$")
    factors: Factors = {}
    for name, tensor in state.items():
        match = pattern.match(name)
        if match:
            layer, path, branch, which = match.groups()
            target = _target_of(spec, path, branch)
            factors.setdefault((int(layer), target), {})[which] = tensor.detach().float().cpu()
    return factors


def trained_factors(record: Mapping) -> Factors:
    """The trained LoRA factors of a run, read from its method-only safetensors (checked against its sha256)."""
    from lora_repro.checkpoints import load_verified, record_weights

    path = record_weights(record)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"run {record['experiment']}/{record['key']} has no saved weights ({path or 'none saved'}); "
            "fix: rerun that config with force=true train.save_weights=true")
    state = load_verified(path, record["checkpoint"].get("sha256"))
    factors = parse_factors(state, record["config"]["model"]["family"])
    if not factors:
        raise ValueError(f"{path} holds no LoRA matrices; was run {record['key']} a LoRA run?")
    return factors


def rebuild_model(config: Mapping):
    """The run's model with its method applied, before training: the same seed, the same draws."""
    from lora_repro.run import build

    return build(dict(config))[0].model


def initial_factors(record: Mapping) -> Factors:
    """The LoRA factors a run started from (A random, B zero), re-created from its config and seed."""
    model = rebuild_model(record["config"])
    return parse_factors(dict(model.named_parameters()), record["config"]["model"]["family"])


def layer_phi(first: Factors, second: Factors, layer: int, target: str, max_i: int | None = None,
              max_j: int | None = None) -> np.ndarray:
    """φ grid between the A matrices of one layer and target in two runs."""
    for name, factors in (("first", first), ("second", second)):
        if (layer, target) not in factors:
            raise KeyError(f"the {name} run has no LoRA on layer {layer} target {target!r}; "
                           f"it has {sorted(factors)[:6]}...")
    return phi_grid(first[(layer, target)]["A"], second[(layer, target)]["A"], max_i, max_j)
