"""Strategies: the structured, reusable descriptions of how to solve a problem that SGPO
distills. Schema and rendering here; extraction, leak filters and scoring beside it."""

from sgpo.schema import Strategy, StrategyError, render_strategy, validate_strategy

__all__ = ["Strategy", "StrategyError", "render_strategy", "validate_strategy"]
