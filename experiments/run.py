"""`python -m experiments.run task=sst2 model=minilm_l6 method=lora scale=cpu` — one run (or -m for a sweep).

Every job of the command line is checked (lora_repro.command_line) before Hydra's main starts, so bad
input is one line on stderr and exit code 2 (`--debug` or HYDRA_FULL_ERROR=1: the traceback).
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_repro import schemas
from lora_repro.command_line import check_command_line
from lora_repro.config import init_source_key, resolve
from lora_repro.errors import one_line_errors
from lora_repro.run import run

schemas.register()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)
    record = run(resolve(OmegaConf.to_container(cfg, resolve=True), overrides), init_key=init_source_key(overrides))
    logging.getLogger(__name__).info("%s %s %s: %s, best %s (epoch %s)", record["task"], record["method"],
                                     record["key"], record["status"], record["best"], record["best_epoch"])


@one_line_errors("experiments.run")
def main(argv: list[str]) -> None:
    """Check the command line's jobs, then hand it to Hydra's main (which reads sys.argv)."""
    check_command_line(argv)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
