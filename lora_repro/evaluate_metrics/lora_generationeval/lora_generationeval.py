"""WebNLG and DART scores as WebNLG GenerationEval ``eval.py`` computes them, as an ``evaluate`` module.

Load it by path (offline): ``evaluate.load("lora_repro/evaluate_metrics/lora_generationeval")``. The
scores come from :func:`lora_repro.metrics.webnlg.score_generation`, the scorer the suite's WebNLG
and DART runs use (multi-bleu-detok BLEU, METEOR 1.5, pyter3 TER on nltk 3.5 tokens), so numbers
from either path are the same; this file only adapts its interface.
"""

import evaluate

from lora_repro.evaluate_metrics import metric_info
from lora_repro.metrics.webnlg import score_generation

_DESCRIPTION = """BLEU (0-100, Moses multi-bleu-detok.perl), METEOR 1.5 and TER (pyter3, 0-1) exactly
as WebNLG GenerationEval's eval.py computes them, the scorer the LoRA paper used for WebNLG and DART
(eval.py -nr 6 -m bleu,meteor,ter). Inputs with fewer references than num_refs are padded with their
first reference, as LoRA's gpt2_decode.py writes its reference files. METEOR needs a Java runtime.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one output string per input.
    references: the list of reference strings of each input.
    num_refs: references per input after padding (default: the most any input has; LoRA used 6).
Returns:
    BLEU (two decimals, as multi-bleu-detok.perl prints it), METEOR, TER (floats, unrounded).
Example:
    >>> gen = evaluate.load("lora_repro/evaluate_metrics/lora_generationeval")
    >>> gen.compute(predictions=["Alan Shepard was born in New Hampshire."],
    ...             references=[["Alan Shepard was born in New Hampshire.", "Shepard was born in 1923."]])
"""

_CITATION = """@inproceedings{castro-ferreira-etal-2020-2020,
  title={The 2020 Bilingual, Bi-Directional {W}eb{NLG}+ Shared Task: Overview and Evaluation Results},
  author={Castro Ferreira, Thiago and Gardent, Claire and Ilinykh, Nikolai and van der Lee, Chris and
          Mille, Simon and Moussallem, Diego and Shimorina, Anastasia},
  booktitle={Proceedings of the 3rd WebNLG Workshop}, year={2020}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LoraGenerationeval(evaluate.Metric):
    """Corpus-level GenerationEval scores over everything added."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://github.com/WebNLG/GenerationEval"])

    def _compute(self, predictions, references, num_refs: int | None = None) -> dict[str, float]:
        return score_generation(references, predictions, num_refs)
