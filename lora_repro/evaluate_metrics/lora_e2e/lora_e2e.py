"""The E2E NLG Challenge scores (tuetschek/e2e-metrics), as an ``evaluate`` metric module.

Load it by path (offline): ``evaluate.load("lora_repro/evaluate_metrics/lora_e2e")``. The scores come
from :func:`lora_repro.metrics.e2e.score_e2e`, the scorer the suite's E2E runs use (BLEU/NIST in the
official scorer's ``-p`` Python mode or its Perl mode; METEOR, ROUGE-L and CIDEr through
pycocoevalcap's jars), so numbers from either path are the same; this file only adapts its interface.
"""

import evaluate

from lora_repro.evaluate_metrics import metric_info
from lora_repro.metrics.e2e import score_e2e

_DESCRIPTION = """BLEU, NIST, METEOR, ROUGE_L and CIDEr exactly as the official E2E scorer
(measure_scores.py) prints them. mode="python" is the scorer's -p (the LoRA paper's numbers),
mode="perl" its default mteval-v13a-sig.pl. BLEU, METEOR and ROUGE_L are fractions (the paper
shows x100). METEOR, ROUGE_L and CIDEr need a Java runtime.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one output string per input.
    references: the list of reference strings of each input.
    mode: "python" (default, measure_scores.py -p) or "perl".
Returns:
    BLEU, NIST, METEOR, ROUGE_L, CIDEr (floats, unrounded; the scorer prints 4 decimals).
Example:
    >>> e2e = evaluate.load("lora_repro/evaluate_metrics/lora_e2e")
    >>> e2e.compute(predictions=["The Eagle is a pub."], references=[["The Eagle is a pub.", "A pub."]])
"""

_CITATION = """@article{dusek2020evaluating,
  title={Evaluating the state-of-the-art of End-to-End Natural Language Generation: The {E2E NLG} challenge},
  author={Du{\\v{s}}ek, Ond{\\v{r}}ej and Novikova, Jekaterina and Rieser, Verena},
  journal={Computer Speech \\& Language}, volume={59}, pages={123--156}, year={2020}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LoraE2e(evaluate.Metric):
    """Corpus-level E2E scores over everything added (``add``/``add_batch``/``compute``)."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://github.com/tuetschek/e2e-metrics"])

    def _compute(self, predictions, references, mode: str = "python") -> dict[str, float]:
        return score_e2e(references, predictions, mode=mode)
