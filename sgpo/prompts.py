"""Prompt construction shared by training, evaluation and strategy scoring, so the policy
is evaluated with exactly the instruction it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

GUIDED_TEMPLATE = (
    "{problem}\n\n"
    "<strategy>\n{strategy}\n</strategy>\n\n"
    "Use the strategy above as a hint for how to approach the problem, but write the solution "
    "as your own work: do not mention the strategy or the hint. "
)


def user_message(problem: str, strategy: str | None = None, instruction: str = BOXED_INSTRUCTION) -> str:
    """The user turn: the problem, optionally a ``<strategy>`` block, then the instruction."""
    if strategy:
        return GUIDED_TEMPLATE.format(problem=problem.strip(), strategy=strategy.strip()) + instruction
    return f"{problem.strip()}\n\n{instruction}"


def messages(problem: str, strategy: str | None = None, system: str | None = None,
             instruction: str = BOXED_INSTRUCTION,
             examples: tuple[tuple[str, str], ...] = ()) -> list[dict[str, str]]:
    """Chat turns: optional system turn, few-shot ``examples`` as (problem, response)
    exchanges, then the problem. Examples are always unguided, so a guided prompt differs
    from the unguided one only inside its last turn (the teacher sees the same demonstrations
    as the student)."""
    msgs: list[dict[str, str]] = []
    if system:
        msgs.append({"role": "system", "content": system})
    for question, response in examples:
        msgs += [{"role": "user", "content": user_message(question, None, instruction)},
                 {"role": "assistant", "content": response}]
    msgs.append({"role": "user", "content": user_message(problem, strategy, instruction)})
    return msgs


PROMPT_FORMATS = ("chat", "plain")  # the tokenizer's chat template | "role: text" lines


def render(tokenizer: Any, msgs: list[dict[str, str]], prompt_format: str = "chat") -> str:
    """Apply the tokenizer's chat template (generation prompt appended), or with
    ``prompt_format="plain"`` write the turns as ``role: text`` lines. A chat prompt for a
    tokenizer without a template falls back to the plain lines and says so once (training
    and evaluation refuse such a model up front: :func:`check_prompt_format`)."""
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if prompt_format == "chat":
        from sgpo.errors import note_once

        note_once("the tokenizer has no chat template: prompts are written as plain 'role: text' lines")
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: "


def check_prompt_format(tokenizer: Any, style: "PromptStyle", model: str, setting: str) -> None:
    """A chat prompt needs the model's chat template: a model folder copied without it would
    otherwise train or be evaluated on a prompt it has never seen, without a word."""
    if style.format == "chat" and not getattr(tokenizer, "chat_template", None):
        from sgpo.errors import UserError

        raise UserError(f"{model}: the tokenizer has no chat template (was chat_template.jinja or "
                        "tokenizer_config.json's chat_template lost in a copy?); restore it, or set "
                        f"{setting} plain to write prompts as plain 'role: text' lines")


@dataclass(frozen=True)
class PromptStyle:
    """How problems are turned into chat prompts; training and evaluation of one model must
    share it. The defaults: no system prompt, the ``\\boxed{}`` instruction, no
    few-shot examples."""

    system: str | None = None
    instruction: str = BOXED_INSTRUCTION
    examples: tuple[tuple[str, str], ...] = ()  # few-shot (problem, response) exchanges
    format: str = "chat"  # chat (the tokenizer's template) | plain ("role: text" lines)

    @classmethod
    def from_data_config(cls, data: dict[str, Any]) -> "PromptStyle":
        """The style of a training config's data section (``system_prompt``, ``instruction``,
        ``fewshot`` as ``[{problem, response}]``); missing keys take the defaults, and an
        instruction given as empty text stays empty."""
        examples = data.get("fewshot") or []
        if not isinstance(examples, list):
            raise ValueError(f"data.fewshot must be a list of {{problem, response}} mappings, got {examples!r}")
        for i, ex in enumerate(examples):
            if not (isinstance(ex, dict) and isinstance(ex.get("problem"), str) and isinstance(ex.get("response"), str)):
                raise ValueError(f"data.fewshot[{i}] must be a mapping with text fields 'problem' and 'response', "
                                 f"got {ex!r}")
        instruction = data.get("instruction")
        prompt_format = data.get("prompt_format") or "chat"
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"data.prompt_format = {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
        return cls(data.get("system_prompt") or None, BOXED_INSTRUCTION if instruction is None else instruction,
                   tuple((ex["problem"], ex["response"]) for ex in examples), prompt_format)

    def messages(self, problem: str, strategy: str | None = None) -> list[dict[str, str]]:
        return messages(problem, strategy, system=self.system, instruction=self.instruction, examples=self.examples)

    def render(self, tokenizer: Any, problem: str, strategy: str | None = None) -> str:
        return render(tokenizer, self.messages(problem, strategy), self.format)
