"""The evaluate metric modules load offline by path and return exactly what the suite's scorers do.

The tests load with the hub offline; one runs a fresh process with an empty modules cache, as on
a fresh clone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest

from lora_repro import paths
from lora_repro.metrics import e2e as e2e_scorer
from lora_repro.metrics.e2e import read_e2e_files, score_e2e
from lora_repro.metrics.glue import compute_metrics
from lora_repro.metrics.webnlg import read_generation_files, score_generation

MODULES = paths.REPO_ROOT / "lora_repro" / "evaluate_metrics"
GENERATIONEVAL = Path(__file__).parent / "fixtures" / "generationeval"
E2E_FIXTURES = paths.REPO_ROOT.parent / "shared" / "fixtures" / "e2e_metrics"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)


def _load(name: str, config: str | None = None) -> evaluate.EvaluationModule:
    return evaluate.load(str(MODULES / name), config)


def _generationeval_fixture(name: str) -> tuple[list[list[str]], list[str]]:
    num_refs = json.loads((GENERATIONEVAL / "expected.json").read_text(encoding="utf-8"))[name]["num_refs"]
    return read_generation_files([GENERATIONEVAL / name / f"reference{k}" for k in range(num_refs)],
                                 GENERATIONEVAL / name / "hypothesis")


def _fake_meteor(refs_tok: list[list[str]], hyps_tok: list[str]) -> float:
    return float(len(hyps_tok))  # stands in for the jar; BLEU and TER stay real


@pytest.mark.parametrize("task", ["mnli", "mrpc", "cola", "stsb"])
def test_glue_module_equals_suite_scorer(task: str) -> None:
    rng = np.random.default_rng(0)
    if task == "stsb":
        preds, labels = rng.uniform(0, 5, 40).astype(np.float32), rng.uniform(0, 5, 40).astype(np.float32)
    else:
        classes = 3 if task == "mnli" else 2
        preds, labels = rng.integers(0, classes, 40), rng.integers(0, classes, 40)
    module = _load("lora_glue", task)
    for start in range(0, 40, 16):  # add_batch accumulates; compute scores the whole corpus
        module.add_batch(predictions=preds[start:start + 16], references=labels[start:start + 16])
    expected = compute_metrics(task, preds, labels)
    assert module.compute() == pytest.approx(expected, abs=1e-6 if task == "stsb" else 0)
    assert set(expected) == {"mnli": {"accuracy"}, "mrpc": {"accuracy", "f1"},
                             "cola": {"accuracy", "matthews_correlation"},
                             "stsb": {"pearson", "spearmanr"}}[task]


def test_glue_module_names_the_tasks_on_a_bad_config() -> None:
    with pytest.raises(KeyError, match=r"not a GLUE task.*mrpc"):
        _load("lora_glue", "squad")


@pytest.mark.parametrize("name", ["raw_punct", "nonascii_ws"])
def test_generationeval_module_equals_suite_scorer(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_repro.metrics import webnlg

    monkeypatch.setattr(webnlg, "meteor_files", _fake_meteor)
    refs, hyps = _generationeval_fixture(name)
    module = _load("lora_generationeval")
    module.add_batch(predictions=hyps[:3], references=refs[:3])
    module.add_batch(predictions=hyps[3:], references=refs[3:])
    assert module.compute(num_refs=4) == score_generation(refs, hyps, num_refs=4)
    assert module.compute(predictions=hyps, references=refs) == score_generation(refs, hyps)


@pytest.mark.parametrize("mode", ["python", "perl"])
def test_e2e_module_equals_suite_scorer(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e_scorer, "require_java", lambda: "java")
    monkeypatch.setattr(e2e_scorer, "coco_scores", lambda refs, hyps: {"METEOR": 0.0, "ROUGE_L": 0.0,
                                                                        "CIDEr": float(len(hyps))})
    refs, hyps = read_e2e_files(E2E_FIXTURES / "example.ref", E2E_FIXTURES / "example.hyp")
    got = _load("lora_e2e").compute(predictions=hyps, references=refs, mode=mode)
    assert got == score_e2e(refs, hyps, mode=mode)
    with pytest.raises(ValueError, match="mode must be one of"):
        _load("lora_e2e").compute(predictions=hyps, references=refs, mode="sacrebleu")


@pytest.mark.java
@pytest.mark.slow
def test_modules_with_java_equal_the_official_fixture_scores() -> None:
    expected = json.loads((GENERATIONEVAL / "expected.json").read_text(encoding="utf-8"))["raw_punct"]
    refs, hyps = _generationeval_fixture("raw_punct")
    scores = _load("lora_generationeval").compute(predictions=hyps, references=refs)
    assert scores == pytest.approx(expected["official"], abs=1e-12)
    # The suite's E2E scorer equals these printed scores (test_e2e_metrics); so must the module.
    official = json.loads((E2E_FIXTURES / "expected.json").read_text(encoding="utf-8"))["example"]["python_mode"]
    e2e_refs, e2e_hyps = read_e2e_files(E2E_FIXTURES / "example.ref", E2E_FIXTURES / "example.hyp")
    e2e = _load("lora_e2e").compute(predictions=e2e_hyps, references=e2e_refs)
    assert {k: round(e2e[k], 4) for k in official} == official


@pytest.mark.slow
def test_modules_load_offline_by_path_into_an_empty_cache(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = ("import evaluate; print(evaluate.load('lora_repro/evaluate_metrics/lora_glue', 'qqp')"
              ".compute(predictions=[1, 0], references=[1, 1]));"
              "[evaluate.load(f'lora_repro/evaluate_metrics/{n}') for n in ('lora_e2e', 'lora_generationeval')]")
    proc = subprocess.run([sys.executable, "-c", script], cwd=paths.REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "{'accuracy': 0.5, 'f1': 0.6666666666666666}"
