"""``evaluate`` metric modules over the suite's scorers, one folder each, loaded by path.

``evaluate.load("lora_repro/evaluate_metrics/<name>")`` copies ``<name>/<name>.py`` into its modules
cache and imports it there, so the modules import the suite as ``lora_repro`` (importable from the
repository root or after ``pip install -e .``) and share only what is here.
"""

import datasets
import evaluate


def metric_info(
    description: str, citation: str, inputs_description: str, urls: list[str], value: str = "string"
) -> evaluate.MetricInfo:
    """evaluate's MetricInfo for one prediction per example and, for ``value="string"``, a list of
    reference strings per example (the NLG scorers); otherwise one reference of ``value`` type."""
    references = datasets.Sequence(datasets.Value(value)) if value == "string" else datasets.Value(value)
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value(value), "references": references}),
        reference_urls=urls,
    )
