"""The training driver: set up, then per step sample and score rollouts, compute teacher
targets, update the policy, log and checkpoint. The math lives in sgpo.core; which
trajectories feed which term lives in sgpo.trainer.methods."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sgpo.data import Problem, ProblemSet, check_prompt_lengths, load_problems
import sgpo.world  # noqa: F401  (registers the strategy-world model alias with sgpo.models)
from sgpo.models import check_model_source
from sgpo.prompts import check_prompt_format
from sgpo.rewards.functions import RewardFunctions, check_failure_share
from sgpo.trainer.checkpoint import RunFolder
from sgpo.trainer.config import TrainConfig
from sgpo.trainer.loss import PolicyLoss
from sgpo.trainer import methods
from sgpo.trainer.methods import StepBatch, StepContext
from sgpo.trainer.specs import method_spec
from sgpo.trainer.metrics import StepMetrics
from sgpo.trainer.probe import RecordingGenerator, guided_probe_rows, kl_to_reference
from sgpo.trainer.signals import StopSignals
from sgpo.trainer.update import is_deepspeed, optimizer_update



@dataclass
class TrainResult:
    output_dir: Path
    model: Any  # the trained causal LM (unwrapped)
    tokenizer: Any
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_updates: int = 0  # optimiser updates skipped (non-finite loss or gradient norm)


def load_training_problems(cfg: TrainConfig) -> ProblemSet:
    from sgpo.strategies.store import load_strategies, strategy_file_ids

    d, spec = cfg.data, method_spec(cfg.algorithm.method)
    strategies, ids = (load_strategies(d.strategies_path), strategy_file_ids(d.strategies_path)) \
        if d.strategies_path else (None, None)
    return load_problems(d.path, split=d.split, max_problems=d.max_problems, strategies=strategies,
                         strategies_path=d.strategies_path, strategy_file_ids=ids,
                         problem_field=d.problem_field, answer_field=d.answer_field, strategy_field=d.strategy_field,
                         teacher_response_field=d.teacher_response_field, id_field=d.id_field,
                         need_teacher_response=spec.needs_reference,
                         min_strategy_coverage=d.min_strategy_coverage if spec.samples_guided else 0)


def step_problems(problems: list[Problem], step: int, per_step: int, seed: int, rank: int, world: int) -> list[Problem]:
    """This process's share of the step's prompts: epochs walk a seeded permutation, so a
    resumed run sees exactly the problems an uninterrupted one would."""
    n = len(problems)
    out = []
    for j in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(j, n)
        order = list(range(n))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        out.append(problems[order[pos]])
    return out[rank::world]


class Trainer:
    def __init__(self, cfg: TrainConfig, problems: ProblemSet | None = None, model: Any = None, tokenizer: Any = None,
                 generator: Any = None):
        """``problems``, ``model``, ``tokenizer`` replace what ``cfg`` names; ``generator`` (a
        :class:`sgpo.generation.Generator`) replaces ``system.generation_backend`` (tests script one)."""
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        self.out = Path(cfg.run.output_dir)
        # the scheduler is stepped once per training step by this loop: accelerate must not
        # multiply that by the process count (its default for a prepared scheduler)
        self.accelerator = Accelerator(log_with=cfg.run.report_to or None, project_dir=str(self.out),
                                       step_scheduler_with_optimizer=False)
        self.run_folder = RunFolder(self.out, cfg.run.save_total_limit)
        self.run_folder.prepare(cfg.to_dict(), resume=cfg.run.resume, overwrite=cfg.run.overwrite,
                                is_main_process=self.accelerator.is_main_process)  # locks the folder
        try:
            self._set_up(cfg, problems, model, tokenizer, generator)
        except BaseException:
            self.run_folder.release()
            raise

    def _set_up(self, cfg: TrainConfig, problems: ProblemSet | None, model: Any, tokenizer: Any,
                generator: Any) -> None:
        from accelerate.utils import set_seed

        self.accelerator.wait_for_everyone()
        if model is None:
            check_model_source(cfg.model.name_or_path, "model.name_or_path")
        set_seed(cfg.training.seed)
        self.problems = problems if problems is not None else load_training_problems(cfg)
        self._check_data()  # before the model loads
        self.reward_functions = RewardFunctions(cfg.reward)  # imported before the model loads: errors come early
        self.tokenizer, lm = self._load_model(model, tokenizer)
        lora = cfg.model.lora
        # teacher: initial (and the probe's KL reference) is a frozen second copy, except under LoRA: the
        # policy with its adapter off. An in-memory model (single process, not partitioned) is copied;
        # otherwise the path is reloaded
        second_copy = (cfg.algorithm.teacher == "initial" or cfg.eval.probe_kl_initial) and not lora.enabled
        initial = copy.deepcopy(lm) if model is not None and second_copy else None
        if lora.enabled:
            from sgpo.lora import add_adapter

            lm = add_adapter(lm, lora, base_name=cfg.model.name_or_path)
        self.pad_id = self.tokenizer.pad_token_id
        t = cfg.training
        trainable = [p for p in lm.parameters() if p.requires_grad]  # the adapter alone under LoRA
        optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
        from transformers import get_scheduler

        scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=t.warmup_steps)
        if is_deepspeed(self.accelerator):  # no dataloader to read sizes from; the engine clips at its step
            mbs = cfg.system.micro_batch_size  # (DeepSpeed only checks these; sgpo sizes its own updates)
            self.accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=mbs, train_batch_size=mbs * self.accelerator.num_processes,
                gradient_accumulation_steps=1, gradient_clipping=t.max_grad_norm)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(
            PolicyLoss(lm, cfg.loss, temperature=cfg.algorithm.temperature, chunk_size=cfg.system.chunk_size,
                       fixed_length=cfg.loss.aggregation_length or cfg.algorithm.max_new_tokens),
            optimizer, scheduler)
        if lora.enabled:
            from sgpo.lora import register_adapter_checkpoints

            register_adapter_checkpoints(self.accelerator, self.module)  # single process, DDP: the adapter alone
        self.initial = self._frozen_initial_policy(initial) if second_copy else None
        self.teacher = self.initial if cfg.algorithm.teacher == "initial" else None
        self.share_prompts = self._share_prompts(lm)
        self.generator, self.fixed_generator = generator, generator is not None
        self.probe_rows = _probe_rows(cfg)
        self.guided_probe_rows = guided_probe_rows(self.problems.problems, cfg.eval.probe_guided_problems)
        self.step, self.competence, self.skipped, self.nonfinite_run = 0, {}, 0, 0
        self.history: list[dict[str, float]] = []
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)

    def _share_prompts(self, lm: Any) -> bool:
        """``system.share_prompt_forward`` where the shared-prompt forward is proven equal."""
        from sgpo.trainer.forward import shared_prompt_unsupported

        if not self.cfg.system.share_prompt_forward:
            return False
        reason = shared_prompt_unsupported(lm, str(self.accelerator.distributed_type.value))
        if reason is not None:
            self.accelerator.print(f"system.share_prompt_forward: every row runs its whole prompt ({reason})")
        return reason is None

    def _check_data(self) -> None:
        """Strategy-guided methods drop strategies that give the answer away (and stop above
        data.max_leak_share); a resumed run must train on the data it started with (run-data.json)."""
        from sgpo.strategies.leaks import drop_leaking_strategies
        from sgpo.strategies.store import extraction_golds

        guided, main = method_spec(self.cfg.algorithm.method).samples_guided, self.accelerator.is_main_process
        if guided:
            path = self.cfg.data.strategies_path
            drop_leaking_strategies(self.problems, self.cfg.data.max_leak_share, warn=main,
                                    checked=extraction_golds(path) if path else None)
        record = {**self.problems.fingerprints(with_strategies=guided), "leaked_strategies": len(self.problems.leaked),
                  "leaked_ids": self.problems.leaked[:100]}
        self.run_folder.check_data(record, allow_change=self.cfg.run.allow_data_change, is_main_process=main)

    def _load_model(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        from sgpo.compat import disable_dropout_in_model
        from sgpo.models import context_length, load_model, load_tokenizer

        m = self.cfg.model
        tokenizer = tokenizer or load_tokenizer(m.name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        check_prompt_format(tokenizer, self.cfg.data.style(), m.name_or_path, "data.prompt_format")
        if model is None:  # before the weights load
            check_prompt_lengths(((p.id, p.problem, p.strategy) for p in self.problems.problems), self.cfg.data.style(),
                                 tokenizer, context_length(m.name_or_path), self.problems.source)
        lm = model if model is not None else load_model(m.name_or_path, dtype=m.dtype)
        disable_dropout_in_model(lm)
        if m.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            lm.config.use_cache = False
        return tokenizer, lm

    def _frozen_initial_policy(self, teacher: Any = None) -> Any:
        """``teacher: initial``: a second copy loaded from the model path (never a deepcopy of
        the prepared policy, which ZeRO-3 has partitioned), prepared for inference the way TRL
        prepares reference models: sharded like the policy under ZeRO-3/FSDP, on each device otherwise."""
        from sgpo.compat import disable_dropout_in_model, prepare_reference_model
        from sgpo.models import load_model

        if teacher is None:
            teacher = load_model(self.cfg.model.name_or_path, dtype=self.cfg.model.dtype)
        disable_dropout_in_model(teacher)
        teacher.requires_grad_(False)
        return prepare_reference_model(teacher, self.accelerator)

    # -- checkpoints (the folder's rules live in sgpo.trainer.checkpoint) -------------------------
    def save_checkpoint(self) -> None:
        state = {"step": self.step, "competence": self.competence, "skipped": self.skipped,
                 "nonfinite_run": self.nonfinite_run}
        self.run_folder.save(self.accelerator, self.step, state, self.cfg.to_dict())

    def maybe_resume(self) -> None:
        found = self.run_folder.resume(self.accelerator) if self.cfg.run.resume else None
        if found is None:
            return
        state, self.history, path = found
        self.step, self.competence = state["step"], state["competence"]
        self.skipped, self.nonfinite_run = state["skipped"], state["nonfinite_run"]
        self.accelerator.print(f"resumed from {path} at step {self.step}")

    # -- the loop --------------------------------------------------------------------------------
    def _generator(self, lm: Any) -> Any:
        from sgpo.generation import make_generator

        t = self.cfg.system
        if self.fixed_generator:
            return self.generator
        if t.generation_backend == "hf":
            return make_generator("hf", lm, self.tokenizer, batch_size=t.generation_batch_size,
                                  sampler=t.generation_sampler)
        if self.generator is None:
            acc = self.accelerator
            self.generator = make_generator(t.generation_backend, self.cfg.model.name_or_path, self.tokenizer,
                                            gpu_memory_utilization=t.vllm_gpu_memory_utilization,
                                            host=t.vllm_host, port=t.vllm_port, process_index=acc.process_index,
                                            is_main_process=acc.is_main_process, device=acc.device,
                                            sleep_mode=t.vllm_sleep_mode)
        self.generator.sync_weights(lm)
        self.accelerator.wait_for_everyone()  # no process samples from stale server weights
        return self.generator

    def _context(self, lm: Any, initial: Any) -> StepContext:
        acc, system = self.accelerator, self.cfg.system
        gather = methods.local_gather
        if acc.num_processes > 1:
            from accelerate.utils import gather_object as gather
        teacher = initial if initial is not None else lm  # algorithm.teacher: initial | rollout
        # LoRA with teacher: initial: the policy itself, its adapter switched off while it scores
        adapter_off = self.cfg.model.lora.enabled and self.cfg.algorithm.teacher == "initial"
        return StepContext(self.tokenizer, self._generator(lm), lm, teacher, self.cfg.algorithm, self.cfg.loss,
                           self.pad_id, system.micro_batch_size, system.chunk_size, self.cfg.data.style(), gather,
                           self.reward_functions, teacher_adapter_off=adapter_off,
                           sampler_targets=system.sampler_teacher_targets)

    def rollout(self, timer: PhaseTimer) -> StepBatch:
        """This process's share of the step's problems through the phases of sgpo.trainer.methods."""
        from sgpo.compat import unwrap_model_for_generation

        acc, t = self.accelerator, self.cfg.training
        problems = step_problems(self.problems.problems, self.step, t.prompts_per_step, t.seed,
                                 acc.process_index, acc.num_processes)
        seed = t.seed * 1_000_003 + self.step * 7919 + acc.process_index
        ckpt_kwargs = {"use_reentrant": False}
        teacher_ctx = unwrap_model_for_generation(self.teacher, acc) if self.teacher is not None else nullcontext()
        self.module.eval()
        with unwrap_model_for_generation(self.module, acc, gradient_checkpointing_kwargs=ckpt_kwargs) as unwrapped, \
                teacher_ctx as teacher:
            ctx = self._context(unwrapped.lm, teacher)
            with timer("sample"):
                rollouts = methods.sample(ctx, problems, seed)  # autonomous [B][G_a], guided [B][G_g]
            with timer("score"):
                rewards = methods.score(ctx, rollouts)  # r [B, G_a], [B, G_g]
            with timer("advantages"):
                adv = methods.advantages(ctx, rewards)  # A [B, G_a]
            with timer("weights"):
                w = methods.weights(ctx, rollouts, rewards, self.competence)  # w [B] from p_a, p_g
            seqs = methods.sequences(ctx, rollouts, rewards, adv, w)  # which trajectory feeds which term
            with timer("teacher_targets"):
                methods.attach_teacher_targets(ctx, seqs)  # top-k of p(.|x (+) s, y<t)
            with timer("old_logprobs"):  # q_old(y_t): several updates per rollout, or the rollout correction
                correction = methods.attach_old_logprobs(ctx, seqs)  # rho_t of engine-sampled RL tokens
        return StepBatch(seqs, {**methods.step_stats(ctx.spec, rollouts, rewards, w), **correction})

    def update(self, seqs: list) -> tuple[list[dict], list[Any]]:
        """PPO epochs x mini-batches optimiser updates on this step's sequences, then one
        scheduler step: the learning rate is a function of the training step. Each update
        minimises :class:`sgpo.trainer.loss.PolicyLoss`, which runs the model and the objective of
        the core, :func:`sgpo.core.policy_objective`: the RL term plus lambda w_i m_t l_t on
        distilled tokens (and the NLL / off-policy terms of the baselines), every term aggregated
        against the update's N (``loss.normalizer``, ``loss.aggregation``)."""
        a, t = self.cfg.algorithm, self.cfg.training
        metrics, updates = [], []
        self.module.train()  # LoRA dropout acts here only (every other dropout is off); rollouts run in eval mode
        for _ in range(a.ppo_epochs):
            for k in range(a.mini_batches):
                result, m = optimizer_update(self.accelerator, self.module, self.optimizer, seqs[k::a.mini_batches],
                                             micro_batch_size=self.cfg.system.micro_batch_size, pad_id=self.pad_id,
                                             normalizer=self.cfg.loss.normalizer, max_grad_norm=t.max_grad_norm,
                                             aggregation=self.cfg.loss.aggregation,
                                             share_prompts=self.share_prompts)
                metrics += m
                updates.append(result)
        self.scheduler.step()
        return metrics, updates

    def train(self) -> TrainResult:
        """Train to ``training.max_steps``, holding the run folder's lock until the end."""
        try:
            return self._train()
        finally:
            self.run_folder.release()

    def _train(self) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        self.maybe_resume()
        if acc.is_main_process:
            self.run_folder.write_config(cfg.to_dict())
            acc.print(f"{len(self.problems)} problems from {self.problems.source}; "
                      f"{self.problems.without_strategy} without a strategy train with the RL term only")
        acc.init_trackers(self.out.name, config=_flat(cfg.to_dict()))
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.training.max_steps, initial=self.step, desc=f"train {cfg.algorithm.method}",
                   disable=not (cfg.run.progress and acc.is_local_main_process))
        with StopSignals() as stop:  # SIGTERM / SIGINT: finish the step, save it, stop
            while self.step < cfg.training.max_steps:
                self.train_step(bar)
                if stop.requested(acc):
                    bar.close()
                    self._stop_on_signal(stop.signum)
        bar.close()
        if not self._checkpointed_this_step():
            self.save_checkpoint()
        return self._finish()

    def _checkpointed_this_step(self) -> bool:
        return bool(self.cfg.run.save_steps) and self.step % max(self.cfg.run.save_steps, 1) == 0

    def _stop_on_signal(self, signum: int) -> None:
        """Save a checkpoint at the current step, flush the trackers and raise Interrupted."""
        import signal

        from sgpo.errors import Interrupted

        if not self._checkpointed_this_step():
            self.save_checkpoint()
        self.accelerator.end_training()
        raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped after step {self.step}; checkpoint saved "
                          f"to {self.out / f'checkpoint-{self.step}'}; rerun the same command to resume from it")

    def train_step(self, bar: Any) -> None:
        acc, cfg = self.accelerator, self.cfg
        timer = PhaseTimer()
        with timer("rollout"):
            batch = self.rollout(timer)  # sample, score, advantages, weights, teacher targets
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's updates used
        with timer("update"):
            metrics, updates = self.update(batch.sequences)
        self.step += 1
        skipped = sum(not u.stepped for u in updates)
        self.skipped += skipped
        self.nonfinite_run = self.nonfinite_run + 1 if skipped else 0
        loss, norm = sum(u.loss for u in updates) / len(updates), max(u.grad_norm for u in updates)
        record = StepMetrics.build(acc, self.step, batch, metrics, updates=len(updates), grad_norm=norm, lr=lr,
                                   skipped=self.skipped, time_rollout=timer.seconds.pop("time/rollout"),
                                   time_update=timer.seconds.pop("time/update"), **timer.seconds)
        record.update(self.probe())
        self.history.append(record)
        if acc.is_main_process and self.step % cfg.run.logging_steps == 0:
            self.run_folder.log_metrics(record)
        acc.log({k: v for k, v in record.items() if k != "step"}, step=self.step)
        bar.update(1)
        shares = {k[len("reward/failure_share/"):]: v for k, v in record.items() if k.startswith("reward/failure_share/")}
        check_failure_share(shares, cfg.reward.max_failure_share, f"step {self.step}")  # the same record on every process
        bar.set_postfix(loss=f"{loss:.4f}", p_a=f"{record.get('p_auto', float('nan')):.2f}")
        if self.nonfinite_run >= cfg.training.max_nonfinite_in_a_row:
            raise RuntimeError(f"{self.nonfinite_run} steps in a row had a non-finite loss or gradient norm "
                               f"(last loss {loss}, grad norm {norm}); stopping. Lower the learning rate or check the data.")
        if cfg.run.save_steps and self.step % cfg.run.save_steps == 0:
            self.save_checkpoint()

    def probe(self) -> dict[str, float]:
        """Unguided accuracy on ``eval.probe_file`` every ``eval.probe_every`` steps and at the
        last step (``probe/avg@k``, ``probe/pass@k``, ``probe/n``), scored by the evaluation's
        own path (:func:`sgpo.evaluation.runner.evaluate_records`); guided accuracy on the
        ``eval.probe_guided_problems`` training problems (``probe/guided_*``) and the KL of the
        policy to the initial model on the unguided probe's completions (``probe/kl_initial``,
        :mod:`sgpo.trainer.probe`) when asked. Each process samples its share of the problems;
        per-problem scores go to ``probe.jsonl`` in the run folder (guided ones marked)."""
        e, acc = self.cfg.eval, self.accelerator
        if not e.probe_every or (self.step % e.probe_every and self.step != self.cfg.training.max_steps):
            return {}
        from sgpo.compat import unwrap_model_for_generation
        from sgpo.generation import SamplingConfig, make_generator

        sampling = SamplingConfig(temperature=e.probe_temperature, top_p=e.probe_top_p,
                                  max_new_tokens=self.cfg.algorithm.max_new_tokens, seed=self.cfg.training.seed)
        out: dict[str, float] = {}
        with unwrap_model_for_generation(self.module, acc) as unwrapped:
            lm = unwrapped.lm
            recorder = None  # keeps the unguided probe's samples for the KL; samples as evaluate_records' own would
            if e.probe_kl_initial:
                batch = self.cfg.system.generation_batch_size
                recorder = RecordingGenerator(make_generator("hf", lm, self.tokenizer, batch_size=batch), self.tokenizer)
            if self.probe_rows:
                out.update(self._probe_split(lm, self.probe_rows, "probe", sampling, recorder))
            if self.guided_probe_rows:
                out.update(self._probe_split(lm, self.guided_probe_rows, "probe/guided", sampling, None))
            if recorder is not None:
                out["probe/kl_initial"] = self._kl_initial(lm, recorder.pairs)
        return out

    def _probe_split(self, lm: Any, rows: list[dict[str, Any]], prefix: str, sampling: Any,
                     generator: Any) -> dict[str, float]:
        """One probed set: ``probe`` (unguided) logs avg@k, pass@k, n; ``probe/guided`` logs
        ``probe/guided_accuracy`` (its avg@k), ``_pass@k``, ``_n``."""
        from sgpo.evaluation.metrics import mean_pass_at_k, per_problem_accuracy
        from sgpo.evaluation.runner import evaluate_records
        from sgpo.io import append_jsonl

        acc, e, guided = self.accelerator, self.cfg.eval, prefix != "probe"
        mine = rows[acc.process_index::acc.num_processes]
        _, records = evaluate_records(lm, self.tokenizer, mine, prefix.replace("/", "-"), sampling, e.probe_samples,
                                      generator=generator, batch_size=self.cfg.system.generation_batch_size,
                                      show_progress=False, style=self.cfg.data.style(),
                                      model_id=f"probe-step-{self.step}")
        lines = [{"step": self.step, "id": r["id"], "scores": r["scores"], **({"guided": True} if guided else {})}
                 for r in records]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            lines = gather_object(lines)
        if acc.is_main_process:
            append_jsonl(self.out / "probe.jsonl", lines)
        scores = [r["scores"] for r in lines]
        avg, pass_k = float(sum(per_problem_accuracy(scores)) / len(scores)), mean_pass_at_k(scores, e.probe_samples)
        if guided:
            return {"probe/guided_accuracy": avg, "probe/guided_pass@k": pass_k, "probe/guided_n": float(len(scores))}
        return {"probe/avg@k": avg, "probe/pass@k": pass_k, "probe/n": float(len(scores))}

    def _kl_initial(self, lm: Any, pairs: list[tuple[list[int], list[int]]]) -> float:
        """Mean per-token KL(policy || initial model) over the probe completions of every process."""
        from sgpo.compat import unwrap_model_for_generation

        acc, s = self.accelerator, self.cfg.system
        ctx = unwrap_model_for_generation(self.initial, acc) if self.initial is not None else nullcontext(lm)
        with ctx as initial:  # without a copy (LoRA): the policy itself, its adapter off
            total, count = kl_to_reference(lm, initial, pairs, pad_id=self.pad_id, batch_size=s.micro_batch_size,
                                           chunk_size=s.chunk_size, temperature=self.cfg.algorithm.temperature,
                                           reference_adapter_off=self.initial is None)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(total, count)])
            total, count = sum(t for t, _ in parts), sum(c for _, c in parts)
        return total / count if count else float("nan")

    def _finish(self) -> TrainResult:
        acc = self.accelerator
        lm = acc.unwrap_model(self.module).lm
        if self.cfg.run.save_final_model:
            state = acc.get_state_dict(self.module)
            if acc.is_main_process:
                final = self.out / "final"
                lm_state = {k[len("lm."):]: v for k, v in state.items()}
                if self.cfg.model.lora.enabled:  # the adapter; on request also final/merged
                    from sgpo.lora import MERGED_DIR, save_final

                    save_final(lm, lm_state, final, self.cfg.model.lora, self.cfg.model.name_or_path)
                    if self.cfg.model.lora.save_merged:
                        self.tokenizer.save_pretrained(final / MERGED_DIR)
                else:
                    lm.save_pretrained(final, state_dict=lm_state)
                self.tokenizer.save_pretrained(final)
        acc.wait_for_everyone()
        acc.end_training()  # last: it destroys the process group the collectives above need
        return TrainResult(self.out, lm, self.tokenizer, self.history, self.skipped)


class PhaseTimer:
    """Wall-clock seconds per named phase of a step, logged as ``time/<phase>``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{phase}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _probe_rows(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The probe's problems, unguided; read (and checked) before training starts."""
    if not cfg.eval.probe_every:
        return []
    from sgpo.evaluation.benchmarks import load_benchmark

    return [dict(p, strategy=None) for p in load_benchmark(cfg.eval.probe_file).problems]


def train(cfg: TrainConfig, problems: ProblemSet | None = None, model: Any = None, tokenizer: Any = None) -> TrainResult:
    """Train with ``cfg`` (see :class:`sgpo.trainer.config.TrainConfig`); returns the trained model."""
    return Trainer(cfg, problems, model, tokenizer).train()


__all__ = ["Trainer", "TrainResult", "train", "step_problems"]
