"""Check a Hydra command line (`python -m experiments.run ...`) before Hydra's main runs anything.

Why before, not inside: Hydra's main catches errors itself, prints several lines and exits 1, and
by then it has made the job's output folder; a sweep (`-m`) would run its first jobs before a bad
value in a later one stopped it. So every job of the command line is composed, resolved
(`config.resolve`) and preflighted (`preflight.check_run`) here first, and errors reach
`errors.one_line_errors` as exceptions. Informational flags (`--help`, `--cfg job`, `--info`, ...)
are left to Hydra unchecked.

The sweep is expanded as Hydra's basic sweeper does: the cartesian product of the experiment's
`hydra.sweeper.params` and the command line's sweep overrides (`key=a,b`, `key=range(..)`), the
command line winning for a key both name.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lora_repro import preflight
from lora_repro.config import compose_config, resolve

MULTIRUN_FLAGS = ("-m", "--multirun")


def jobs(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job the command line starts (one without `-m`)."""
    if not multirun:
        return [list(overrides)]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    on_command_line = {o.key_or_group for o in parsed}
    params = compose_config(fixed, return_hydra_config=True).hydra.sweeper.get("params") or {}
    swept = [f"{key}={value}" for key, value in params.items() if key not in on_command_line]
    swept += [o.input_line for o in parsed if o.is_sweep_override()]
    axes = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line] for o in parser.parse_overrides(swept)]  # a swept key may hold one value (seed: 0)
    return [[*fixed, *combination] for combination in itertools.product(*axes)]


def check_command_line(argv: Sequence[str]) -> int:
    """Compose, resolve and preflight every job of `argv`; return how many were checked (0: left to Hydra)."""
    flags = [a for a in argv if a.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return 0
    job_list = jobs([a for a in argv if not a.startswith("-")], multirun=bool(flags))
    for overrides in job_list:
        cfg = resolve(OmegaConf.to_container(compose_config(overrides), resolve=True), overrides)
        preflight.check_run(cfg)
    return len(job_list)
