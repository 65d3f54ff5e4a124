"""Turning (prompt, response) text into padded token batches, identically for every stage.

Prompts are tokenized with :func:`tiller.chat.encode_prompt`, responses with ``encode_response`` (so the
model learns to emit ``<|end|>``), the format's markers as special tokens and all content as plain text.
Over-long examples lose the *start* of the prompt, never the answer's end marker when it fits, because the
answer is what is scored or learned.
"""

from __future__ import annotations

import torch

from tiller.chat import encode_prompt, encode_response

IGNORE = -100


def join(prompt_ids: list[int], response_ids: list[int], max_len: int) -> tuple[list[int], int]:
    """prompt+response cut to ``max_len`` (left-truncating the prompt first); returns (ids, prompt_len)."""
    response_ids = response_ids[:max_len]
    keep = max(0, max_len - len(response_ids))
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - keep) :] if keep else []
    return prompt_ids + response_ids, len(prompt_ids)


def sft_example(prompt_ids: list[int], response_ids: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Input ids and labels with the prompt masked (-100): the loss falls on response tokens only."""
    ids, n_prompt = join(prompt_ids, response_ids, max_len)
    return ids, [IGNORE] * n_prompt + ids[n_prompt:]


def pad(seqs: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to one tensor. (B, T)"""
    width = max((len(s) for s in seqs), default=0)
    rows = [([value] * (width - len(s)) + s) if side == "left" else (s + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def batch(seqs: list[list[int]], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` for a list of id lists."""
    return {"input_ids": pad(seqs, pad_id, side), "attention_mask": pad([[1] * len(s) for s in seqs], 0, side)}


def pack_examples(examples: list[tuple[list[int], list[int]]], block: int, pad_id: int) -> list[tuple[list[int], list[int]]]:
    """Greedy packing of (ids, labels) pairs into rows of at most ``block`` tokens (fewer pad tokens).

    Examples in a row attend to each other (no block-diagonal mask), as TRL's default packing does;
    at these lengths that costs little and saves most of the padding compute."""
    rows: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    for e_ids, e_labels in examples:
        if ids and len(ids) + len(e_ids) > block:
            rows.append((ids, labels))
            ids, labels = [], []
        ids, labels = ids + e_ids, labels + e_labels
    if ids:
        rows.append((ids, labels))
    return rows


__all__ = ["IGNORE", "batch", "encode_prompt", "encode_response", "join", "pack_examples", "pad", "sft_example"]
