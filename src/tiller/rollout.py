"""Sampling answers from a policy: Hugging Face ``generate`` with a KV cache, left-padded batches.

Returns token ids as well as text, because RL needs the exact tokens that were sampled (re-tokenising
the decoded text can give different ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tiller.batching import batch, encode_prompt
from tiller.chat import clean_response
from tiller.models import stop_token_ids
from tiller.training import progress


@dataclass
class Rollout:
    """``n`` answers per prompt, laid out prompt-major: answer j of prompt i is at ``i * n + j``."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)  # up to and including the stop token
    texts: list[str] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # stopped by <|end|>/EOS rather than by length


def cut_at_stop(ids: list[int], stops: set[int], pad_id: int) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first stop token; drop padding after it."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1], True
    return [t for t in ids if t != pad_id], False


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[Any],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    max_prompt_len: int = 192,
    seed: int | None = None,
    show_progress: bool = False,
) -> Rollout:
    """Sample ``n`` answers to each prompt (``temperature`` 0 means greedy)."""
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    stops = set(stop_token_ids(tok))
    encoded = [encode_prompt(tok, p)[-max_prompt_len:] for p in prompts]
    flat = [ids for ids in encoded for _ in range(n)]
    out = Rollout()
    device = next(model.parameters()).device
    bar = progress(len(flat), "sampling", disable=not show_progress)
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        enc = {k: v.to(device) for k, v in batch(chunk, tok.pad_token_id, side="left").items()}
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=list(stops),
                                      pad_token_id=tok.pad_token_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        seqs = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :].tolist()
        for p_ids, ids in zip(chunk, seqs, strict=True):
            resp, ended = cut_at_stop(ids, stops, tok.pad_token_id)
            out.prompt_ids.append(p_ids)
            out.response_ids.append(resp)
            out.ended.append(ended)
            out.texts.append(clean_response(tok.decode(resp, skip_special_tokens=False)))
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out
