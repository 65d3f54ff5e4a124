"""Sampling answers from a policy, left-padded batches: the rollout backends.

- ``backend="loop"``: a plain cached decode loop over ``model(...)`` with a preallocated (static) KV
  cache, optionally ``torch.compile``-d one-token step. It also returns each sampled token's
  log-probability at the sampling temperature, which RL uses as the old-policy log-probabilities
  instead of running the policy over the rollout a second time.
- ``backend="hf"``: Hugging Face ``generate`` (kept as the reference the loop is tested against).
- a :class:`RemoteSampler` (``server=``): a serving engine in another process, in practice the vLLM
  rollout server (:mod:`tiller.vllm_rollout`); the caller keeps its weights in step with ``model``'s.
  It returns token ids only: RL recomputes the old logprobs with its own forward.

Both return token ids as well as text, because RL needs the exact tokens that were sampled
(re-tokenising the decoded text can give different ids). Both draw from the same distribution with the
same random stream, so a seed fixes the samples.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from tiller.batching import batch
from tiller.chat import ROLE_TOKENS, clean_response, encode_prompt
from tiller.models import position_ids_from_mask, stop_token_ids
from tiller.rl import accepts, model_class
from tiller.training import progress

Backend = Literal["hf", "loop"]
CACHE_BUCKET = 64  # the compiled step's cache length is a multiple of this
Step = Callable[..., Any]


class RemoteSampler(Protocol):
    """A sampler in another process (``tiller.vllm_rollout.RolloutServer``): one answer per prompt, each
    up to and including its stop token, from the seeded stream ``seeds[i]`` (temperature 0: greedy)."""

    def sample(self, prompt_ids: list[list[int]], seeds: list[int] | None, *, temperature: float, top_p: float,
               max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]: ...


@dataclass
class Rollout:
    """``n`` answers per prompt, laid out prompt-major: answer j of prompt i is at ``i * n + j``."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)  # up to and including the stop token
    texts: list[str] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # stopped by <|end|>/EOS, not by length or a role header
    # per answer, log softmax(logits / temperature) of each response token as sampled (1-D float32), or
    # None where the answer is not the sampled stream (a sampled pad token was dropped); filled only by
    # the loop sampler at temperature > 0
    logprobs: list[torch.Tensor | None] = field(default_factory=list)


def kept_positions(ids: list[int], stops: set[int], pad_id: int,
                   ends: set[int] | None = None) -> tuple[list[int], bool]:
    """Positions of the answer's tokens: up to and including the first stop token, else all but padding.

    The flag says whether the answer *ended*: stopped at a token of ``ends`` (default: any stop). A stop
    that is not an end (a role header: the model went on to write the user's turn) cuts the answer there,
    so nothing after it is trained on, but it is not a finished answer."""
    ends = stops if ends is None else ends
    for i, t in enumerate(ids):
        if t in stops:
            return list(range(i + 1)), t in ends
    return [i for i, t in enumerate(ids) if t != pad_id], False


def sampling_stops(tok: PreTrainedTokenizerBase) -> tuple[list[int], set[int]]:
    """Token ids that stop sampling (the end marker, EOS and every role header) and the subset that
    *ends* an answer properly (end marker and EOS). Stopping at a role header keeps the sampled tokens and
    the answer's text the same thing: ``chat.clean_response`` cuts the text there too."""
    ends = stop_token_ids(tok)
    headers = [cast(int, tok.convert_tokens_to_ids(t)) for t in ROLE_TOKENS.values()]  # one token, one id
    return ends + [h for h in headers if h not in ends and h != tok.unk_token_id], set(ends)


# --- one sampling step --------------------------------------------------------------------------------


def top_p_filter(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering exactly as Hugging Face's ``TopPLogitsWarper`` (same ops, so the same samples)."""
    sorted_logits, sorted_idx = torch.sort(scaled, descending=False)
    remove_sorted = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
    remove_sorted[..., -1:] = False
    return scaled.masked_fill(remove_sorted.scatter(1, sorted_idx, remove_sorted), -float("inf"))


def pick_next(logits: torch.Tensor, temperature: float, top_p: float,
              generator: torch.Generator | list[torch.Generator] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row (B,) and its log-probability under the *unfiltered* softmax(logits / T), the
    quantity PPO's ratio and KL use; greedy (T = 0) has no such distribution and returns None.
    ``generator``: the caller's own random stream (the server's per-request seed), or one per row
    (:func:`row_generators`), else torch's global one.

    With ``top_p < 1`` the token comes from the nucleus, so this log-probability is not the sampling
    distribution's: RL therefore refuses ``top_p < 1`` (``PPOConfig.validate``), and only sampling for
    ranking, best-of-n and serving, which use no log-probabilities, may filter."""
    if temperature <= 0:
        return logits.argmax(-1), None
    scaled = logits.float() / temperature
    filtered = top_p_filter(scaled, top_p) if top_p < 1.0 else scaled
    probs = filtered.softmax(-1)
    if isinstance(generator, list):
        nxt = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generator)])
    else:
        nxt = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    logp = scaled.gather(1, nxt[:, None]).squeeze(1) - scaled.logsumexp(-1)
    return nxt, logp


def answer_seeds(seed: tuple[int, ...], first: int, count: int) -> list[int]:
    """One sampling seed per answer (:func:`row_generators`, or a rollout server's per-request seed) from
    its index in the whole batch, so an answer is the same whichever data-parallel rank samples it."""
    return [hash((*seed, g)) % 2**62 for g in range(first, first + count)]  # ints hash alike in every process


def row_generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    """One random stream per answer. An answer's tokens then depend on its own seed and not on which batch,
    chunk or process it was sampled in, so a rollout split over N data-parallel ranks samples exactly
    what one process samples (up to float rounding of the logits)."""
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


# --- the model call -------------------------------------------------------------------------------------


def static_cache(model: PreTrainedModel, max_len: int) -> Any | None:
    """A preallocated KV cache (no growth by concatenation per token; fixed shapes, so compilable), or
    None for a model that has no static cache, which then gets its default dynamic one."""
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except Exception:  # noqa: BLE001 - any model-specific refusal means: use the dynamic cache
        return None


def forward_last(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, cache: Any, options: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """Logits of the last position (B, V) and the updated cache; ``options`` from :func:`call_options`."""
    cache_key = options["cache_key"]
    extra = {"logits_to_keep": 1} if options["keep_last"] else {}  # the prompt's other logits are not needed
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                **{cache_key: cache}, **extra)
    return out.logits[:, -1], getattr(out, cache_key)


def call_options(model: PreTrainedModel) -> dict[str, Any]:
    """How to call this model class: the KV-cache argument's name (transformers 5 renamed
    ``past_key_values`` to ``cache``) and whether it takes ``logits_to_keep``. Looked up outside the
    compiled step, which should not trace ``inspect``."""
    # a class is hashable, but mypy checks type[X] against Hashable with the unbound X.__hash__
    cls = model_class(model)  # a peft wrapper passes the keywords through to this class
    return {"cache_key": "cache" if accepts(cls, "cache") else "past_key_values",  # type: ignore[arg-type]
            "keep_last": accepts(cls, "logits_to_keep")}  # type: ignore[arg-type]


def prefill(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            position_ids: torch.Tensor, length: int, options: dict[str, Any]) -> tuple[torch.Tensor, Any, bool]:
    """The prompt's forward into a static cache of ``length`` positions, or into the model's own cache when
    it has no static one or refuses it (a model with another cache type). Returns (logits, cache, static)."""
    cache = static_cache(model, length)
    if cache is not None:
        try:
            return *forward_last(model, input_ids, attention_mask, position_ids, cache, options), True
        except Exception:  # noqa: BLE001 - retried below with the model's default cache
            pass
    return *forward_last(model, input_ids, attention_mask, position_ids, None, options), False


class CompiledStep:
    """``forward_last`` through ``torch.compile`` (inductor), falling back to eager if compilation fails.

    Compiling is a one-time cost per shape; ``seconds`` adds up the calls that compiled so benchmarks
    can report it apart from the steady state."""

    seconds: float = 0.0

    def __init__(self) -> None:
        self.fn: Step | None = None
        self.failed = False
        self.seen: set[tuple] = set()

    def __call__(self, *args: Any) -> tuple[torch.Tensor, Any]:
        key = (id(args[0]), tuple(args[1].shape), tuple(args[2].shape))
        if self.failed:
            return forward_last(*args)
        if self.fn is not None and key in self.seen:
            return self.fn(*args)
        start = time.perf_counter()
        try:
            if self.fn is None:
                self.fn = torch.compile(forward_last, dynamic=False)
            return self.fn(*args)
        except Exception as e:  # noqa: BLE001 - no compiler, unsupported op, ...: eager still works
            warnings.warn(f"torch.compile of the decode step failed, sampling eagerly: {type(e).__name__}: {e}",
                          stacklevel=2)
            self.failed = True
            return forward_last(*args)
        finally:
            self.seen.add(key)
            CompiledStep.seconds += time.perf_counter() - start


COMPILED_STEP = CompiledStep()


# --- the samplers -----------------------------------------------------------------------------------------


def sample_loop(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, stops: torch.Tensor,
                pad_id: int, max_new_tokens: int, temperature: float, top_p: float,
                compile: bool = False, generators: list[torch.Generator] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampled tokens (B, S) and their log-probabilities (B, S) or None, S <= max_new_tokens; rows that
    stopped are filled with ``pad_id``, and the loop ends once every row has stopped. ``generators``: one
    random stream per row (:func:`row_generators`), else torch's global one."""
    b, p = input_ids.shape
    options = call_options(model)
    length = p + max_new_tokens
    if compile:  # a few cache lengths, not one per prompt width: each new shape compiles again
        length = -(-length // CACHE_BUCKET) * CACHE_BUCKET
    mask = torch.zeros(b, length, dtype=attention_mask.dtype, device=input_ids.device)
    mask[:, :p] = attention_mask
    positions = position_ids_from_mask(attention_mask)
    logits, cache, static = prefill(model, input_ids, attention_mask, positions, length, options)
    step: Step = COMPILED_STEP if compile and static else forward_last
    next_pos = positions[:, -1:] + 1
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        nxt, logp = pick_next(logits, temperature, top_p, generators)
        nxt = nxt.masked_fill(done, pad_id)
        tokens.append(nxt)
        if logp is not None:  # None exactly when temperature <= 0, where logps is not used
            logps.append(logp)
        done |= torch.isin(nxt, stops)
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        mask[:, p + t] = 1
        width = mask.shape[1] if static else p + t + 1  # a static cache takes the full-width mask
        logits, cache = step(model, nxt[:, None], mask[:, :width], next_pos, cache, options)
        next_pos = next_pos + 1
    lp = torch.stack(logps, 1) if temperature > 0 else None
    return torch.stack(tokens, 1), lp


def sample_hf(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, stops: list[int],
              pad_id: int, max_new_tokens: int, temperature: float, top_p: float) -> torch.Tensor:
    """Hugging Face ``generate``: the sampled tokens (B, S), padded with ``pad_id`` after a stop."""
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False)
    # generate comes from GenerationMixin, which transformers mixes into the causal-LM classes, not into
    # PreTrainedModel, so mypy falls back to nn.Module.__getattr__ (Tensor | Module)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)  # type: ignore[operator]
    return out[:, input_ids.shape[1] :]


@torch.inference_mode()  # cheaper per operator than no_grad; nothing sampled here is ever differentiated
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
    backend: Backend = "loop",
    compile: bool = False,
    row_seeds: list[int] | None = None,
    server: RemoteSampler | None = None,
) -> Rollout:
    """Sample ``n`` answers to each prompt (``temperature`` 0 means greedy). ``compile`` applies to the
    loop sampler only. ``row_seeds`` (loop sampler or ``server``): a seed per answer, prompt-major, so each
    answer is the same whatever the batching or the process it is sampled in (:func:`row_generators`).
    ``server``: sample there instead of with ``model`` (``backend`` is then unused; ``seed`` gives the
    answers' seeds when ``row_seeds`` is not given)."""
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    stop_list, ends = sampling_stops(tok)
    stops = set(stop_list)
    encoded = [encode_prompt(tok, p)[-max_prompt_len:] for p in prompts]
    flat = [ids for ids in encoded for _ in range(n)]
    out = Rollout()
    device = next(model.parameters()).device
    stop_tensor = torch.tensor(stop_list, device=device)
    if server is not None and row_seeds is None and seed is not None:
        row_seeds = answer_seeds((seed,), 0, len(flat))
    if row_seeds is not None:
        if backend != "loop" and server is None:
            raise ValueError("row_seeds need the loop sampler: Hugging Face generate draws from one stream")
        if len(row_seeds) != len(flat):
            raise ValueError(f"row_seeds: {len(row_seeds)} seeds for {len(flat)} answers")
    bar = progress(len(flat), "sampling", disable=not show_progress)
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        logps = None
        new: torch.Tensor | list[list[int]]
        if server is not None:
            new = server.sample(chunk, row_seeds[start : start + batch_size] if row_seeds is not None else None,
                                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop_ids=stop_list)
        elif backend == "loop":
            enc = {k: v.to(device) for k, v in batch(chunk, tok.pad_token_id, side="left").items()}
            gens = row_generators(row_seeds[start : start + batch_size], device) if row_seeds is not None else None
            new, logps = sample_loop(model, enc["input_ids"], enc["attention_mask"], stop_tensor, tok.pad_token_id,
                                     max_new_tokens, temperature, top_p, compile, gens)
        else:
            enc = {k: v.to(device) for k, v in batch(chunk, tok.pad_token_id, side="left").items()}
            new = sample_hf(model, enc["input_ids"], enc["attention_mask"], stop_list, tok.pad_token_id,
                            max_new_tokens, temperature, top_p)
        for i, (p_ids, ids) in enumerate(zip(chunk, new if isinstance(new, list) else new.tolist(), strict=True)):
            keep, ended = kept_positions(ids, stops, tok.pad_token_id, ends)
            resp = [ids[j] for j in keep]
            out.prompt_ids.append(p_ids)
            out.response_ids.append(resp)
            out.ended.append(ended)
            # decode of one id list is one string (list[str] is for a batch)
            out.texts.append(clean_response(cast(str, tok.decode(resp, skip_special_tokens=False))))
            if logps is not None:
                out.logprobs.append(logps[i, : len(keep)] if keep == list(range(len(keep))) else None)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out
