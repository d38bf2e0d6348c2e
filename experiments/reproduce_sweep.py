"""A protocol's shards as one Hydra multirun, so any Hydra launcher runs `make reproduce-*`: a SLURM
array (hydra/launcher=submitit_slurm_sweep), local submitit jobs or joblib workers.

    python -m experiments.reproduce_sweep -m +experiment=glue_paper_roberta_base_lora +shard=0/4,1/4,2/4,3/4 \\
        hydra/launcher=submitit_slurm_sweep hydra.launcher.partition=gpu
    python -m experiments.reproduce +experiment=glue_paper_roberta_base_lora --table-only

Each job runs `protocol.reproduce` on one shard (every n-th method, all its tasks and seeds), so a
run that starts from another task's run (MNLI -> RTE) finds it in its own job, already done.
`make reproduce-<name> LAUNCHER=<launcher>` writes these two commands (Makefile).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lora_repro import schemas
from lora_repro.protocol import reproduce

schemas.register()
OWN_KEYS = ("shard", "seeds")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in HydraConfig.get().overrides.task if o.lstrip("+").split("=")[0] not in OWN_KEYS]
    index, count = (int(x) for x in str(cfg.shard).split("/"))
    reproduce(overrides, seeds=cfg.get("seeds"), shard=(index, count))


if __name__ == "__main__":
    main()
