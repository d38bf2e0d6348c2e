"""GLUE task specs: how each task's files are laid out on disk and on the hub, and how it is scored.

Split names are the TSV file stems (``train``, ``dev``, ``test``; MNLI ``dev_matched``,
``dev_mismatched``, ``test_matched``, ``test_mismatched``). Test splits carry no labels. Labels
follow the hub dataset's integer convention (e.g. MNLI entailment=0, neutral=1, contradiction=2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk and on the hub, and how it is scored.

    ``text_columns`` and ``label_column`` are TSV header names; ``file_labels`` spells each label
    as the TSV does, in id order (``None`` for the STS-B float score). Files listed in
    ``headerless_splits`` have no header row and take ``headerless_columns`` as their header.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    file_labels: tuple[str, ...] | None
    hub_text_columns: tuple[str, ...]
    headline_metric: str
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    headerless_splits: tuple[str, ...] = ()
    headerless_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Output size of the classification head (1 for regression)."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.train_split, *self.eval_splits, *self.test_splits)

    def file_name(self, split: str) -> str:
        return f"{split}.tsv"


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="mnli", folder="MNLI", text_columns=("sentence1", "sentence2"),
            label_column="gold_label", label_names=("entailment", "neutral", "contradiction"),
            file_labels=("entailment", "neutral", "contradiction"),
            hub_text_columns=("premise", "hypothesis"), headline_metric="accuracy",
            eval_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
        ),
        GlueTask(
            name="sst2", folder="SST-2", text_columns=("sentence",), label_column="label",
            label_names=("negative", "positive"), file_labels=_BINARY,
            hub_text_columns=("sentence",), headline_metric="accuracy",
        ),
        GlueTask(
            name="mrpc", folder="MRPC", text_columns=("#1 String", "#2 String"),
            label_column="Quality", label_names=("not_equivalent", "equivalent"),
            file_labels=_BINARY, hub_text_columns=("sentence1", "sentence2"),
            headline_metric="accuracy",
        ),
        GlueTask(
            name="cola", folder="CoLA", text_columns=("sentence",), label_column="label",
            label_names=("unacceptable", "acceptable"), file_labels=_BINARY,
            hub_text_columns=("sentence",), headline_metric="matthews_correlation",
            headerless_splits=("train", "dev"),
            headerless_columns=("source", "label", "original_label", "sentence"),
        ),
        GlueTask(
            name="qnli", folder="QNLI", text_columns=("question", "sentence"),
            label_column="label", label_names=_ENTAIL, file_labels=_ENTAIL,
            hub_text_columns=("question", "sentence"), headline_metric="accuracy",
        ),
        GlueTask(
            name="qqp", folder="QQP", text_columns=("question1", "question2"),
            label_column="is_duplicate", label_names=("not_duplicate", "duplicate"),
            file_labels=_BINARY, hub_text_columns=("question1", "question2"),
            headline_metric="accuracy",
        ),
        GlueTask(
            name="rte", folder="RTE", text_columns=("sentence1", "sentence2"),
            label_column="label", label_names=_ENTAIL, file_labels=_ENTAIL,
            hub_text_columns=("sentence1", "sentence2"), headline_metric="accuracy",
        ),
        GlueTask(
            name="stsb", folder="STS-B", text_columns=("sentence1", "sentence2"),
            label_column="score", label_names=None, file_labels=None,
            hub_text_columns=("sentence1", "sentence2"), headline_metric="pearson",
        ),
        GlueTask(
            name="wnli", folder="WNLI", text_columns=("sentence1", "sentence2"),
            label_column="label", label_names=("not_entailment", "entailment"),
            file_labels=_BINARY, hub_text_columns=("sentence1", "sentence2"),
            headline_metric="accuracy",
        ),
    )
}


def get_task(task: str) -> GlueTask:
    """The task spec, or an error listing the known task names."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(
            f"unknown GLUE task {task!r}; known tasks: {', '.join(TASKS)}"
        ) from None


def check_split(spec: GlueTask, split: str) -> None:
    """Raise, listing the task's splits, if ``split`` is not one of them."""
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for GLUE task {spec.name!r}; "
            f"its splits are: {', '.join(spec.splits)}"
        )
