"""`make params`: count trainable parameters for the paper's configurations (results/params/)."""

import logging

from lora_repro.errors import OneLineParser, one_line_errors
from lora_repro.paths import results_dir
from lora_repro.preflight import check_folders
from lora_repro.report.params import write_param_table


@one_line_errors("experiments.params")
def main(argv: list[str]) -> None:
    OneLineParser(description=__doc__).parse_args(argv)
    check_folders()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = write_param_table(results_dir() / "params")
    print(table[["table", "model", "method", "config", "trainable_params", "paper_printed", "agrees"]].to_string())


if __name__ == "__main__":
    main()
