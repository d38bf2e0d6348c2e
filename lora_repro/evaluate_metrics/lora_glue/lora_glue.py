"""GLUE as the LoRA paper's Table 2 reports it, as an ``evaluate`` metric module.

Load it by path (offline): ``evaluate.load("lora_repro/evaluate_metrics/lora_glue", "mrpc")``. The
scores come from :func:`lora_repro.metrics.glue.compute_metrics`, the function the suite's own
GLUE runs use, so numbers from either path are the same; this file only adapts its interface.
"""

import evaluate

from lora_repro.data.glue import TASKS, get_task
from lora_repro.evaluate_metrics import metric_info
from lora_repro.metrics.glue import compute_metrics

_DESCRIPTION = """GLUE dev-set scores named and chosen as the LoRA paper reports them: accuracy for
every classification task, plus F1 for MRPC and QQP, Matthews correlation for CoLA, Pearson and
Spearman correlation for STS-B. Fractions (correlations in [-1, 1]); the paper's tables show x100.
The paper's MNLI number pools matched and mismatched dev: pass both splits' predictions together.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (STS-B: similarity scores), one per example.
    references: gold labels (STS-B: gold scores), one per example.
Returns:
    accuracy (and f1 for mrpc/qqp, matthews_correlation for cola), or pearson and spearmanr for stsb.
Example:
    >>> glue = evaluate.load("lora_repro/evaluate_metrics/lora_glue", "mrpc")
    >>> glue.compute(predictions=[1, 0, 1], references=[1, 0, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""

_CITATION = """@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR}, year={2019}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LoraGlue(evaluate.Metric):
    """One GLUE task's paper metrics; the task is the config name."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in TASKS:
            raise KeyError(f"config name {self.config_name!r} is not a GLUE task; load the module with "
                           f"one of: {', '.join(TASKS)} (e.g. evaluate.load(path, 'mrpc'))")
        value = "float32" if get_task(self.config_name).is_regression else "int64"
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                           ["https://gluebenchmark.com/", "https://arxiv.org/abs/2106.09685"], value)

    def _compute(self, predictions, references) -> dict[str, float]:
        return compute_metrics(self.config_name, predictions, references)
