"""From command-line overrides to one validated run config: compose, apply the protocol, validate.

Precedence, lowest first:
1. schema defaults (lora_repro/schemas.py), then conf/config.yaml and the chosen group options
   (task/, model/, method/ presets, scale/, logger/), then an experiment's own values: Hydra;
2. the protocol block of an experiment (conf/experiment/*.yaml), the one second layer, applied here
   by `resolve` because its values depend on the method and task being run:
   `protocol.hparams._all` < `protocol.task_hparams[task]` < `protocol.hparams[method]._all`
   < `protocol.hparams[method][task]`. Keys name a train field (`lr`) or a method field (`method.r`);
3. `train.*` and `method.*` overrides given on the command line, re-applied last so they beat (2).
The protocol block is dropped from the resolved config (it is not part of a run's identity).

`init_source_key` composes the run a config starts from (`train.init_from_task`): the same
overrides without the init override, with the source task in place of its own.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lora_repro import schemas
from lora_repro.paths import REPO_ROOT
from lora_repro.provenance import STALE_CHOICES
from lora_repro.schemas import ConfigError
from lora_repro.store import _NAME_PATTERN as STORE_FOLDER_NAME  # the store's rule for folder names
from lora_repro.store import run_key

CONF_DIR = REPO_ROOT / "conf"
ALL = "_all"
TASK_KINDS = ("glue", "nlg")
EXPLICIT_GROUPS = ("train.", "method.")
METHOD_SCHEMAS = {"finetune": schemas.FineTuneConfig, "lora": schemas.LoRAConfig,
                  "adapter": schemas.AdapterConfig, "prefix": schemas.PrefixConfig,
                  "peft_adapter": schemas.PeftAdapterConfig}
SCHEMA_PREFIX = "/schema/"
DATA_SOURCES = ("local", "hub")

__all__ = ["ConfigError", "compose_config", "group_option", "init_source_key", "method_label", "resolve"]


def compose_config(overrides: Sequence[str] = (), config_name: str = "config",
                   return_hydra_config: bool = False) -> DictConfig:
    """The config a Hydra main would see for these overrides (inside a Hydra main: its own conf/);
    `return_hydra_config`: with Hydra's own node (`hydra.sweeper.params` of a sweep)."""
    schemas.register()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def group_option(group: str, name: str) -> dict[str, Any]:
    """One option of a config group (e.g. 'method', 'lora') as a plain dict: its schema, bases and values."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} {name!r}; known: {known} (conf/{group}/)")
    node = OmegaConf.load(path)
    bases = [entry for entry in node.pop("defaults", []) if isinstance(entry, str) and entry != "_self_"]
    layers = [OmegaConf.structured(schemas.SCHEMAS[base[len(SCHEMA_PREFIX):].split("@")[0]])
              if base.startswith(SCHEMA_PREFIX) else OmegaConf.create(group_option(group, base)) for base in bases]
    return OmegaConf.to_container(OmegaConf.merge(*layers, node), resolve=True)


def parse_overrides(text: str) -> dict[str, Any]:
    """'r=8;targets=[q;v]' -> {'r': 8, 'targets': ['q', 'v']}: the compact form of the paper CSVs (';' in
    place of Hydra's ',' so a cell needs no quoting), typed by Hydra's own override parser."""
    items = [item.replace(";", ",") for item in re.split(r";(?![^\[]*\])", text or "") if item]
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(items)}


def explicit_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """The `train.*` / `method.*` values set on the command line, typed by Hydra's own override parser."""
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o])
    return {o.key_or_group: o.value() for o in parsed
            if o.key_or_group.startswith(EXPLICIT_GROUPS) and not o.is_delete()}


def method_label(cfg: dict) -> str:
    """The method's name in tables and records: a preset's label (e.g. adapter_h_6m), else its name."""
    return cfg["method"].get("label") or cfg["method"]["name"]


def resolve(composed: dict, overrides: Sequence[str] = ()) -> dict:
    """The run config: `composed` (a plain dict from `compose_config`) with the protocol's values for
    its method and task, then the command line's `train.*`/`method.*` overrides, validated."""
    cfg = copy.deepcopy(composed)
    protocol = cfg.pop("protocol", None) or {}
    check_protocol_scale(cfg, protocol)
    task, method = cfg["task"]["name"], method_label(cfg)
    hparams = protocol.get("hparams", {})
    layers = (hparams.get(ALL, {}), protocol.get("task_hparams", {}).get(task, {}),
              hparams.get(method, {}).get(ALL, {}), hparams.get(method, {}).get(task, {}))
    for layer in layers:
        for key, value in layer.items():
            section, _, name = key.rpartition(".")
            cfg[section or "train"][name] = value
    for dotted, value in explicit_overrides(overrides).items():
        section, name = dotted.split(".", 1)
        cfg[section][name] = value
    validate(cfg)
    return cfg


def check_protocol_scale(cfg: dict, protocol: dict) -> None:
    """A protocol declares its scale (`protocol.scale`); a command-line `scale=` that differs would
    label the protocol's runs with another scale than the one its values were chosen for."""
    declared = protocol.get("scale")
    if declared is not None and cfg["scale"] != declared:
        raise ConfigError(f"scale={cfg['scale']} contradicts experiment {cfg['experiment_name']!r}, whose protocol is "
                          f"scale {declared}; drop scale={cfg['scale']} or choose the experiment made for that scale "
                          f"(conf/experiment/*_{cfg['scale']}*.yaml)")


def resolve_overrides(overrides: Sequence[str]) -> dict:
    """Compose and resolve in one call (reports, tests, the reproduce driver)."""
    return resolve(OmegaConf.to_container(compose_config(overrides), resolve=True), overrides)


def method_config(method: dict) -> schemas.MethodConfig:
    """A method dict as its family's typed config (the family is the method registry's)."""
    from lora_repro.methods import family_of

    return schemas.typed(METHOD_SCHEMAS[family_of(method["name"])], method, "method")


def validate(cfg: dict) -> None:
    """Type and range checks of every group (schemas.py), then what needs the machine: the device."""
    kind = cfg["task"].get("kind")
    if cfg.get("stale", "keep") not in STALE_CHOICES:
        raise ConfigError(f"stale={cfg['stale']!r}: use one of {', '.join(STALE_CHOICES)} (what to do with a stored "
                          "run made by other code)")
    if kind not in TASK_KINDS:
        raise ConfigError(f"task.kind={kind!r} has no runner; known: {TASK_KINDS}")
    validate_top_level(cfg)
    train = schemas.typed(schemas.TrainConfig, cfg["train"], "train")
    schemas.typed(schemas.GlueTaskConfig if kind == "glue" else schemas.NLGTaskConfig, cfg["task"], "task")
    schemas.typed(schemas.ModelConfig, cfg["model"], "model")
    method_config(cfg["method"])
    if train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if train.precision == "fp16" and device_for(train.device).type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def validate_top_level(cfg: dict) -> None:
    """The ungrouped keys of conf/config.yaml: seed, data source, the store folder name."""
    seed = cfg["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}; e.g. seed=0")
    if cfg["data_source"] not in DATA_SOURCES:
        raise ConfigError(f"data_source={cfg['data_source']!r} is not one of {DATA_SOURCES}")
    name = cfg["experiment_name"]
    if not isinstance(name, str) or not STORE_FOLDER_NAME.fullmatch(name):
        raise ConfigError(f"experiment_name={cfg['experiment_name']!r} is not a plain folder name; use letters, "
                          "digits, '.', '_' and '-' (it names the store folder results/runs/<experiment_name>)")


def device_for(device: str) -> torch.device:
    """`train.device` as a torch device (auto: CUDA when visible)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_source_key(overrides: Sequence[str]) -> str | None:
    """The key of the run that a run starts from (`train.init_from_task`), or None.

    The source is the same composition (protocol, method, seed, every other override) with the
    source task in place of the run's own and without the command line's init override, so
    `task=rte` then `train.init_from_task=rte` finds the first run.
    """
    source = resolve_overrides(overrides)["train"]["init_from_task"]
    if not source:
        return None
    rest = [o for o in overrides if o.lstrip("+~").split("=")[0] not in ("train.init_from_task", "task")]
    return run_key(resolve_overrides([*rest, f"task={source}"]))
