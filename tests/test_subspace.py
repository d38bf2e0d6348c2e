"""Subspace similarity φ and ΔW amplification on constructed matrices with known answers, and the
factor loaders on a real (tiny) LoRA model, including the shared-seed initialisation artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lora_repro.analysis.amplification import amplification_row, base_weight, delta_weight, w_delta_similarity
from lora_repro.analysis.subspace import (
    initial_factors,
    layer_phi,
    parse_factors,
    phi,
    phi_grid,
    random_like,
    right_basis,
    trained_factors,
)
from lora_repro.config import compose_config, resolve
from lora_repro.methods import method_state_dict
from lora_repro.paths import REPO_ROOT


def orthonormal_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, rows)))
    return q.T


def test_identical_subspaces_give_one_and_orthogonal_give_zero():
    rng = np.random.default_rng(0)
    basis = orthonormal_rows(rng, 16, 64)
    a = np.diag(np.arange(8, 0, -1.0)) @ basis[:8]  # distinct singular values: a well-defined order
    mixed = rng.standard_normal((8, 8)) @ a  # another matrix with the same row space
    grid = phi_grid(a, mixed)
    assert grid[-1, -1] == pytest.approx(1.0, abs=1e-10)  # same 8-dim span
    assert phi(right_basis(a), right_basis(a), 3, 3) == pytest.approx(1.0, abs=1e-10)
    orthogonal = basis[8:16]
    assert np.abs(phi_grid(a, orthogonal)).max() < 1e-20
    nested = np.diag(np.arange(16, 0, -1.0)) @ basis  # contains a's span: φ(8, 16) = 1
    assert phi_grid(a, nested)[7, 15] == pytest.approx(1.0, abs=1e-10)


def test_phi_grid_matches_the_definition_cell_by_cell():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 32)), rng.standard_normal((12, 32))
    grid = phi_grid(a, b)
    ua, ub = right_basis(a), right_basis(b)
    for i, j in [(1, 1), (3, 7), (8, 12), (8, 1)]:
        direct = np.linalg.norm(ua[:, :i].T @ ub[:, :j]) ** 2 / min(i, j)
        assert grid[i - 1, j - 1] == pytest.approx(direct)
    assert grid.shape == (8, 12) and (grid >= 0).all() and (grid <= 1 + 1e-12).all()


def test_random_subspaces_overlap_about_k_over_d():
    # E[φ] = k/d for two random k-dim subspaces of R^d; the mean of 200 draws has std ~0.0015 here,
    # so a 0.01 tolerance is > 6 standard deviations (and the seed is fixed).
    rng = np.random.default_rng(2)
    d, k = 128, 16
    values = [phi(right_basis(rng.standard_normal((k, d))), right_basis(rng.standard_normal((k, d))), k, k)
              for _ in range(200)]
    assert np.mean(values) == pytest.approx(k / d, abs=0.01)
    control = phi_grid(random_like(np.zeros((64, 384)), 0), random_like(np.zeros((64, 384)), 1))
    assert control[0, 0] < 0.05 and control[-1, -1] == pytest.approx(64 / 384, abs=0.03)


def test_phi_refuses_impossible_inputs():
    with pytest.raises(ValueError, match="input dimensions"):
        phi_grid(np.ones((2, 8)), np.ones((2, 9)))
    with pytest.raises(ValueError, match="out of range"):
        phi(np.eye(4), np.eye(4), 5, 1)


def test_amplification_of_a_constructed_delta():
    # W = diag(10, 9, ..., 1) on the first 10 coordinates; ΔW = 5 e_20 e_30^T lies where W is zero,
    # and ΔW2 = 3 e_1 e_1^T along W's top direction.
    weight = np.zeros((40, 40))
    weight[np.arange(10), np.arange(10)] = np.arange(10, 0, -1.0)
    hidden = np.zeros_like(weight)
    hidden[20, 30] = 5.0
    row = amplification_row(weight, hidden, r=1)
    assert row["proj_delta"] == pytest.approx(0.0, abs=1e-12) and row["amplification"] == float("inf")
    assert row["proj_W"] == pytest.approx(10.0) and row["W_norm"] == pytest.approx(np.sqrt(385))
    shared = np.zeros_like(weight)
    shared[0, 0] = 3.0
    row = amplification_row(weight, shared + hidden * 0.1, r=2)
    assert row["proj_delta"] == pytest.approx(10.0, abs=1e-9)  # top-2 of ΔW: e_1 (W=10) and e_21/e_31 (W=0)
    assert row["amplification"] == pytest.approx(np.sqrt(9 + 0.25) / 10.0)
    assert row["proj_W"] == pytest.approx(np.sqrt(100 + 81))
    assert row["proj_random"] < row["proj_W"]
    figure8 = w_delta_similarity(weight, shared, r=1, max_i=4)
    assert figure8["delta"][:, 0] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert figure8["random"].shape == (4, 1)


def _tiny_config(*overrides: str) -> dict:
    return resolve(OmegaConf.to_container(compose_config(["task=sst2", "model=tiny_bert", "scale=smoke",
                                                          "method=lora", *overrides]), resolve=True))


def test_initial_a_shares_its_first_rows_across_ranks_of_one_seed(tmp_path):
    low, high = _tiny_config("method.r=2", "seed=3"), _tiny_config("method.r=4", "seed=3")
    other = _tiny_config("method.r=4", "seed=4")
    start_low, start_high, start_other = (initial_factors({"config": c}) for c in (low, high, other))
    assert set(start_low) == {(layer, t) for layer in range(2) for t in ("q", "v")}
    assert start_low[(0, "q")]["A"].shape[0] == 2 and float(start_low[(0, "q")]["B"].abs().sum()) == 0.0
    # the generator draws A row by row, so r=2 and r=4 of one seed start with the same first rows ...
    assert torch.equal(start_low[(0, "q")]["A"], start_high[(0, "q")]["A"][:2])
    assert layer_phi(start_low, start_high, 0, "q")[1, 3] == pytest.approx(1.0)  # span(A_r=2) in span(A_r=4)
    # ... but only in the first adapted matrix: later draws are offset by the rank, as another seed is
    assert not torch.equal(start_low[(1, "v")]["A"], start_high[(1, "v")]["A"][:2])
    assert layer_phi(start_low, start_other, 0, "q")[1, 3] < 0.9


def test_trained_factors_and_base_weight_from_a_saved_run(tmp_path):
    from lora_repro.analysis.subspace import rebuild_model

    config = _tiny_config("method.r=4")
    model = rebuild_model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in method_state_dict(model).items()}, str(path))
    record = {"experiment": "x", "key": "k", "config": config, "checkpoint": {"path": str(path)}}
    factors = trained_factors(record)
    assert factors.keys() == parse_factors(dict(model.named_parameters()), "bert").keys()
    delta = delta_weight(factors, 1, "v", alpha=config["method"]["alpha"])
    layer = model.bert.encoder.layer[1].attention.self.value
    assert torch.allclose(delta, layer.branches["all"].delta_weight().detach())
    assert torch.equal(base_weight(model.state_dict(), "bert", 1, "v"), layer.base.weight)
    with pytest.raises(FileNotFoundError, match="save_weights=true"):
        trained_factors({**record, "checkpoint": {"path": str(REPO_ROOT / "nowhere.safetensors")}})


def test_gpt2_fused_projection_gives_q_and_v_slices():
    config = _tiny_config("model=tiny_gpt2", "task=e2e", "method.r=2")
    start = initial_factors({"config": config})
    assert {t for _, t in start} == {"q", "v"}
    from lora_repro.analysis.subspace import rebuild_model

    state = rebuild_model(config).state_dict()
    weight = base_weight(state, "gpt2", 0, "v")
    fused = state["transformer.h.0.attn.c_attn.base.weight"]
    assert torch.equal(weight, fused.t()[2 * fused.shape[0]:3 * fused.shape[0]])
