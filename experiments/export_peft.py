"""`python -m experiments.export_peft <run key or record path> <out dir>`: a LoRA run as a PEFT adapter.

Writes adapter_config.json and adapter_model.safetensors; load them with
`PeftModel.from_pretrained(base, out_dir)` on the run's base model (lora_repro.interop.peft).
"""

from __future__ import annotations

import argparse
import logging
import sys

from lora_repro.interop.peft import AdapterError
from lora_repro.interop.records import export_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.export_peft", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run key (16 hex chars, searched in the results store) or a record .json path")
    parser.add_argument("out_dir", help="the adapter folder to write (must not exist or be empty)")
    args = parser.parse_args(argv)
    try:
        out = export_record(args.run, args.out_dir)
    except AdapterError as err:
        print(f"export_peft: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with PeftModel.from_pretrained(base, {str(out)!r}))")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
