"""Strategies that are not right: partial ones (the order and a few candidate shifts, the right
one among them) and wrong ones (another procedure's), for the KL-versus-imitation and the
when-to-distil dials (issue 17). Which problems get which is drawn per problem
(``WorldSpec.strategy_wrong_share``, ``strategy_partial_share``, ``partial_shifts``);
pre-training can show partial strategies too (``WorldSpec.partial_pretrain_share``), so the
guided model follows them by executing one of the candidates. Plain Python, no torch.
"""

from __future__ import annotations

import random

from sgpo.world.tasks import ORDER_TEXT, Method, WorldSpec

QUALITIES = ("right", "wrong", "partial")


def partial_strategy(order: str, shifts: list[int]) -> str:
    """``Method : reverse the digits , then add 2 or 3 to each digit mod 10 .``: the order and
    the candidate shifts (sorted), no procedure word (it would name the procedure)."""
    s = sorted(shifts)
    cands = f"{s[0]}" if len(s) == 1 else " , ".join(map(str, s[:-1])) + f" or {s[-1]}"
    return f"Method : {ORDER_TEXT[order]} , then add {cands} to each digit mod 10 ."


def candidate_shifts(spec: WorldSpec, m: Method, k: int, rng: random.Random) -> list[int]:
    """``m``'s shift and ``k - 1`` others of the world's, drawn by ``rng``."""
    if not 2 <= k <= len(spec.shifts):
        raise ValueError(f"partial_shifts = {k}: must be between 2 and the {len(spec.shifts)} shifts")
    return sorted([m.shift] + rng.sample([s for s in spec.shifts if s != m.shift], k - 1))


def degrade(spec: WorldSpec, m: Method, strategy: str | None, rng: random.Random) -> tuple[str | None, str]:
    """(strategy, quality) of one problem whose right procedure is ``m`` and whose extracted
    strategy is ``strategy``: wrong (another procedure's strategy) with probability
    ``strategy_wrong_share``, partial with probability ``strategy_partial_share``, else as
    extracted. One uniform draw decides, so the shares do not interact."""
    u = rng.random()
    if u < spec.strategy_wrong_share:
        other = rng.choice([o for o in spec.methods if (o.order, o.shift) != (m.order, m.shift)])
        return other.strategy(), "wrong"
    if u < spec.strategy_wrong_share + spec.strategy_partial_share:
        return partial_strategy(m.order, candidate_shifts(spec, m, spec.partial_shifts, rng)), "partial"
    return strategy, "right"


def partial_pretrain_pair(spec: WorldSpec, m: Method, rng: random.Random) -> tuple[str, Method]:
    """A pre-training example's partial strategy (2 or 3 candidates, one of them ``m``'s shift)
    and the procedure the response executes: one of the candidates at random, so the guided
    model learns to follow the order and pick among the shifts."""
    shifts = candidate_shifts(spec, m, rng.choice((2, 3)), rng)
    chosen = rng.choice(shifts)
    executed = next(o for o in spec.methods if (o.order, o.shift) == (m.order, chosen))
    return partial_strategy(m.order, shifts), executed
