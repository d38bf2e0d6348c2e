"""`python -m experiments.run task=sst2 model=minilm_l6 method=lora scale=cpu` — one run (or -m for a sweep)."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_repro import schemas
from lora_repro.config import init_source_key, resolve
from lora_repro.run import run

schemas.register()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)
    record = run(resolve(OmegaConf.to_container(cfg, resolve=True), overrides), init_key=init_source_key(overrides))
    logging.getLogger(__name__).info("%s %s %s: best %s (epoch %s)", record["task"], record["method"],
                                     record["key"], record["best"], record["best_epoch"])


if __name__ == "__main__":
    main()
