"""sgpo: Strategy-Guided Policy Optimization for LLM math reasoning.

The math lives in :mod:`sgpo.core` (torch and the standard library only); rewards,
strategy extraction, generation, evaluation and the trainer call into it.
"""

__version__ = "0.1.0"
