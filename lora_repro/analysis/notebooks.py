"""Execute the notebooks (notebooks/*.ipynb) headless and keep their outputs: `make notebooks`, the tests.

nbclient runs each notebook in a fresh `python3` kernel (ipykernel's kernel for this interpreter, so
the venv's packages), from the notebooks folder, with the repository on PYTHONPATH so the kernel
imports this checkout's lora_repro (the project is not pip-installed). The environment passes
through: $LORA_REPRO_RESULTS picks the store, $LORA_REPRO_NOTEBOOK_SCALE the protocols' scale.

    python -m lora_repro.analysis.notebooks [NOTEBOOK ...] [--no-save] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lora_repro.paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL = "python3"


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The named notebooks (paths or names in notebooks/), else every notebook there, in name order."""
    if not names:
        return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    paths = [Path(name) if Path(name).is_file() else NOTEBOOKS_DIR / Path(name).with_suffix(".ipynb").name
             for name in names]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {missing}; the notebooks are {notebook_paths()}")
    return paths


def kernel_env() -> dict[str, str]:
    """This process's environment, with the checkout first on PYTHONPATH and a headless matplotlib; progress
    bars, transformers' load reports (a model rebuilt for its initial LoRA matrices) and tqdm's note that the
    kernel lacks ipywidgets stay out of the saved outputs."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    quiet = {"PYTHONWARNINGS": "ignore:IProgress not found", "TRANSFORMERS_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", **quiet}


def execute(path: Path, save: bool = True, timeout: int = 900):
    """Run every cell of `path` in a fresh kernel; write the outputs back into it when `save`.

    A failing cell raises nbclient's CellExecutionError naming the cell and the error; nothing is
    written then, so a broken run never replaces a notebook's last good outputs.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:  # no timing metadata: a re-execution changes only what the store changed
        cell.metadata.pop("execution", None)
    client = NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=kernel_env())
    if save:
        from lora_repro.io import atomic_write_text

        atomic_write_text(path, nbformat.writes(notebook) + "\n")
    return notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook names or paths (default: all in notebooks/)")
    parser.add_argument("--no-save", action="store_true", help="execute only; leave the files as they are")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in notebook_paths(args.notebooks):
        started = time.perf_counter()
        execute(path, save=not args.no_save, timeout=args.timeout)
        print(f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}: "
              f"executed in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
