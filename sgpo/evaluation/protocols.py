"""Evaluation protocols: the sampling and the samples per problem that make a run's numbers
comparable with one line of published results, set by one switch (``sgpo eval --protocol``).

A protocol fixes temperature, top-p, the completion length and k per benchmark, and, where the
published tables have a fixed set of columns, their order and titles (``sgpo report`` writes that
table). Every engine samples the same way under every protocol: only temperature and top-p shape
the distribution (no top-k, min-p or repetition penalty, vLLM's ``SamplingParams`` defaults;
:class:`sgpo.generation.SamplingConfig`). docs/algorithm.md says which numbers each is comparable with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Protocol:
    name: str
    temperature: float
    top_p: float
    max_new_tokens: int
    num_samples: Mapping[str, int]  # k per benchmark name (a built-in, or a file's stem)
    other_k: int  # k of a benchmark the protocol does not name
    # (benchmark name, column title) of the published table, in its order; empty: no fixed table
    columns: tuple[tuple[str, str], ...] = ()
    summary: str = field(default="", compare=False)  # one line for --help

    def k(self, benchmark: str) -> int:
        return self.num_samples.get(benchmark, self.other_k)


DEFAULT = Protocol(
    "default", temperature=0.6, top_p=0.95, max_new_tokens=8192,
    # avg@32 on the small competition sets (30 to 83 problems: one sample each would be far too noisy)
    num_samples=MappingProxyType({"aime24": 32, "aime25": 32, "amc23": 32, "amc83": 32, "math500": 4,
                                  "olympiadbench": 4, "minerva": 4, "gsm8k": 4}),
    other_k=4,
    summary="temperature 0.6, top-p 0.95, 8192 new tokens, avg@32 on AIME/AMC, avg@4 elsewhere",
)

# LUFFY's eval_scripts/generate_vllm.py, which AMPO reuses: vLLM at temperature 0.6, top_p 1.0,
# 8192 new tokens; avg@32 on AIME24, AIME25 and the 83-problem AMC, one sample on the rest; the
# average of the six columns.
LUFFY = Protocol(
    "luffy", temperature=0.6, top_p=1.0, max_new_tokens=8192,
    num_samples=MappingProxyType({"aime24": 32, "aime25": 32, "amc83": 32, "math500": 1, "minerva": 1,
                                  "olympiadbench": 1}),
    other_k=1,
    columns=(("aime24", "AIME24"), ("aime25", "AIME25"), ("amc83", "AMC"), ("math500", "MATH-500"),
             ("minerva", "Minerva"), ("olympiadbench", "OlympiadBench")),
    summary="LUFFY's and AMPO's harness: temperature 0.6, top-p 1.0, 8192 new tokens, avg@32 on aime24/aime25/amc83, "
            "one sample on math500/minerva/olympiadbench, table in LUFFY's column order with the average",
)

PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in (DEFAULT, LUFFY)})


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol '{name}' (expected one of {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]
