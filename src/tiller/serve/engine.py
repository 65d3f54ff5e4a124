"""In-process chat generation over a tiller model: the one generator the API server and the playground share.

A decode loop of our own rather than ``model.generate`` so that streaming needs no thread and stop strings
are checked on the text as it grows; it is built from ``tiller.rollout``'s pieces (the prompt's prefill
into a static KV cache, the one-token forward, the choice of the next token), and its greedy tokens are tested
against ``model.generate``. One lock serialises requests: the model and its cache are not safe to share.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal, TypedDict

import torch

from tiller.chat import ROLE_TOKENS, SPECIAL_TOKENS, encode_prompt, to_messages
from tiller.models import load_policy, stop_token_ids
from tiller.rollout import call_options, forward_last, pick_next, prefill
from tiller.serve.decoding import DeltaStream


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int  # every sampled token, the stop token included
    total_tokens: int
    finish_reason: Literal["stop", "length"]


class PromptTooLongError(ValueError):
    """The rendered prompt leaves no room in the model's context window."""


class Generation(Iterator[str]):
    """Text deltas of one answer; ``text`` and ``usage`` are filled in as it runs and when it ends."""

    def __init__(self, steps: Generator[str, None, Usage]) -> None:
        self._steps = steps
        self.text = ""
        self.usage: Usage | None = None

    def __next__(self) -> str:
        try:
            delta = next(self._steps)
        except StopIteration as done:
            self.usage = done.value
            raise StopIteration from None
        self.text += delta
        return delta

    def close(self) -> None:
        """Stop early (a client that went away); frees the engine for the next request."""
        self._steps.close()


class ChatEngine:
    """Loads a tiller model once and answers ``messages`` lists with it.

    ``model_name`` is the id clients ask for (OpenAI ``model``); it defaults to the path as given."""

    def __init__(self, model_path: str, device: str | None = None, model_name: str | None = None) -> None:
        if device is None:  # a server wants the accelerator when there is one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tokenizer = load_policy(model_path, device=device, trainable=False)
        self.model.eval()
        self.model_name = model_name or model_path
        self.device = next(self.model.parameters()).device
        # <|end|> and eos end an answer; a role header means the model started the next turn unasked.
        role_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ROLE_TOKENS.values()]
        unk = self.tokenizer.unk_token_id
        candidates: list[Any] = [*stop_token_ids(self.tokenizer), *role_ids]
        self.stop_ids = {i for i in candidates if isinstance(i, int) and i != unk}
        self.max_context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self._call_options = call_options(self.model)  # the KV-cache argument's name, logits_to_keep
        self._lock = threading.Lock()

    def prompt_ids(self, messages: Any) -> list[int]:
        """Token ids of the rendered prompt, exactly as every training stage tokenizes it."""
        return list(encode_prompt(self.tokenizer, to_messages(messages)))

    def stream(
        self,
        messages: Any,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation:
        """Text deltas as tokens are generated, ending at <|end|>/eos; their concatenation is the answer.

        Validation (messages, ranges, context length) happens here, before the first token; the lock is
        taken when iteration starts and released when it ends or the generation is closed."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        ids = self.prompt_ids(messages)
        if self.max_context is not None:
            room = self.max_context - len(ids)
            if room < 1:
                raise PromptTooLongError(
                    f"the prompt is {len(ids)} tokens; the model's context window is {self.max_context}"
                )
            max_new_tokens = min(max_new_tokens, room)
        return Generation(
            self._steps(ids, max_new_tokens, temperature, top_p, seed, [*SPECIAL_TOKENS, *stop])
        )

    def complete(
        self,
        messages: Any,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> tuple[str, Usage]:
        """The whole answer and its usage; the same tokens ``stream`` gives for the same seed."""
        generation = self.stream(messages, max_new_tokens, temperature, top_p, seed, stop)
        for _ in generation:
            pass
        assert generation.usage is not None
        return generation.text, generation.usage

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _steps(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stops: list[str],
    ) -> Generator[str, None, Usage]:
        with self._lock:
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            deltas = DeltaStream(stops)
            ids: list[int] = []
            finish: Literal["stop", "length"] = "length"
            for token in self._tokens(prompt_ids, max_new_tokens, temperature, top_p, generator):
                ids.append(token)
                if token in self.stop_ids:
                    finish = "stop"
                    break
                # Whole-text decode each step: O(n^2) characters, negligible at chat lengths, and it
                # sidesteps tokens that only decode correctly next to their neighbours.
                delta = deltas.update(self._decode(ids))
                if delta:
                    yield delta
                if deltas.stopped:
                    finish = "stop"
                    break
            if not deltas.stopped:
                answer_ids = ids[:-1] if finish == "stop" else ids
                delta = deltas.update(self._decode(answer_ids), final=True)
                if delta:
                    yield delta
            return Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(ids),
                total_tokens=len(prompt_ids) + len(ids),
                finish_reason=finish,
            )

    # Grad mode is per thread and a server may resume this generator on another thread; the decorator
    # re-enters inference mode at every resume (torch wraps generator functions so).
    @torch.inference_mode()
    def _tokens(
        self, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_p: float,
        generator: torch.Generator,
    ) -> Iterator[int]:
        """Sampled token ids one at a time, until the caller stops asking or ``max_new_tokens``.

        ``tiller.rollout.sample_loop`` for one unpadded prompt, token by token: it stops at the stop ids
        after the batch's last row has, while an answer here also ends on a stop *string* that only the
        caller sees in the decoded text, or on a client that leaves; the caller's ``break`` ends it."""
        p = len(prompt_ids)
        length = p + max_new_tokens
        inputs = torch.tensor([prompt_ids], device=self.device)  # (1, p) then (1, 1)
        mask = torch.zeros(1, length, dtype=torch.long, device=self.device)
        mask[:, :p] = 1
        positions = torch.arange(p, device=self.device)[None]
        logits, cache, static = prefill(self.model, inputs, mask[:, :p], positions, length, self._call_options)
        for t in range(max_new_tokens):
            token, _ = pick_next(logits, temperature, top_p, generator)  # (1,); its log-probability is unused
            yield int(token)
            if t + 1 == max_new_tokens:
                return
            mask[:, p + t] = 1
            width = length if static else p + t + 1  # a static cache takes the full-width mask
            logits, cache = forward_last(self.model, token[:, None], mask[:, :width], positions[:, -1:] + t + 1,
                                         cache, self._call_options)
