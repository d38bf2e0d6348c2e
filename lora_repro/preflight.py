"""What a run needs from the machine, checked before the store is asked for a record and before a
model is built: writable results and cache folders, the data files (present, UTF-8, well formed,
not empty, at least as many rows as the subsets ask for) and, for hub models, a reachable hub.

Why not in the schemas (lora_repro/schemas.py): those check values alone; these read the file
system, the data and the network. Why before the skip lookup: with the data root pointing to a
missing or empty folder, a run used to find its old record and report old metrics as if the data
were there. Each failure is a `BadInput` with one line naming the input and the fix.

The data is read with the suite's own readers, so what passes here is what training reads; the row
counts are remembered per file (path, size, mtime) so a protocol's many runs read each file once.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from lora_repro import paths
from lora_repro.errors import BadInput

HUB_PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_MODELS = "model=minilm_l6, model=smollm2_135m or a tiny_* model"


def check_run(cfg: dict) -> None:
    """Every check for one resolved run config (`config.resolve`); raises `BadInput`."""
    check_attention(cfg["model"], "causal_lm" if cfg["task"]["kind"] == "nlg" else "seq_cls")
    check_folders()
    if cfg["model"]["source"] == "hub":
        check_hub_model(cfg["model"]["hub_id"])
    if cfg["data_source"] == "local":
        check_data(cfg)
    elif not hub_offline():
        check_hub_reachable("data_source=hub", "use data_source=local with a data root")


def check_folders(results: Path | None = None) -> None:
    """The results folder (`results`, default the store's root) and the cache folder accept new files."""
    check_writable(results or paths.results_dir(), "results folder", "LORA_REPRO_RESULTS")
    check_writable(paths.cache_root(), "cache folder", paths.CACHE_ENV)


def check_writable(folder: Path, what: str, variable: str) -> None:
    """The folder, or the nearest existing folder it would be created in, accepts a new file.

    Probed with an anonymous temporary file (nothing is left behind), since `os.access` says yes
    to root on a read-only folder.
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    fix = f"set {variable} to a writable folder or make {probe} writable"
    if not probe.is_dir():
        raise BadInput(f"{what} {folder} cannot be created: {probe} is not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise BadInput(f"{what} {folder} is not writable ({err.strerror}); {fix}") from None


def data_splits(cfg: dict) -> list[tuple[str, str, str | None]]:
    """(dataset or task, split, the subset key that applies to it) for every split a run reads."""
    task = cfg["task"]
    if task["kind"] == "glue":
        from lora_repro.data.glue import get_task

        spec = get_task(task["name"])
        return [(task["name"], spec.train_split, "train_subset"),
                *((task["name"], split, "eval_subset") for split in spec.eval_splits)]
    dataset = task["dataset"]
    return [(dataset, task["train_split"], "train_subset"), (dataset, task["eval_split"], "eval_subset"),
            (dataset, task["test_split"], None)]


def check_data(cfg: dict) -> None:
    """The data root is there and not empty; each split the run reads parses, has rows, and has at
    least as many rows as its subset asks for (a larger subset used to mean "all rows", silently)."""
    root = paths.data_root(cfg["data_root"])
    if not any(root.iterdir()):
        raise BadInput(f"data root {root} is empty; set {paths.DATA_ENV} (or data_root=) to the folder "
                       "holding glue/, e2e/, webnlg/, dart/")
    kind = cfg["task"]["kind"]
    for name, split, subset_key in data_splits(cfg):
        path = split_file(kind, name, split, root)
        stat = path.stat()
        rows = count_rows(kind, name, split, str(root), str(path), stat.st_size, stat.st_mtime_ns)
        if rows == 0:
            raise BadInput(f"{path}: the {split} split has no rows; restore the file (see the data root's "
                           "PROVENANCE.md) or point the data root at a complete copy")
        subset = cfg["train"][subset_key] if subset_key else None
        if subset is not None and subset > rows:
            raise BadInput(f"train.{subset_key}={subset} is larger than the {name} {split} split ({rows} rows in "
                           f"{path}); use train.{subset_key}={rows} or less, or null for every row")


def split_file(kind: str, name: str, split: str, root: Path) -> Path:
    """The file one split is read from (the readers raise, naming the fix, when it is missing)."""
    if kind == "glue":
        from lora_repro.data.glue import split_path

        return split_path(name, split, root)
    from lora_repro.data.nlg import source_path

    return source_path(name, split, root)


@functools.lru_cache(maxsize=64)
def count_rows(kind: str, name: str, split: str, root: str, path: str, size: int, mtime_ns: int) -> int:
    """Rows of one split as the run's reader sees them; `size` and `mtime_ns` only key the memo."""
    try:
        if kind == "glue":
            from lora_repro.data.glue import read_split

            return len(read_split(name, split, root, source="local"))
        from lora_repro.data.nlg import load_examples

        return len(load_examples(name, split, root))
    except UnicodeDecodeError as err:
        raise BadInput(undecodable(Path(path), err)) from None


def undecodable(path: Path, err: UnicodeDecodeError) -> str:
    """The message for a non-UTF-8 file: the readers' error has no file name, and a byte offset
    inside a read buffer, so the first bad byte is found again in the whole file."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        offset = err.start
    except UnicodeDecodeError as whole:
        offset = whole.start
    line = raw.count(b"\n", 0, offset) + 1
    return (f"{path}, line {line}: byte {raw[offset:offset + 1]!r} is not UTF-8 ({err.reason}); "
            "re-encode the file as UTF-8 or restore it from the data root's source")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the hub library reads it, at call time (its constant is read at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def check_attention(model_cfg: dict, task_kind: str) -> None:
    """`model.attn_implementation: sdpa` on a model without an sdpa kernel (DeBERTa-v2): transformers
    would only warn and keep its eager kernel, while the run key said sdpa. Eager exists everywhere."""
    if model_cfg.get("attn_implementation") != "sdpa":
        return
    import transformers
    from transformers.models.auto import modeling_auto

    names = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task_kind == "causal_lm"
             else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    model_class = getattr(transformers, names.get(model_cfg["family"], ""), None)
    if model_class is not None and not model_class._supports_sdpa:
        raise BadInput(f"model.attn_implementation=sdpa: {model_class.__name__} has no sdpa kernel in transformers "
                       f"{transformers.__version__}; use model.attn_implementation=eager or null")


def check_hub_model(hub_id: str) -> None:
    """A hub model is in the local HF cache, or the hub can be reached: offline, or with the hub
    unreachable, `from_pretrained` retried for about a minute before failing."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return
    if hub_offline():
        raise BadInput(f"model.hub_id={hub_id!r} is not in the local HF cache and HF_HUB_OFFLINE is set; "
                       f"unset HF_HUB_OFFLINE and go online to download it once, or choose {OFFLINE_MODELS}")
    check_hub_reachable(f"model.hub_id={hub_id!r} (not in the local HF cache)",
                        f"go online, or set HF_HUB_OFFLINE=1 and choose {OFFLINE_MODELS}")


def check_hub_reachable(what: str, fix: str) -> None:
    """One TCP connection to the hub's endpoint, `HUB_PROBE_TIMEOUT_S` at most. Behind a proxy the
    endpoint is not reached directly, so the probe is left to the hub library."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise BadInput(f"{what} needs the Hugging Face hub, but {url.hostname}:{port} is unreachable "
                       f"({err.strerror or err}); {fix}") from None
