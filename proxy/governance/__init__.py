"""Data governance as code: destination filters (conditions, sampling, field controls),
transforms and tracking plans. Everything is compiled once at config load; the hot-path entry
points are ``DestinationPipeline.apply`` (delivery) and ``SourcePlan.decide`` (ingest)."""

from proxy.governance.expr import Expression, ExpressionError, compile_expression
from proxy.governance.filters import Applied, DestinationPipeline
from proxy.governance.plans import PlanDecision, SourcePlan, Violation

__all__ = ["Applied", "DestinationPipeline", "Expression", "ExpressionError", "PlanDecision", "SourcePlan",
           "Violation", "compile_expression"]
