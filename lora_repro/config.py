"""Composing configs outside a Hydra main (reports, sweeps, tests) from the same conf/ tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from lora_repro.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The config a Hydra main would see for these overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def group_option(group: str, name: str) -> dict[str, Any]:
    """One option of a config group (e.g. 'method', 'lora') as a plain dict, its `defaults` merged in."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} {name!r}; known: {known} (conf/{group}/)")
    node = OmegaConf.load(path)
    bases = [entry for entry in node.pop("defaults", []) if isinstance(entry, str) and entry != "_self_"]
    merged = OmegaConf.merge(*[OmegaConf.create(group_option(group, base)) for base in bases], node)
    return OmegaConf.to_container(merged, resolve=True)


def parse_overrides(text: str) -> dict[str, Any]:
    """'r=8;targets=[q;v]' -> {'r': 8, 'targets': ['q', 'v']} (the compact form used in CSVs)."""
    result: dict[str, Any] = {}
    depth, token, tokens = 0, "", []
    for char in text or "":
        depth += char == "["
        depth -= char == "]"
        if char == ";" and depth == 0:
            tokens.append(token)
            token = ""
        else:
            token += char
    if token:
        tokens.append(token)
    for item in tokens:
        key, _, value = item.partition("=")
        if value.startswith("["):
            result[key] = [v for v in value[1:-1].split(";") if v]
        else:
            # YAML scalar typing (as Hydra overrides): 16 -> int, 0.1 / 1e-3 -> float, false -> bool, kaiming -> str
            result[key] = OmegaConf.create(f"v: {value}").v
    return result


def as_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
