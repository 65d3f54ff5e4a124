"""Small builders several test modules share (pytest puts tests/ on the path: ``from helpers import ...``)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

DOCS = ["the cat sat on the mat", "what is two and three", "hello there my friend"] * 20


def plain_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer: byte-level BPE with only <|endoftext|>, pad == eos, no chat tokens."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
