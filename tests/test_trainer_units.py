"""Fast unit tests of the trainer's plumbing: configs, data validation, problem scheduling,
collation of micro-batches."""

import json

import pytest
import torch

from sgpo.data import build_problems
from sgpo.io import DataError
from sgpo.trainer.batch import TrainSequence, collate
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import step_problems


def test_yaml_and_set_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm:\n  method: grpo\n  top_k: 16\ntraining:\n  learning_rate: 2.0e-6\ndata:\n  path: x.jsonl\n")
    cfg = load_config(p, ["algorithm.samples_per_problem=6", "training.learning_rate=1", "run.report_to=tensorboard,wandb"])
    assert cfg.algorithm.method == "grpo" and cfg.algorithm.top_k == 16 and cfg.algorithm.samples_per_problem == 6
    assert cfg.training.learning_rate == 1.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.run.report_to == ["tensorboard", "wandb"]
    cfg.validate()


@pytest.mark.parametrize("sets, needle", [
    (["algorithm.nope=1"], "algorithm.nope"),
    (["algorithm.samples_per_problem=abc"], "expected int"),
    (["loss.proximal=c9", "data.path=x"], "loss.proximal"),
    (["algorithm.tau=0.1"], "algorithm.tau': it moved to 'loss.tau'"),
    (["training.micro_batch_size=2"], "moved to 'system.micro_batch_size'"),
    (["data.style=x"], "data.style"),
    (["algorithm.method=ppo", "data.path=x"], "algorithm.method"),
])
def test_bad_config_names_the_key(sets, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(None, sets).validate()


def test_fewshot_from_yaml_or_set_reaches_the_prompt(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  path: x.jsonl\n  system_prompt: Be brief.\n  instruction: Box it.\n"
                 "  fewshot:\n    - {problem: 'What is 40 + 35?', response: 'The answer is \\boxed{75}.'}\n")
    style = load_config(p).validate().data.style()
    assert style.examples == (("What is 40 + 35?", "The answer is \\boxed{75}."),)
    auto, guided = style.messages("What is 2 + 3?"), style.messages("What is 2 + 3?", "Add the numbers.")
    assert [m["role"] for m in auto] == ["system", "user", "assistant", "user"]
    assert auto[1] == {"role": "user", "content": "What is 40 + 35?\n\nBox it."}
    # the example turns are unguided in both prompts: only the last turn differs
    assert auto[:-1] == guided[:-1] and "<strategy>" in guided[-1]["content"] and "<strategy>" not in auto[-1]["content"]
    same = load_config(None, ["data.path=x", "data.fewshot=[{problem: 'What is 40 + 35?', response: 'The answer is "
                                             "\\boxed{75}.'}]", "data.system_prompt=Be brief.", "data.instruction=Box it."])
    assert same.validate().data.style() == style
    assert load_config(None, ["data.path=x", "data.instruction="]).data.style().instruction == ""  # kept empty
    with pytest.raises(ValueError, match=r"data.fewshot\[0\]"):
        load_config(None, ["data.path=x", "data.fewshot=[{problem: q}]"]).validate()


def test_bad_rows_name_file_row_and_field(tmp_path):
    rows = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "", "answer": "3"}]
    with pytest.raises(DataError, match=r"f\.jsonl, row 2, field 'problem'"):
        build_problems(rows, "f.jsonl")
    rows = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "a", "problem": "2+2?", "answer": "4"}]
    with pytest.raises(DataError, match="duplicate id 'a'"):
        build_problems(rows, "f.jsonl")
    bad_strategy = [{"problem": "p", "answer": "1", "strategy": json.dumps({"problem_type": "x"})}]
    with pytest.raises(DataError, match="row 1, field 'strategy'"):
        build_problems(bad_strategy, "f.jsonl")
    with pytest.raises(DataError, match="field 'teacher_response'"):
        build_problems([{"problem": "p", "answer": "1"}], "f.jsonl", need_teacher_response=True)


def test_strategy_json_is_rendered_and_missing_ones_are_counted():
    s = {"problem_type": "linear equation", "key_insight": "Undo operations in reverse order.",
         "plan": ["Move the constant", "Divide by the coefficient", "Check by substitution"]}
    ps = build_problems([{"problem": "p", "answer": "1", "strategy": s}, {"problem": "q", "answer": 2}], "mem")
    assert ps.problems[0].strategy.startswith("Problem type: linear equation")
    assert ps.problems[1].strategy is None and ps.problems[1].answer == "2"
    assert ps.without_strategy == 1


def test_step_problems_is_a_deterministic_partition():
    problems = list(range(10))
    whole = [step_problems(problems, s, 4, seed=3, rank=0, world=1) for s in range(5)]
    assert whole == [step_problems(problems, s, 4, seed=3, rank=0, world=1) for s in range(5)]
    # epochs 0 and 1 are each a permutation of all problems
    flat = [p for w in whole for p in w]
    assert sorted(flat[:10]) == problems and sorted(flat[10:20]) == problems
    for s in range(5):  # two processes split the same global prompts
        r0 = step_problems(problems, s, 4, seed=3, rank=0, world=2)
        r1 = step_problems(problems, s, 4, seed=3, rank=1, world=2)
        assert sorted(r0 + r1) == sorted(whole[s])


def test_collate_positions_predict_completion_tokens():
    k = 2
    seqs = [TrainSequence([1, 2, 3], [4, 5], "rl", advantage=0.5),
            TrainSequence([6], [7, 8, 9], "distill", weight=0.25, support_ids=torch.zeros(3, k, dtype=torch.long),
                          teacher_logp=torch.zeros(3, k), teacher_logp_sampled=torch.zeros(3), guided=True)]
    mb = collate(seqs, pad_id=0, device=torch.device("cpu"))
    t = mb.tokens
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    # hidden at position t predicts token t+1: row 0 positions 2,3 -> tokens 4,5; row 1 positions 0,1,2 -> 7,8,9
    assert mb.rows.tolist() == [0, 0, 1, 1, 1] and mb.positions.tolist() == [2, 3, 0, 1, 2]
    assert mb.input_ids[mb.rows, mb.positions + 1].tolist() == t.targets.tolist() == [4, 5, 7, 8, 9]
    assert t.seq.tolist() == [0, 0, 1, 1, 1]  # each token's sequence (sequence-level aggregations)
    assert t.index["rl"].tolist() == [0, 1] and t.index["distill"].tolist() == [2, 3, 4]
    assert t.advantage.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0] and t.weight.tolist() == [1.0, 1.0] + [0.25] * 3
    assert t.guided.tolist() == [False, False, True, True, True]
    assert t.old_logp is None and t.support_ids.shape == (3, k) and t.pg_weight is None


def test_normalizer_counts_rl_tokens_or_all():
    from sgpo.trainer.batch import normalizer_tokens

    seqs = [TrainSequence([1], [2, 3, 4], "rl"), TrainSequence([1], [5, 6], "offpolicy"),
            TrainSequence([1], [7] * 5, "distill"), TrainSequence([1], [8] * 7, "nll")]
    assert normalizer_tokens(seqs, "rl") == (3 + 2, 17)
    assert normalizer_tokens(seqs, "all") == (17, 17)
    assert normalizer_tokens(seqs[2:], "rl") == (0, 12)  # no RL tokens: the caller falls back to all
    with pytest.raises(ValueError, match="normalizer"):
        normalizer_tokens(seqs, "tokens")
