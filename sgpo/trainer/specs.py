"""Every training method as one entry of :data:`METHODS`.

A :class:`MethodSpec` says what a method samples and which loss term each set of trajectories
feeds; config checks (:mod:`sgpo.trainer.config`), data loading (:func:`sgpo.trainer.trainer.load_training_problems`)
and every step phase (:mod:`sgpo.trainer.methods`) read it instead of comparing method names.
A new baseline or ablation is one entry here (and at most one function where a role is new).

Trajectory budget: every method that samples spends the same ``algorithm.samples_per_problem``
(N) trajectories per problem, split by :meth:`MethodSpec.budget`: the guided methods take
G_g = ``algorithm.group_guided`` of them as strategy-guided rollouts, LUFFY counts its
strong-model trace as one, and the rest are autonomous rollouts. ``sft`` samples nothing and
trains on the one strong-model trace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Trajectories per problem (of a problem with a strategy, for the guided methods)."""

    auto: int  # G_a autonomous rollouts from the unguided prompt
    guided: int  # G_g strategy-guided rollouts from the prompt with the strategy
    reference: int  # strong-model traces (the data's teacher_response)

    @property
    def total(self) -> int:
        return self.auto + self.guided + self.reference


@dataclass(frozen=True)
class MethodSpec:
    """What one method samples and which loss role each set of trajectories feeds."""

    name: str
    summary: str  # one line for --help and docs
    # roles are the terms of sgpo.core.policy_objective: rl (clipped surrogate), offpolicy
    # (LUFFY's shaped term), nll, distill
    auto: str | None = "rl"  # role of the autonomous rollouts; None: none sampled (sft)
    # role of the guided rollouts (None: none sampled): "rl" trains every one in its guided
    # context; "distill" and "nll" train the eligible ones (methods.eligible) under the unguided prompt
    guided: str | None = None
    # role of the strong-model response (None: not needed): "nll" trains on it alone (sft);
    # "offpolicy" makes it one member of the autonomous group (luffy)
    reference: str | None = None
    weighted: bool = False  # the guided term is scaled by the instance weight w_i
    adv_scale_key: str = "adv_scale"  # the algorithm key that sets the advantage scale of the group

    @property
    def samples(self) -> bool:
        """Samples rollouts (every method but sft)."""
        return self.auto is not None

    @property
    def samples_guided(self) -> bool:
        return self.guided is not None

    @property
    def needs_reference(self) -> bool:
        """Needs the strong-model response of every problem (data.teacher_response_field)."""
        return self.reference is not None

    @property
    def reference_in_group(self) -> bool:
        """The strong-model trace is scored and is one member of the advantage group."""
        return self.reference == "offpolicy"

    @property
    def roles(self) -> frozenset[str]:
        """Every loss role this method's sequences can have."""
        return frozenset(r for r in (self.auto, self.guided, self.reference) if r is not None)

    def budget(self, samples_per_problem: int, group_guided: int) -> Budget:
        """The split of N = ``samples_per_problem`` trajectories of one problem."""
        if not self.samples:
            return Budget(0, 0, 1)
        guided = group_guided if self.samples_guided else 0
        reference = 1 if self.reference_in_group else 0
        return Budget(samples_per_problem - guided - reference, guided, reference)

    def check_budget(self, samples_per_problem: int, group_guided: int) -> None:
        """Errors naming the keys when the split leaves a group too small."""
        if self.samples_guided and group_guided < 1:
            raise ValueError(f"algorithm.group_guided = {group_guided}: method '{self.name}' needs >= 1 guided rollout")
        b = self.budget(samples_per_problem, group_guided)
        if self.samples and b.auto + b.reference < 2:
            parts = " - algorithm.group_guided" * self.samples_guided + " - 1 strong-model trace" * b.reference
            raise ValueError(f"algorithm.samples_per_problem = {samples_per_problem} leaves a group of "
                             f"{b.auto + b.reference} for method '{self.name}' (G_a = N{parts} = {b.auto}): "
                             "advantages need a group of at least 2")


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("sgpo", "SGPO: RL on autonomous rollouts + w_i-weighted distillation of eligible guided ones "
                       "from the strategy-conditioned teacher", guided="distill", weighted=True),
    MethodSpec("grpo", "GRPO/DAPO: the RL term alone on autonomous rollouts"),
    MethodSpec("sft", "SFT: NLL of the strong-model response; samples nothing", auto=None, reference="nll"),
    MethodSpec("luffy", "LUFFY: on-policy rollouts + the strong-model trace as one more group member, shaped "
                        "off-policy term", reference="offpolicy", adv_scale_key="luffy_adv_scale"),
    MethodSpec("imitation", "ablation: lambda w_i NLL of the eligible guided trajectories under the unguided "
                            "prompt instead of the distillation term", guided="nll", weighted=True),
    MethodSpec("guided_rl", "strategy-in-prompt RL: the RL term on the guided rollouts in their guided context "
                            "as well", guided="rl"),
)}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"algorithm.method = '{name}' is not one of {', '.join(METHODS)}")
    return METHODS[name]
