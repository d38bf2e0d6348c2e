"""Bad input at every entry point: exactly one non-empty stderr line naming the input, exit code 2, and
nothing written (no record, no cache, no Hydra output folder); a NaN loss gives a failed record that a
rerun trains again. Most cases call an entry point's `main` in-process; a few go through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import bench_peer, latency, params, reproduce, sweep_report
from experiments import run as run_entry
from lora_repro import preflight
from lora_repro.command_line import check_command_line, jobs
from lora_repro.config import resolve_overrides
from lora_repro.report.common import completed_runs
from lora_repro.schemas import ConfigError
from lora_repro.store import RunStore, new_record

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["task=rte", "model=tiny_bert", "scale=smoke"]
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.fixture
def sandbox(store_root, tmp_path, monkeypatch):
    """An empty store, cache and working directory (Hydra writes outputs/ there), all checked empty later."""
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("LORA_REPRO_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    preflight.count_rows.cache_clear()

    def unchanged(before: dict[Path, bytes] | None = None) -> None:
        assert not cache.exists() and not any(cwd.iterdir())
        assert files(store_root) == (before or {})

    return unchanged


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def one_line_exit(capsys, main, argv: list[str], *fragments: str) -> str:
    """Call an entry point's main; assert exit code 2 and one stderr line holding every fragment."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def rte_root(tmp_path: Path, train: str, dev: str) -> Path:
    """A data root holding only GLUE RTE, with the given train.tsv and dev.tsv text (bytes for train too)."""
    folder = tmp_path / "data" / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(train.encode() if isinstance(train, str) else train)
    (folder / "dev.tsv").write_text(dev)
    return tmp_path / "data"


ROWS = "".join(f"{i}\tA sentence {i}.\tAnother {i}.\t{'entailment' if i % 2 else 'not_entailment'}\n"
               for i in range(4))
NO_SUBSETS = ["train.train_subset=null", "train.eval_subset=null"]
HUB_MODEL = ["task=rte", "scale=smoke", "model=roberta_base", "model.hub_id=no-such-org/no-such-model"]


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["method.alpha=0"], "method.alpha"),
    (["method.r=2.5"], "method.r"),
    (["method.r=0"], "method.r"),
    (["method.targets=[]"], "method.targets"),
    (["method.targets=[q,x]"], "unknown"),
    (["method.dropout=1.0"], "method.dropout"),
    (["train.max_steps=0"], "train.max_steps"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.lr=0"], "train.lr"),
    (["train.epochs=-1"], "train.epochs"),
    (["train.warmup_ratio=2"], "train.warmup_ratio"),
    (["train.precision=fp16", "train.device=cpu"], "fp16"),
    (["method=prefix_embed", "method.prefix_length=-1"], "method.prefix_length"),
    (["method=adapter_h", "method.bottleneck=0"], "method.bottleneck"),
    (["seed=-1"], "seed"),
    (["data_source=ftp"], "data_source"),
    (["experiment_name=../elsewhere"], "experiment_name"),
    (["experiment_name=nan"], "experiment_name=nan"),  # YAML reads nan as a float
    (["train.foo=1"], "train.foo"),
    (["train.lr=abc"], "train.lr"),
    (["train.lr=[1"], "[1"),
    (["method.r=1,2"], "method.r=1,2"),
    (["scale=huge"], "scale/huge"),
    (["method=nope"], "method/nope"),
    (["task=nope"], "task/nope"),
    (["model=nope"], "model/nope"),
    (["train.train_subset=100000"], "train.train_subset=100000 is larger than the rte train split"),
])
def test_run_rejects_a_bad_value(sandbox, capsys, overrides, fragment):
    one_line_exit(capsys, run_entry.main, [*SMOKE, *overrides], fragment)
    sandbox()


def test_a_scale_that_contradicts_the_protocol(sandbox, capsys):
    one_line_exit(capsys, run_entry.main, ["+experiment=glue_smoke", "scale=cpu"], "scale=cpu contradicts", "smoke")
    one_line_exit(capsys, reproduce.main, ["+experiment=glue_smoke", "scale=cpu"], "scale=cpu contradicts")
    sandbox()


def test_a_sweep_is_checked_before_its_first_job(sandbox, capsys):
    one_line_exit(capsys, run_entry.main, ["-m", *SMOKE, "method.r=8,0"], "method.r")
    one_line_exit(capsys, run_entry.main, ["-m", "+experiment=glue_smoke", "scale=smoke,cpu"], "scale=cpu contradicts")
    sandbox()


def test_sweep_jobs_expand_as_hydras_basic_sweeper(sandbox):
    assert len(jobs(["+experiment=sweep_rank_glue"], multirun=True)) == 21  # 7 ranks x 3 seeds
    assert len(jobs(["+experiment=sweep_budget_glue"], multirun=True)) == 14  # `seed: 0` is one value, not a sweep
    assert len(jobs(["+experiment=sweep_rank_glue", "method.r=4,8"], multirun=True)) == 6  # the command line wins
    assert check_command_line([*SMOKE, "method.r=4"]) == 1  # a good command line passes (what the cases change)
    reproduce.main(["+experiment=glue_smoke", "--check-only"])  # and a good protocol
    sandbox()


def stored_record(overrides: list[str]) -> dict[Path, bytes]:
    """A completed record for this config in the store (as an earlier run would have left it)."""
    cfg = resolve_overrides(overrides)
    RunStore().write(new_record(cfg, experiment=cfg["experiment_name"], task="rte", model="tiny_bert", method="lora",
                                seed=0, scale="smoke", epochs=[], best={"accuracy": 0.9}, best_epoch=1,
                                params={"trainable": 1, "trainable_with_head": 1, "total": 1}, timing={}, memory={},
                                checkpoint={}, status="completed"))
    return files(Path(os.environ["LORA_REPRO_RESULTS"]))


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_a_missing_or_empty_data_root_fails_before_the_skip(sandbox, capsys, tmp_path, monkeypatch, root):
    before = stored_record(SMOKE)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("LORA_REPRO_DATA", str(tmp_path / root))
    one_line_exit(capsys, run_entry.main, SMOKE, str(tmp_path / root), "LORA_REPRO_DATA")
    sandbox(before)


@pytest.mark.parametrize(("train", "fragments"), [
    (None, ("train file not found",)),
    (RTE_HEADER + ROWS + "9\tonly two fields\n", ("train.tsv, line 6", "4 tab-separated fields")),
    ((RTE_HEADER + ROWS.splitlines(True)[0]).encode() + b"1\t\xff\xfe broken\tx\tentailment\n",
     ("train.tsv, line 3", "not UTF-8")),
    (RTE_HEADER, ("the train split has no rows",)),
    ("", ("found an empty file",)),
])
def test_bad_data_files_name_file_and_line(sandbox, capsys, tmp_path, monkeypatch, train, fragments):
    root = rte_root(tmp_path, "" if train is None else train, RTE_HEADER + ROWS)
    if train is None:
        (root / "glue" / "RTE" / "train.tsv").unlink()
    monkeypatch.setenv("LORA_REPRO_DATA", str(root))
    one_line_exit(capsys, run_entry.main, [*SMOKE, *NO_SUBSETS], *fragments)
    sandbox()


def test_hub_model_offline_fails_at_once(sandbox, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_exit(capsys, run_entry.main, HUB_MODEL, "no-such-org/no-such-model", "HF_HUB_OFFLINE")
    sandbox()


def test_sdpa_on_a_model_without_it_fails_at_once(sandbox, capsys):
    one_line_exit(capsys, run_entry.main, [*SMOKE, "model=tiny_deberta_v2", "model.attn_implementation=sdpa"],
                  "model.attn_implementation=sdpa", "DebertaV2ForSequenceClassification",
                  "use model.attn_implementation=eager")
    sandbox()


def test_unreachable_hub_fails_at_once(sandbox, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for name in preflight.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    one_line_exit(capsys, run_entry.main, HUB_MODEL, "unreachable", "HF_HUB_OFFLINE=1")
    sandbox()


@pytest.mark.parametrize(("variable", "what"), [("LORA_REPRO_RESULTS", "results folder"),
                                                ("LORA_REPRO_CACHE", "cache folder")])
def test_unwritable_results_or_cache_folder(sandbox, capsys, tmp_path, monkeypatch, variable, what):
    blocker = tmp_path / "a_file"  # root may write anywhere: a file where a folder must be is unwritable for all
    blocker.write_text("")
    monkeypatch.setenv(variable, str(blocker / "sub"))
    one_line_exit(capsys, run_entry.main, SMOKE, what, variable)
    blocker.unlink()
    sandbox()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["+experiment=glue_smoke", "--seeds", "0"], "--seeds"),
    (["+experiment=glue_smoke", "--seeds", "-1"], "--seeds"),
    (["+experiment=glue_smoke", "--shard", "2/2"], "--shard"),
    (["task=rte"], "names no protocol"),
    (["+experiment=sweep_rank_glue"], "names no protocol"),
])
def test_reproduce_rejects_bad_flags(sandbox, capsys, argv, fragment):
    one_line_exit(capsys, reproduce.main, argv, fragment)
    sandbox()


def test_reproduce_checks_the_data_before_any_skip(sandbox, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_REPRO_DATA", str(tmp_path / "missing"))
    one_line_exit(capsys, reproduce.main, ["+experiment=glue_smoke"], "LORA_REPRO_DATA")
    sandbox()


@pytest.mark.parametrize(("main", "argv", "fragment"), [
    (latency.main, ["--trials", "0"], "--trials"),
    (latency.main, ["--grid", "nope"], "latency_nope"),
    (bench_peer.main, ["--rounds", "0"], "--rounds"),
    (bench_peer.main, ["--steps", "10", "--skip", "10"], "--skip"),
    (sweep_report.main, [], "name the sweep"),
    (sweep_report.main, ["--experiment", "sweep_nothing"], "sweep_nothing"),
    (params.main, ["--rows", "3"], "--rows"),
])
def test_other_entry_points_reject_bad_flags(sandbox, capsys, main, argv, fragment):
    one_line_exit(capsys, main, argv, fragment)
    sandbox()


def test_bench_peer_report_only_needs_its_json(sandbox, capsys, tmp_path):
    one_line_exit(capsys, bench_peer.main, ["--report-only", "--out", str(tmp_path / "out" / "peer.md")], "peer.json")
    sandbox()


def test_params_checks_the_results_folder(sandbox, capsys, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("LORA_REPRO_RESULTS", str(tmp_path / "a_file" / "results"))
    one_line_exit(capsys, params.main, [], "results folder")


def test_debug_and_hydra_full_error_show_the_traceback(sandbox, monkeypatch):
    with pytest.raises(ConfigError, match=r"method\.alpha"):
        run_entry.main([*SMOKE, "method.alpha=0", "--debug"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        reproduce.main(["+experiment=glue_smoke", "train.lr=0"])
    sandbox()


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("argv", [["experiments.run", "-m", *SMOKE, "method.alpha=0"],
                                  ["experiments.reproduce", "+experiment=glue_smoke", "--seeds", "-1"]])
def test_cli_one_line_and_no_hydra_folder(sandbox, argv):
    done = cli([sys.executable, "-m", *argv], Path.cwd())
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error: "), done.stderr
    sandbox()  # neither outputs/ nor multirun/


@pytest.mark.parametrize(("args", "fragment"), [
    (["JOBS=0"], "JOBS=0"), (["SEEDS=0"], "SEEDS=0"), (["SEEDS=-1"], "SEEDS=-1"), (["SCALE=huge"], "SCALE=huge"),
    (["PROTOCOL=nope"], "glue_cpu_nope"),
    (["SCALE=smoke", f"PYTHON={sys.executable}", "ARGS=train.lr=0"], "train.lr must be > 0"),  # --check-only
])
def test_make_rejects_bad_arguments_before_running(sandbox, tmp_path, args, fragment):
    # PYTHON=false: had a recipe line run, make would report its failure on a second line
    done = cli(["make", "--no-print-directory", "-C", str(REPO), "PYTHON=false", "STAMP=", "reproduce-glue", *args],
               tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
    sandbox()


def test_nan_loss_records_a_failed_run_and_a_rerun_trains(sandbox, monkeypatch):
    from lora_repro.run import run
    from lora_repro.tasks import glue

    overrides = ["task=rte", "model=tiny_bert", "scale=smoke", "experiment_name=nanloss"]
    cfg = resolve_overrides(overrides)
    with monkeypatch.context() as patch:
        patch.setattr(glue, "classifier_loss", lambda model, batch: model(**batch).loss * torch.tensor(float("nan")))
        failed = run(cfg)
    assert failed["status"] == "failed" and "loss is nan" in failed["reason"] and failed["best_epoch"] is None
    assert RunStore().read("nanloss", failed["key"])["status"] == "failed"
    assert completed_runs("nanloss").empty  # tables skip it
    again = run(cfg)
    assert again["status"] == "completed" and again["key"] == failed["key"] and "reason" not in again
    assert RunStore().read("nanloss", again["key"])["status"] == "completed"
