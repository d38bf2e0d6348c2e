"""Bad input at any entry point: one line on stderr naming the input and the fix, exit code 2.

Why a helper: a mistyped value used to end in a 20-60 line traceback (or Hydra's own multi-line
message and exit 1) whose last line was right but buried. Every command under experiments/ wraps
its `main` in `one_line_errors`, so the same exceptions give the same one line everywhere; the
exceptions themselves stay where they are raised (schemas, config, readers, preflight) and keep
their types. `--debug` on the command line or `HYDRA_FULL_ERROR=1` lets the traceback through.

Exit code 2 is argparse's and the shell's convention for a usage error; a run that starts and
then fails (a NaN loss) is not bad input and is recorded as failed instead (lora_repro.run).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

DEBUG_FLAG = "--debug"
EXIT_BAD_INPUT = 2


class BadInput(ValueError):
    """An input that cannot work (a folder, a file, a flag); the message names it and the fix."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are `BadInput` (one line) instead of usage text and its own exit."""

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see --help)")


def bad_input_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the input is wrong", not "the code is wrong".

    Imported here, not at module level: the readers and loaders import much of the package, and
    this module is imported by the entry points before anything else.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lora_repro.analysis.sweep import SweepInputError
    from lora_repro.data.glue import GlueDataMissingError, GlueFormatError, GlueHubError
    from lora_repro.data.nlg import NLGDataError, NLGDataMissing
    from lora_repro.interop.peft import AdapterError
    from lora_repro.models.load import ModelSourceError
    from lora_repro.paths import DataRootError
    from lora_repro.schemas import ConfigError

    return (BadInput, ConfigError, DataRootError, GlueDataMissingError, GlueFormatError, GlueHubError,
            NLGDataError, NLGDataMissing, ModelSourceError, AdapterError, SweepInputError, HydraException,
            OmegaConfBaseException)


def one_line(err: BaseException) -> str:
    """An error's message on one line: Hydra's indented option lists joined, its search path dropped,
    and the cause appended when the message alone does not say what was wrong (Hydra's merge errors)."""
    text = str(err).split("\nConfig search path")[0]
    parts: list[str] = []
    for raw in text.splitlines():
        if raw.startswith("\t") and parts:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + raw.strip()
        elif raw.strip():
            parts.append(raw.strip())
    line = "; ".join(parts) or type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in line:
        line += f": {str(cause).strip().splitlines()[0]}"
    return line


def wants_traceback(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an entry point `main(argv)`: bad input -> `prog: error: <one line>` on stderr, exit 2.

    `argv` None means sys.argv[1:]; `--debug` is taken out of it before `main` sees it.
    """

    def decorate(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> Any:
            args = list(sys.argv[1:] if argv is None else argv)
            debug = wants_traceback(args)
            try:
                return main([a for a in args if a != DEBUG_FLAG])
            except bad_input_types() as err:
                if debug:
                    raise
                print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                raise SystemExit(EXIT_BAD_INPUT) from None

        return wrapper

    return decorate


def positive_int(text: str) -> int:
    """An argparse `type`: an integer >= 1 (0 and negatives used to mean "the default" or "nothing")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value
