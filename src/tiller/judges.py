"""Pairwise AI judges for evaluation (issue #14): any OpenAI-compatible endpoint, `tiller serve` included,
compares two policies' answers on the held-out prompts, beside (or instead of) the world's gold judge.

Every pair is asked in both orders and every reply is parsed strictly; replies that are not a verdict are
counted and reported with examples, never dropped in silence, and a judge that mostly answers nonsense is an
error rather than a win rate.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tiller.config import ConfigError

DEFAULT_TEMPLATE = Path(__file__).parent / "eval" / "templates" / "judge_pairwise.j2"
FIELDS = frozenset({"prompt", "answer_a", "answer_b"})  # what a template must show the judge
EXAMPLE_CHARS = 200  # an unparsable reply, as reported
N_EXAMPLES = 5
# The whole reply is one verdict, any case, with whitespace or punctuation around it ("A", " b.", "**Tie**").
_VERDICT = re.compile(r"[\W_]*(a|b|tie)[\W_]*", re.I)
_AS_A = {"A": 1.0, "B": 0.0, "tie": 0.5}  # the outcome for the answer shown as A
_AS_B = {"A": 0.0, "B": 1.0, "tie": 0.5}  # ... and for the answer shown as B


class JudgeError(RuntimeError):
    """A judge that cannot be used (down, too slow, refusing, answering nonsense); one line for the user."""


def parse_verdict(reply: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` if the reply is exactly that token, else None (a parse failure)."""
    m = _VERDICT.fullmatch(reply or "")
    if m is None:
        return None
    token = m.group(1).lower()
    return "tie" if token == "tie" else token.upper()


def combine(first: str | None, second: str | None) -> float | None:
    """Outcome for answer x from the verdict with x shown as A (``first``) and with x shown as B (``second``).

    Both orders agreeing give a win (1) or a loss (0); any disagreement is a tie (0.5), so a judge that always
    picks one position scores every pair a tie instead of favouring whichever policy it happens to show
    there. None when either reply did not parse."""
    if first is None or second is None:
        return None
    x_first, x_second = _AS_A[first], _AS_B[second]
    return x_first if x_first == x_second else 0.5


@dataclass
class PairVerdict:
    """One pair judged in both orders: the outcome for the first answer (None: a reply did not parse)."""

    outcome: float | None
    verdicts: tuple[str | None, str | None]
    replies: tuple[str, str]


class PairwiseJudge(Protocol):
    name: str  # what reports say was used

    def compare(self, prompt: Any, a: str, b: str) -> PairVerdict: ...


def prompt_text(prompt: Any) -> str:
    """A prompt as the judge reads it: a single user turn as its text, a conversation as a transcript."""
    if isinstance(prompt, dict) and "prompt" in prompt:
        prompt = prompt["prompt"]
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return str(prompt[0]["content"])
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def load_template(path: Path | str | None = None) -> Any:
    """The Jinja template at ``path`` (default: the packaged one); it must use exactly ``{{ prompt }}``,
    ``{{ answer_a }}`` and ``{{ answer_b }}``. Values are inserted as text, never parsed as template."""
    import jinja2
    from jinja2 import meta
    from jinja2.sandbox import SandboxedEnvironment

    path = Path(path) if path else DEFAULT_TEMPLATE
    source = path.read_text(encoding="utf-8")  # FileNotFoundError names the path
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    try:
        used = meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"the judge template {path}, line {e.lineno}: {e.message}") from None
    if missing := sorted(FIELDS - used):
        raise ConfigError(f"the judge template {path} does not show {', '.join('{{ ' + f + ' }}' for f in missing)}"
                          " to the judge")
    if unknown := sorted(used - FIELDS):
        raise ConfigError(f"the judge template {path} uses {', '.join(unknown)}; it may use only "
                          f"{', '.join(sorted(FIELDS))}")
    return env.from_string(source)


def api_key_from_env() -> str | None:
    return os.environ.get("OPENAI_API_KEY") or os.environ.get("TILLER_API_KEY") or None


class OpenAIJudge:
    """An OpenAI-compatible chat endpoint (``url``: its base, e.g. http://127.0.0.1:8000/v1) as a pairwise
    judge: the template rendered as one user message, temperature 0, ``max_tokens`` of reply.

    ``compare`` asks both orders (x as A then y as A) to cancel position bias: consistent verdicts give a
    win or a loss, inconsistent ones a tie (:func:`combine`); each reply is parsed by :func:`parse_verdict`.
    Connection errors, timeouts and 5xx are retried ``retries`` times with the client's exponential backoff,
    then raise :class:`JudgeError` naming the URL. The server is asked for its models at once (a judge that is
    down fails before answers are sampled): without ``model`` it must list exactly one, with it that one."""

    def __init__(self, url: str, model: str | None = None, template: Path | str | None = None,
                 timeout: float = 60.0, retries: int = 2, max_tokens: int = 8, api_key: str | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise ConfigError("an OpenAI judge needs the openai package: pip install -e '.[judge]' (or openai)") from None
        self._openai = openai
        self.url, self.timeout, self.retries, self.max_tokens = url.rstrip("/"), timeout, retries, max_tokens
        self.template_path = Path(template) if template else DEFAULT_TEMPLATE
        self.template = load_template(self.template_path)
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or api_key_from_env() or "unused",
                                    timeout=timeout, max_retries=retries)
        self.model = self._check_model(model)
        self.name = f"openai:{self.url}:{self.model}"

    def render(self, prompt: str, a: str, b: str) -> str:
        return str(self.template.render(prompt=prompt, answer_a=a, answer_b=b))

    def compare(self, prompt: Any, a: str, b: str) -> PairVerdict:
        text = prompt_text(prompt)
        replies = (self.ask(self.render(text, a, b)), self.ask(self.render(text, b, a)))
        first, second = parse_verdict(replies[0]), parse_verdict(replies[1])
        return PairVerdict(combine(first, second), (first, second), replies)

    def ask(self, content: str) -> str:
        """The judge's reply to one question (``""`` for an empty one)."""
        reply = self._call(lambda: self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], temperature=0,
            max_tokens=self.max_tokens))
        return (reply.choices[0].message.content or "") if reply.choices else ""

    def _check_model(self, model: str | None) -> str:
        page = self._call(self.client.models.list, status_ok=model is not None)
        ids = None if page is None else [m.id for m in page]
        if model is not None:
            if ids is not None and model not in ids:
                raise JudgeError(f"the judge at {self.url} serves {', '.join(ids[:5])}"
                                 f"{', ...' if len(ids) > 5 else ''}, not {model}")
            return model
        if not ids or len(ids) != 1:
            raise JudgeError(f"the judge at {self.url} serves {len(ids or [])} models ({', '.join((ids or [])[:5])}): "
                             f"name one, openai:{self.url}:MODEL")
        return str(ids[0])

    def _call(self, fn: Any, status_ok: bool = False) -> Any:
        """``fn()`` with the client's errors as :class:`JudgeError`; ``status_ok``: an HTTP error gives None
        (a server that does not list its models may still judge)."""
        openai = self._openai
        tries = f"{self.retries + 1} {'try' if self.retries == 0 else 'tries'}"
        try:
            return fn()
        except openai.APITimeoutError:
            raise JudgeError(f"the judge at {self.url} did not answer within {self.timeout:g} s ({tries}); "
                             "raise --judge-timeout or check the server") from None
        except openai.APIConnectionError as e:
            raise JudgeError(f"no judge answers at {self.url} ({tries}: {e.__cause__ or e}); is the server "
                             "running, and is the URL its base (ending in /v1)?") from None
        except openai.APIStatusError as e:
            if status_ok:
                return None
            raise JudgeError(f"the judge at {self.url} answered HTTP {e.status_code}: {_message(e)}") from None


def _message(e: Any) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    inner = body.get("error", body)
    return str(inner.get("message") if isinstance(inner, dict) and inner.get("message") else e.message)


def parse_judge_spec(spec: str) -> tuple[str, str | None]:
    """``openai:URL[:MODEL]`` -> (URL, MODEL or None). The model follows the first colon after the URL's
    host and port, so ``openai:http://h:8000/v1:llama3:8b`` names the model ``llama3:8b``."""
    rest = spec.removeprefix("openai:")
    scheme, sep, tail = rest.partition("://")
    if rest == spec or not sep or not tail:
        raise ConfigError(f"--judge {spec!r}: expected world or openai:URL[:MODEL], e.g. "
                          "openai:http://127.0.0.1:8000/v1")
    host_end = tail.index("]") + 1 if tail.startswith("[") and "]" in tail else 0  # an IPv6 literal
    slash = tail.find("/", host_end)
    netloc, path = (tail, "") if slash < 0 else (tail[:slash], tail[slash:])
    host, _, after = netloc[host_end:].partition(":")
    host = netloc[:host_end] + host
    port, _, model = after.partition(":")
    if port and not port.isdigit():  # openai:http://host:MODEL
        port, model = "", after
    if path:
        path, _, model = path.partition(":")
    url = f"{scheme}://{host}{':' + port if port else ''}{path}"
    return url, model or None


def make_judge(spec: str, template: Path | str | None = None, timeout: float = 60.0,
               retries: int = 2) -> PairwiseJudge | None:
    """The judge ``tiller eval --judge`` names: None for ``world`` (the gold judge), else an OpenAI one."""
    if spec == "world":
        if template:
            raise ConfigError("--judge-template is for an AI judge (--judge openai:URL[:MODEL])")
        return None
    url, model = parse_judge_spec(spec)
    return OpenAIJudge(url, model, template=template, timeout=timeout, retries=retries)


@dataclass
class JudgeReport:
    """What a judge said about pairs (x_i, y_i): ``outcomes[i]`` for x_i, None where a reply did not parse."""

    judge: str
    outcomes: list[float | None] = field(default_factory=list)
    n_asked: int = 0  # questions: two per pair
    n_parse_failures: int = 0  # replies that were not a verdict
    failure_examples: list[str] = field(default_factory=list)  # some of them, truncated

    @property
    def n_left_out(self) -> int:
        """Pairs without an outcome (a reply of either order did not parse): not in any win rate."""
        return sum(o is None for o in self.outcomes)

    def add(self, verdict: PairVerdict) -> None:
        self.outcomes.append(verdict.outcome)
        self.n_asked += 2
        for reply, parsed in zip(verdict.replies, verdict.verdicts, strict=True):
            if parsed is None:
                self.n_parse_failures += 1
                if len(self.failure_examples) < N_EXAMPLES:
                    self.failure_examples.append(_truncate(reply))

    def to_json(self) -> dict[str, Any]:
        return {"judge": self.judge, "n_asked": self.n_asked, "n_parse_failures": self.n_parse_failures,
                "n_pairs": len(self.outcomes), "n_pairs_left_out": self.n_left_out,
                "failure_examples": self.failure_examples}


def _truncate(reply: str) -> str:
    return reply if len(reply) <= EXAMPLE_CHARS else reply[:EXAMPLE_CHARS] + "…"


def judge_pairs(judge: PairwiseJudge, prompts: Sequence[Any], xs: Sequence[str], ys: Sequence[str],
                max_failure_share: float = 0.5, workers: int = 4) -> JudgeReport:
    """``judge.compare(prompt, x, y)`` for every pair, ``workers`` at a time, in order.

    Raises :class:`JudgeError` once more than ``max_failure_share`` of all the questions (two per pair) are
    unparsable: such a judge is measuring its own format, not the policies."""
    if not len(prompts) == len(xs) == len(ys):
        raise ValueError("prompts, xs and ys must have the same length")
    report = JudgeReport(judge.name)
    limit = max_failure_share * 2 * len(prompts)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for verdict in pool.map(judge.compare, prompts, xs, ys):
            report.add(verdict)
            if report.n_parse_failures > limit:  # already over the bar, whatever the rest says
                examples = "; ".join(repr(e) for e in report.failure_examples[:3])
                raise JudgeError(
                    f"the judge at {getattr(judge, 'url', judge.name)} answered nonsense for "
                    f"{report.n_parse_failures} of {report.n_asked} questions (of {2 * len(prompts)} planned; "
                    f"more than {max_failure_share:.0%}), e.g. {examples}: it must reply A, B or tie; check the "
                    "model and the template")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return report
