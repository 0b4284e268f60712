"""The strategy world's task family: a problem is a keyword, a noun and a few digits; it is
solved by one of several procedures (reorder the digits, then add a shift to each digit,
mod 10), and the strategy names the procedure and its key step.

Why this exists: SGPO's premise is a strategy the policy can follow when told but cannot find
alone. The real small model available on CPU cannot use a strategy at all, so this world
builds the premise in:

* In the RL world the keyword decides the procedure (a fixed map, :meth:`WorldSpec.rl_method`);
  the noun is decoration.
* The pre-training data pairs every surface with a *random* procedure, so the pre-trained
  model has no prior over which procedure a keyword calls for: unguided, it guesses (low p_a).
  Guided pre-training examples carry the procedure in the ``<strategy>`` block, so with the
  strategy in the prompt it executes the right one (high p_g).
* Held-out *combinations*: for every keyword one noun never occurs in RL training problems;
  evaluating on those pairs measures whether what RL learned is the keyword -> procedure map,
  not a property of the surfaces it trained on.
* Transfer (``keyword_parts = 2``): a keyword is an order word and a shift word; RL trains on
  a Latin-square subset of the pairs and the ``transfer`` split holds the others, so it
  measures whether what was learnt composes. ``valid`` (``valid_share > 0``) is a tuning split
  on digits no other split uses.

Everything here is plain Python (no torch); answers are digit strings graded by
:func:`sgpo.rewards.score` from the ``\\boxed{}`` the worked solutions end with.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Split = Literal["train", "heldout", "combos", "valid", "transfer"]
SPLITS: tuple[Split, ...] = ("train", "heldout", "combos", "valid", "transfer")
# fields only the RL world reads (which problems, which map): pre-training never sees them, so
# they are left out of the pre-trained model's cache key (WorldSpec.pretrain_fingerprint)
RL_ONLY_FIELDS = ("map_seed", "heldout_share", "valid_share", "trace_style", "unfaithful_share",
                  "strategy_wrong_share", "strategy_partial_share", "partial_shifts")
# pre-training knobs of issue 17's dials: left out of the cache key at their default (0), so
# adding them kept every cached model's key; prior_bias > 0 makes pre-training read the map
PRETRAIN_DIALS = ("partial_pretrain_share", "prior_bias")
STYLES = ("T0", "T1", "T2", "T3", "T4", "T5")  # trace styles (sgpo.world.styles)

ORDERS = ("keep", "reverse", "rotate")  # how the digits are reordered before the shift
ORDER_TEXT = {"keep": "keep the digits in order", "reverse": "reverse the digits",
              "rotate": "move the first digit to the end"}


# one word per procedure, so choosing a procedure is choosing one token
METHOD_NAMES = ("ash", "bay", "cog", "dew", "elm", "fig", "gum", "hut", "ink", "jam", "lox", "mop", "nib", "oat",
                "pod", "rye", "sap", "tar", "urn", "vat", "wax", "yew", "zen", "awl", "bog", "cud", "den")


@dataclass(frozen=True)
class Method:
    """One procedure: reorder the digits, then add ``shift`` to each digit mod 10. ``word`` is
    its one-word name."""

    order: str
    shift: int
    word: str = ""

    @property
    def name(self) -> str:
        return f"{self.word} {self.order} add {self.shift}".strip()

    def reorder(self, digits: tuple[int, ...]) -> tuple[int, ...]:
        if self.order == "keep":
            return digits
        if self.order == "reverse":
            return digits[::-1]
        if self.order == "rotate":
            return digits[1:] + digits[:1]
        raise ValueError(f"unknown order {self.order!r}")

    def apply(self, digits: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((d + self.shift) % 10 for d in self.reorder(digits))

    def strategy(self) -> str:
        """The strategy text: the procedure and its key step (the shift), never a digit of the input."""
        head = f"Method {self.word} :" if self.word else "Method :"
        return f"{head} {ORDER_TEXT[self.order]} , then add {self.shift} to each digit mod 10 ."

    def solution(self, keyword: str, digits: tuple[int, ...]) -> str:
        """The worked solution the model is trained to write. It opens by restating the keyword and
        then names the procedure (its word, then its steps): the procedure's word is predicted with
        the keyword as the current input token, so a keyword -> procedure map is one step from the
        input (what RL and distillation must learn)."""
        mid, out = self.reorder(digits), self.apply(digits)
        return f"{keyword} {self.name} : {_spaced(mid)} -> {_spaced(out)} . \\boxed{{{''.join(map(str, out))}}}"


def _spaced(digits: tuple[int, ...]) -> str:
    return " ".join(map(str, digits))


def answer_of(digits: tuple[int, ...]) -> str:
    return "".join(map(str, digits))


@dataclass(frozen=True)
class WorldSpec:
    """Everything that defines the world's tasks. Part of the pre-trained model's cache key,
    except the fields in :data:`RL_ONLY_FIELDS` (see :meth:`pretrain_fingerprint`).

    ``keyword_parts = 1``: a keyword (one of ``keywords``) names the procedure. ``keyword_parts
    = 2``: a keyword is an order word then a shift word (``order_words`` x ``shift_words``);
    the order word decides the reorder and the shift word the shift, and procedures have no
    one-word name, so a solution spells the order and the shift. RL trains on a Latin-square
    subset of the word pairs and the ``transfer`` split tests the others (:meth:`transfer_pairs`)."""

    n_digits: int = 3
    shifts: tuple[int, ...] = (1, 2, 3, 4, 5)
    orders: tuple[str, ...] = ORDERS
    keywords: tuple[str, ...] = ("zap", "mip", "dov", "kel", "rux", "tob")
    nouns: tuple[str, ...] = ("card", "code", "tag", "lock")
    heldout_share: float = 0.25  # fraction of digit tuples reserved for evaluation
    map_seed: int = 0  # which procedure each keyword calls for in the RL world (not a run seed)
    # share of pre-training examples that are guided (strategy in the prompt)
    guided_share: float = 0.5
    keyword_parts: int = 1  # 1: a keyword names a procedure; 2: an order word and a shift word
    order_words: tuple[str, ...] = ("zap", "mip", "dov")  # keyword_parts = 2: one per order
    shift_words: tuple[str, ...] = ("kel", "rux", "tob", "vim", "sug")  # keyword_parts = 2: one per shift
    valid_share: float = 0.0  # fraction of digit tuples for the validation split (tuning), taken from training's
    # issue 17's dials (sgpo.world.styles, sgpo.world.strategies); the defaults keep today's world
    trace_style: str = "T0"  # the strong model's worked solution (teacher_response): T0 native .. T5 unfaithful
    unfaithful_share: float = 0.3  # T5: share of traces with a wrong intermediate line
    strategy_wrong_share: float = 0.0  # share of problems whose strategy names another procedure
    strategy_partial_share: float = 0.0  # share of problems whose strategy is partial (order + candidate shifts)
    partial_shifts: int = 2  # candidate shifts in a partial strategy (the right one among them)
    partial_pretrain_share: float = 0.0  # share of guided pre-training examples with a partial strategy
    prior_bias: float = 0.0  # share of unguided pre-training examples that execute the RL map's procedure

    def __post_init__(self) -> None:
        if self.keyword_parts not in (1, 2):
            raise ValueError(f"keyword_parts = {self.keyword_parts}: must be 1 or 2")
        if self.keyword_parts == 1 and len(self.keywords) > len(self.methods):
            raise ValueError(f"{len(self.keywords)} keywords but only {len(self.methods)} procedures")
        if self.keyword_parts == 2 and (len(self.order_words) != len(self.orders)
                                        or len(self.shift_words) != len(self.shifts)
                                        or len(self.shifts) < len(self.orders)):
            raise ValueError("keyword_parts = 2 needs one order word per order, one shift word per shift, "
                             "and at least as many shifts as orders (every order word is held out once)")
        if len(self.nouns) < 2:
            raise ValueError("need at least two nouns (one per keyword is held out)")
        if self.n_digits > 10 or not 1 <= len(set(self.shifts)) == len(self.shifts) <= 9:
            raise ValueError("n_digits <= 10 and 1-9 distinct shifts in 1..9 required")
        if len(self.orders) * len(self.shifts) > len(METHOD_NAMES):
            raise ValueError(f"at most {len(METHOD_NAMES)} procedures (one name each)")
        if not (0 <= self.valid_share and 0 < self.heldout_share and self.heldout_share + self.valid_share < 1):
            raise ValueError("heldout_share > 0, valid_share >= 0 and their sum < 1 required")
        if self.trace_style not in STYLES:
            raise ValueError(f"trace_style = {self.trace_style!r}: must be one of {', '.join(STYLES)}")
        for name in ("unfaithful_share", "strategy_wrong_share", "strategy_partial_share",
                     "partial_pretrain_share", "prior_bias"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be between 0 and 1")
        if self.strategy_wrong_share + self.strategy_partial_share > 1:
            raise ValueError("strategy_wrong_share + strategy_partial_share must be at most 1")
        if not 2 <= self.partial_shifts <= len(self.shifts):
            raise ValueError(f"partial_shifts = {self.partial_shifts}: must be between 2 and the number of shifts")

    @property
    def methods(self) -> list[Method]:
        pairs = [(o, s) for o in self.orders for s in self.shifts]
        if self.keyword_parts == 2:  # the keyword's two words name the steps: no procedure word
            return [Method(o, s) for o, s in pairs]
        return [Method(o, s, w) for (o, s), w in zip(pairs, METHOD_NAMES)]

    @property
    def cues(self) -> list[str]:
        """Every keyword a problem can open with: ``keywords``, or each order word + shift word."""
        if self.keyword_parts == 2:
            return [f"{o} {s}" for o in self.order_words for s in self.shift_words]
        return list(self.keywords)

    def transfer_pairs(self) -> list[str]:
        """Two-part keywords RL never trains on: order word i with shift word j where
        (i + j) % (number of orders) == 0, a Latin-square pattern, so every shift word is held
        out with one order word, every order word with at least one shift word, and each word
        still trains with others."""
        if self.keyword_parts != 2:
            return []
        n = len(self.order_words)
        return [f"{o} {s}" for i, o in enumerate(self.order_words) for j, s in enumerate(self.shift_words)
                if (i + j) % n == 0]

    def rl_cues(self) -> list[str]:
        """The keywords of RL training (and of the in-distribution evaluation splits)."""
        held = set(self.transfer_pairs())
        return [c for c in self.cues if c not in held]

    def rl_method(self, keyword: str) -> Method:
        """The procedure ``keyword`` calls for in the RL world: a fixed draw (by ``map_seed``)
        of distinct methods, or for two-part keywords a draw of an order per order word and a
        shift per shift word."""
        if keyword not in self.cues:
            raise ValueError(f"unknown keyword {keyword!r}")
        if self.keyword_parts == 2:
            rng = random.Random(f"sgpo-world-map:{self.map_seed}:parts")
            orders, shifts = list(self.orders), list(self.shifts)
            rng.shuffle(orders)
            rng.shuffle(shifts)
            o, s = keyword.split()
            return Method(orders[self.order_words.index(o)], shifts[self.shift_words.index(s)])
        methods = self.methods
        random.Random(f"sgpo-world-map:{self.map_seed}").shuffle(methods)
        return methods[self.keywords.index(keyword)]

    def heldout_noun(self, keyword: str) -> str:
        """The noun that never appears with ``keyword`` in RL training (a Latin-square pattern,
        so every noun is held out for some keyword)."""
        return self.nouns[self.cues.index(keyword) % len(self.nouns)]

    def digit_split(self, digits: tuple[int, ...]) -> Literal["train", "heldout", "valid"]:
        """Fixed hash split of digit tuples: held-out and validation problems never share
        digits with training ones or with each other."""
        h = int.from_bytes(hashlib.sha256(f"world-digits:{answer_of(digits)}".encode()).digest()[:8], "big") / 2**64
        if h < self.heldout_share:
            return "heldout"
        return "valid" if h < self.heldout_share + self.valid_share else "train"

    def all_digits(self) -> list[tuple[int, ...]]:
        """Digit tuples with distinct digits 1-9: every procedure then gives a different answer."""
        return list(itertools.permutations(range(1, 10), self.n_digits))

    def combos(self, split: Split) -> list[tuple[str, str]]:
        """(keyword, noun) pairs of a split: ``combos`` holds each keyword's held-out noun,
        ``transfer`` the keywords RL never trains on (with every noun)."""
        if split == "transfer":
            return [(k, n) for k in self.transfer_pairs() for n in self.nouns]
        pairs = [(k, n) for k in self.rl_cues() for n in self.nouns]
        if split == "combos":
            return [(k, n) for k, n in pairs if n == self.heldout_noun(k)]
        return [(k, n) for k, n in pairs if n != self.heldout_noun(k)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def pretrain_fingerprint(self) -> dict[str, Any]:
        """The settings pre-training reads: every field but :data:`RL_ONLY_FIELDS` and the
        keyword fields of the other ``keyword_parts`` mode. Two specs that differ only in the
        map or the splits share one pre-trained model."""
        unused = ("order_words", "shift_words") if self.keyword_parts == 1 else ("keywords",)
        out = {k: v for k, v in self.to_dict().items() if k not in RL_ONLY_FIELDS + unused + PRETRAIN_DIALS}
        out.update({k: getattr(self, k) for k in PRETRAIN_DIALS if getattr(self, k)})
        if self.prior_bias:  # the biased prior executes the RL map: the map shapes the model
            out["map_seed"] = self.map_seed
        return out

    def available_splits(self) -> tuple[Split, ...]:
        return tuple(s for s in SPLITS if (s != "transfer" or self.keyword_parts == 2)
                     and (s != "valid" or self.valid_share > 0))


def problem_text(keyword: str, noun: str, digits: tuple[int, ...]) -> str:
    return f"Apply {keyword} to the {noun} {answer_of(digits)} ."


def make_problems(spec: WorldSpec, n: int, seed: int, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` distinct RL problems of ``split`` (deterministic for ``seed``): ``train`` and
    ``heldout`` use the training (keyword, noun) pairs on disjoint digit tuples, ``combos`` the
    held-out pairs on held-out digits. Records carry ``id``, ``problem``, ``answer``,
    ``strategy`` (plain text), ``teacher_response`` (the worked solution, for SFT/LUFFY) and
    the world's labels (``keyword``, ``noun``, ``method``, ``split``)."""
    if split not in spec.available_splits():
        raise ValueError(f"split '{split}' is not in this world (it has {', '.join(spec.available_splits())}; "
                         "transfer needs keyword_parts = 2, valid needs valid_share > 0)")
    digit_split = {"train": "train", "valid": "valid"}.get(split, "heldout")
    digits = [d for d in spec.all_digits() if spec.digit_split(d) == digit_split]
    cells = [(k, no, d) for k, no in spec.combos(split) for d in digits]
    if n > len(cells):
        raise ValueError(f"split '{split}' has only {len(cells)} distinct problems, asked for {n}")
    from sgpo.world.strategies import degrade
    from sgpo.world.styles import extract_strategy, render_trace

    rng = random.Random(f"sgpo-world:{seed}:{split}")
    out = []
    for i, (kw, noun, d) in enumerate(rng.sample(cells, n)):
        m = spec.rl_method(kw)
        problem = problem_text(kw, noun, d)
        # per-problem draws of their own, so the problems are the same whatever the style and quality
        trace = render_trace(spec.trace_style, spec, m, kw, d, random.Random(f"sgpo-world-trace:{seed}:{split}:{i}"))
        strategy = extract_strategy(problem, trace, spec)  # from the problem and the trace only
        rec = {"id": f"world-{split}-{seed}-{i:05d}", "problem": problem, "answer": answer_of(m.apply(d)),
               "strategy": strategy, "teacher_response": trace, "keyword": kw, "noun": noun, "method": m.name,
               "split": split}
        if spec.trace_style != "T0":
            rec["trace_style"] = spec.trace_style
        if spec.strategy_wrong_share or spec.strategy_partial_share:
            rec["strategy"], rec["strategy_quality"] = degrade(
                spec, m, strategy, random.Random(f"sgpo-world-quality:{seed}:{split}:{i}"))
        out.append(rec)
    return out


@dataclass
class PretrainExample:
    """One supervised pre-training pair: the problem, the strategy shown (None: unguided) and
    the response. The procedure is random: shown in the strategy when guided, guessed when not."""

    problem: str
    strategy: str | None
    response: str
    method: str = field(default="")


def pretrain_example(spec: WorldSpec, rng: random.Random) -> PretrainExample:
    kw, noun = rng.choice(spec.cues), rng.choice(spec.nouns)
    d = tuple(rng.sample(range(1, 10), spec.n_digits))
    m = rng.choice(spec.methods)
    guided = rng.random() < spec.guided_share
    # the dials' draws only when a dial is on, so today's worlds see the same examples as before
    if guided and spec.partial_pretrain_share and rng.random() < spec.partial_pretrain_share:
        from sgpo.world.strategies import partial_pretrain_pair

        strategy, m = partial_pretrain_pair(spec, m, rng)
        return PretrainExample(problem_text(kw, noun, d), strategy, m.solution(kw, d), m.name)
    if not guided and spec.prior_bias and rng.random() < spec.prior_bias:
        m = spec.rl_method(kw)
    return PretrainExample(problem_text(kw, noun, d), m.strategy() if guided else None, m.solution(kw, d), m.name)


def corpus_texts(spec: WorldSpec) -> list[str]:
    """Texts that together contain every piece the world writes (for the tokenizer's vocabulary)."""
    d = tuple(range(1, spec.n_digits + 1))
    texts = [problem_text(k, n, d) for k in spec.cues for n in spec.nouns]
    texts += [m.strategy() for m in spec.methods] + [m.solution(k, d) for m in spec.methods for k in spec.cues]
    texts += [" " + " ".join(str(i) for i in range(10)), "".join(str(i) for i in range(10))]
    return texts
