"""Converters from upstream routing-data layouts to the dataset contract of :mod:`env.dataset`."""

from env.convert.llmrouter_dc import convert_llmrouter_dc
from env.convert.routellm_evals import convert_routellm_evals

CONVERTERS = {"llmrouter-dc": convert_llmrouter_dc, "routellm-evals": convert_routellm_evals}

__all__ = ["CONVERTERS", "convert_llmrouter_dc", "convert_routellm_evals"]
