"""``text_similarity``: a similarity metric in [0, 1] between two rendered templates, computed
by the metric libraries themselves (rapidfuzz, sacrebleu, rouge-score), never by our own code.
``passed`` = score >= pass_threshold."""

from __future__ import annotations

import functools
from typing import Any, Literal

import sacrebleu
from pydantic import Field, field_validator
from rapidfuzz import fuzz

from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Sample,
    check_fields,
    missing_result,
)
from services.evaluation.templates import MissingField, Template, render

METRICS = ("fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_l", "exact")
# OpenAI lists these too; they need models or resources we do not ship.
UNSUPPORTED = ("gleu", "meteor", "cosine")
_ROUGE = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}


class TextSimilaritySpec(GraderSpec):
    type: Literal["text_similarity"]
    input: Template
    reference: Template
    evaluation_metric: str
    pass_threshold: float = Field(ge=0.0, le=1.0)

    @field_validator("evaluation_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        known = ", ".join(METRICS)
        if value in UNSUPPORTED:
            raise ValueError(f"{value!r} is not computed by tuneplex; use one of {known}")
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; use one of {known}")
        return value


def similarity(metric: str, value: str, reference: str) -> float:
    """The metric of ``value`` (the model's side) against ``reference``, in [0, 1]."""
    if metric == "exact":
        return float(value == reference)
    if metric == "fuzzy_match":
        return float(fuzz.ratio(value, reference)) / 100.0
    if metric == "bleu":
        return float(sacrebleu.sentence_bleu(value, [reference]).score) / 100.0
    name = _ROUGE[metric]
    return float(_rouge_scorer(name).score(reference, value)[name].fmeasure)


@functools.cache
def _rouge_scorer(name: str) -> Any:
    # Imported on first use: rouge-score pulls in nltk, a second and a half of start-up that
    # every eval that does not use ROUGE would pay.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([name])


class TextSimilarityGrader:
    spec_model = TextSimilaritySpec

    def __init__(self, spec: TextSimilaritySpec, resources: GraderResources) -> None:
        self.spec = spec
        self.name = spec.name

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            value = render(self.spec.input, item, sample.output_text)
            reference = render(self.spec.reference, item, sample.output_text)
        except MissingField as exc:
            return missing_result(exc)
        score = min(1.0, max(0.0, similarity(self.spec.evaluation_metric, value, reference)))
        return GradeResult(score, passed=score >= self.spec.pass_threshold)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, [self.spec.input, self.spec.reference], items)
