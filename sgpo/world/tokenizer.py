"""The strategy world's tokenizer: a word-level ``PreTrainedTokenizerFast`` with a chat
template, small enough (about a hundred pieces) for a model trained from scratch on CPU.

Pieces are words with an optional leading space, single digits (so numbers are read and
written digit by digit), single punctuation marks and single whitespace characters; the
decoder concatenates them, so decoding gives back the text exactly. The prompt format's fixed
sentences (the ``\\boxed{}`` instruction, the guided template's sentence, the ``<strategy>``
tags) are single phrase tokens: they never vary, and keeping them short keeps guided prompts
short. The vocabulary is built from the world's own texts and :mod:`sgpo.prompts`, so the
tokenizer always matches the prompt format it is trained with.
"""

from __future__ import annotations

import re
from typing import Any

from sgpo import prompts
from sgpo.world.tasks import WorldSpec, corpus_texts

PIECE = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"
SPECIAL = {"unk": "<|unk|>", "pad": "<|pad|>", "eos": "<|end|>"}
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def phrases() -> list[str]:
    """The prompt format's fixed text, one token each."""
    sentence = prompts.GUIDED_TEMPLATE.split("</strategy>", 1)[1].strip()
    return [prompts.BOXED_INSTRUCTION, sentence, "<strategy>", "</strategy>"]


def pieces(text: str) -> list[str]:
    return re.findall(PIECE, text)


def build_tokenizer(spec: WorldSpec) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL.values()) + [f"<|{r}|>" for r in ROLES]
    words = sorted({p for t in corpus_texts(spec) + [prompts.GUIDED_TEMPLATE] for p in pieces(t)})
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=SPECIAL["unk"], pad_token=SPECIAL["pad"],
                                  eos_token=SPECIAL["eos"], additional_special_tokens=specials[3:],
                                  clean_up_tokenization_spaces=False)
    tok.add_tokens(phrases())
    tok.chat_template = CHAT_TEMPLATE
    return tok
