"""`python -m experiments.run task=sst2 model=minilm_l6 method=lora scale=cpu` — one run (or -m for a sweep)."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_repro.run import explicit_overrides, init_source_key, resolve, run


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    explicit = explicit_overrides(HydraConfig.get().overrides.task)
    record = run(resolve(plain, explicit), init_key=init_source_key(plain, explicit))
    logging.getLogger(__name__).info("%s %s %s: best %s (epoch %s)", record["task"], record["method"],
                                     record["key"], record["best"], record["best_epoch"])


if __name__ == "__main__":
    main()
