"""Converters from upstream routing-data layouts to the dataset contract of :mod:`env.dataset`."""

from env.convert.llmrouter_dc import convert_llmrouter_dc

CONVERTERS = {"llmrouter-dc": convert_llmrouter_dc}

__all__ = ["CONVERTERS", "convert_llmrouter_dc"]
