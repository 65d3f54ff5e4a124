"""AI judges for evaluation (issue #14): the strict parser and the both-orders rule by hand, then an
``OpenAIJudge`` against real ``tiller serve`` apps on tiny models (no mock of the endpoint): a random model
that answers nonsense, and one rigged to say "A" whatever it is asked (a judge with total position bias).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from helpers import served_model, tiny_judge_model
from tiller.config import ConfigError
from tiller.eval.evaluate import EvalResult, PolicyAnswers, evaluate_policy, judge_win_rates, print_eval
from tiller.eval.evaluate import test_prompts as held_out_prompts  # not test_*: pytest would collect it
from tiller.judges import (
    DEFAULT_TEMPLATE,
    JudgeError,
    OpenAIJudge,
    combine,
    judge_pairs,
    load_template,
    make_judge,
    parse_judge_spec,
    parse_verdict,
    prompt_text,
)

PROMPTS = ["What is 2 + 3?", [{"role": "user", "content": "Tell me a story about a cat."}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."}]]
XS = ["It is 5.", "A cat sat on a mat.", "Blue."]
YS = ["It is 6.", "No.", "I don't know."]


# -- by hand ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), (" b.", "B"), ("Tie", "tie"), ("TIE!", "tie"), ("**A**", "A"), ("\n'B'\n", "B"), ("(a)", "A"),
    ("A or B", None), ("", None), (None, None), ("AB", None), ("Answer A", None), ("A. Because", None),
    ("tied", None), ("A B", None),
])
def test_parse_verdict_accepts_one_token_only(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("first, second, outcome", [
    ("A", "B", 1.0),  # x as A wins, then x as B wins: a win
    ("B", "A", 0.0),  # y wins in both orders: a loss
    ("A", "A", 0.5),  # the first position wins both times: position bias, a tie
    ("B", "B", 0.5),
    ("tie", "tie", 0.5),
    ("A", "tie", 0.5),  # a win one way and a tie the other: not consistent, a tie
    ("tie", "A", 0.5),
    ("A", None, None),  # an unparsable reply: no outcome
    (None, "B", None),
])
def test_both_orders_must_agree_for_a_win_or_a_loss(first, second, outcome):
    assert combine(first, second) == outcome


@pytest.mark.parametrize("spec, url, model", [
    ("openai:http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1", None),
    ("openai:http://127.0.0.1:8000/v1:tiny-chat", "http://127.0.0.1:8000/v1", "tiny-chat"),
    ("openai:https://api.openai.com/v1:gpt-4o-mini", "https://api.openai.com/v1", "gpt-4o-mini"),
    ("openai:http://localhost:11434/v1:llama3:8b", "http://localhost:11434/v1", "llama3:8b"),
    ("openai:http://judge:9000", "http://judge:9000", None),
    ("openai:http://judge:9000:m", "http://judge:9000", "m"),
    ("openai:http://judge:m", "http://judge", "m"),
    ("openai:http://[::1]:8000/v1:m", "http://[::1]:8000/v1", "m"),
])
def test_judge_spec(spec, url, model):
    assert parse_judge_spec(spec) == (url, model)


def test_bad_judge_specs_and_templates(tmp_path):
    for spec in ("gold", "openai:", "openai:127.0.0.1:8000", "http://x/v1"):
        with pytest.raises(ConfigError, match="world or openai:URL"):
            make_judge(spec)
    assert make_judge("world") is None
    with pytest.raises(ConfigError, match="--judge-template is for an AI judge"):
        make_judge("world", template=DEFAULT_TEMPLATE)
    bad = tmp_path / "bad.j2"
    bad.write_text("Which is better? {{ prompt }} {{ answer_a }}")
    with pytest.raises(ConfigError, match=r"does not show \{\{ answer_b \}\}"):
        load_template(bad)
    bad.write_text("{{ prompt }} {{ answer_a }} {{ answer_b }} {{ reference }}")
    with pytest.raises(ConfigError, match="uses reference"):
        load_template(bad)
    bad.write_text("{{ prompt }} {{ answer_a }} {{ answer_b }} {% if %}")
    with pytest.raises(ConfigError, match="line 1"):
        load_template(bad)
    with pytest.raises(FileNotFoundError):
        load_template(tmp_path / "missing.j2")


def test_the_packaged_template_asks_for_one_letter_or_tie():
    text = load_template().render(prompt="P {{ x }}", answer_a="first", answer_b="second")
    assert "P {{ x }}" in text  # values are text, not template
    assert text.index("first") < text.index("second")
    assert "exactly one letter, A or B" in text and "tie" in text
    assert DEFAULT_TEMPLATE.suffix == ".j2"  # pyproject's package-data ships eval/templates/*.j2


def test_prompt_text_shows_conversations_as_transcripts():
    assert prompt_text(PROMPTS[0]) == prompt_text([{"role": "user", "content": PROMPTS[0]}]) == PROMPTS[0]
    assert prompt_text({"prompt": PROMPTS[1]}) == "Tell me a story about a cat."
    assert prompt_text(PROMPTS[2]) == "User: Hi\n\nAssistant: Hello.\n\nUser: Name a colour."


def test_judge_win_rates_leave_unjudged_pairs_out_and_count_them():
    fams = ["facts", "facts", "facts", "harmful"]
    rates = judge_win_rates(fams, [True, False, True, False], [1.0, None, 0.5, None])
    assert rates["facts"]["n"] == 2 and rates["facts"]["rate"] == 0.75 and rates["facts"]["left_out"] == 1
    assert rates["harmful"] == {"n": 0, "left_out": 1}  # judged nowhere: no rate, still reported
    assert rates["overall"]["n"] == 2 and rates["overall"]["left_out"] == 2
    assert rates["with constraint"]["left_out"] == 0 and rates["without constraint"] == {"n": 0, "left_out": 2}


# -- against real servers ---------------------------------------------------------------------------------

class Served:
    """A live `tiller serve` app over a tiny model, recording the last message of every request it gets;
    ``fail_next``: that many requests fail inside the engine (the server answers 500)."""

    def __init__(self, url: str, engine: Any, asked: list[str]) -> None:
        self.url, self.engine, self.asked = url, engine, asked
        self.fail_next = 0


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, Served]]:
    out: dict[str, Served] = {}
    with ExitStack() as servers:
        for name, always in (("random", None), ("always_a", "A")):
            path = tiny_judge_model(tmp_path_factory.mktemp(name), always)
            url, engine = servers.enter_context(served_model(path, f"tiny-{name}"))
            stream = engine.stream

            def recording(messages, *args, _stream=stream, _name=name, **kwargs):  # observes, then serves
                s = out[_name]
                s.asked.append(messages[-1]["content"])
                if s.fail_next > 0:
                    s.fail_next -= 1
                    raise RuntimeError("the engine failed (on purpose)")
                return _stream(messages, *args, **kwargs)

            engine.stream = recording  # type: ignore[method-assign]  # the app looks it up per request
            out[name] = Served(url, engine, [])
        yield out


def test_both_orders_are_asked_and_nonsense_is_counted(served):
    """The random model mostly answers neither A, B nor tie: each such reply is a parse failure, reported
    with examples, and its pair gets no outcome. Each pair reaches the server twice, once per order."""
    s = served["random"]
    s.asked.clear()
    judge = OpenAIJudge(s.url, "tiny-random", retries=0)
    report = judge_pairs(judge, PROMPTS, XS, YS, max_failure_share=1.0)
    expected = [judge.render(prompt_text(p), a, b) for p, x, y in zip(PROMPTS, XS, YS, strict=True)
                for a, b in ((x, y), (y, x))]
    assert sorted(s.asked) == sorted(expected) and len(s.asked) == 6  # both orders, nothing else
    # what the model says to each question, asked directly (greedy, as the judge asks)
    replies = [s.engine.complete([{"role": "user", "content": q}], max_new_tokens=8, temperature=0)[0]
               for q in expected]
    verdicts = [parse_verdict(r) for r in replies]
    failed = [r for r, v in zip(replies, verdicts, strict=True) if v is None]
    assert report.n_asked == 6 and report.n_parse_failures == len(failed) >= 3
    assert report.failure_examples == failed[:5]  # the model's own words, in order
    assert report.outcomes == [combine(verdicts[i], verdicts[i + 1]) for i in (0, 2, 4)]
    assert report.n_left_out == sum(o is None for o in report.outcomes) >= 2
    assert report.judge == f"openai:{s.url}:tiny-random"
    assert report.to_json() == {"judge": report.judge, "n_asked": 6, "n_parse_failures": len(failed), "n_pairs": 3,
                                "n_pairs_left_out": report.n_left_out, "failure_examples": failed[:5]}


def test_a_judge_answering_nonsense_is_an_error_past_the_threshold(served):
    s = served["random"]
    judge = OpenAIJudge(s.url, "tiny-random", retries=0)
    with pytest.raises(JudgeError, match=rf"the judge at {s.url} answered nonsense for \d+ of \d+ questions.*"
                                         r"e\.g\. .*check the model and the template"):
        judge_pairs(judge, PROMPTS, XS, YS)  # default: more than 50% unparsable


def test_a_custom_template_is_what_the_server_reads(served, tmp_path):
    s = served["random"]
    s.asked.clear()
    template = tmp_path / "mine.j2"
    template.write_text("XYZZY judge: {{ prompt }} | first: {{ answer_a }} | second: {{ answer_b }}")
    judge = OpenAIJudge(s.url, "tiny-random", template=template, retries=0)
    judge.compare(PROMPTS[0], XS[0], YS[0])
    assert s.asked == ["XYZZY judge: What is 2 + 3? | first: It is 5. | second: It is 6.",
                       "XYZZY judge: What is 2 + 3? | first: It is 6. | second: It is 5."]


def test_a_judge_that_always_says_a_gives_only_ties(served):
    """Position bias cancels: "A" in both orders is a tie, whichever answer is better. The model's name
    comes from the server's /v1/models when the spec gives none."""
    s = served["always_a"]
    judge = make_judge(f"openai:{s.url}")
    assert isinstance(judge, OpenAIJudge) and judge.model == "tiny-always_a"
    judge.max_tokens = 1  # the rigged model repeats "A" for as long as it may
    verdict = judge.compare(PROMPTS[0], XS[0], YS[0])
    assert verdict.replies == ("A", "A") and verdict.verdicts == ("A", "A") and verdict.outcome == 0.5
    report = judge_pairs(judge, PROMPTS, XS, YS)
    assert report.outcomes == [0.5] * 3 and report.n_parse_failures == 0 and report.failure_examples == []
    judge.max_tokens = 3  # "AAA": not a verdict
    assert judge.compare(PROMPTS[0], XS[0], YS[0]).outcome is None


def test_clear_errors_naming_the_url(served):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    # the judge asks the server for its models when it is made: a dead URL fails before any answer is sampled
    with pytest.raises(JudgeError, match=rf"no judge answers at {url} \(1 try: .*is the server running"):
        OpenAIJudge(url, "m", retries=0)
    with pytest.raises(JudgeError, match=rf"no judge answers at {url} \(2 tries"):
        make_judge(f"openai:{url}", retries=1)
    s = served["random"]
    with pytest.raises(JudgeError, match=rf"the judge at {s.url} serves tiny-random, not gpt-9"):
        OpenAIJudge(s.url, "gpt-9", retries=0)
    judge = OpenAIJudge(s.url, "tiny-random", retries=0)
    judge.model = "gpt-9"  # a server that does not list a model it lacks: its 404 is reported
    with pytest.raises(JudgeError, match=rf"the judge at {s.url} answered HTTP 404: The model `gpt-9`"):
        judge.compare("p", "a", "b")
    judge.model, judge.client = "tiny-random", judge.client.with_options(timeout=0.001)
    with pytest.raises(JudgeError, match=rf"the judge at {s.url} did not answer within"):
        judge.compare("p", "a", "b")


def test_server_errors_are_retried_then_reported(served):
    s = served["always_a"]
    s.asked.clear()
    s.fail_next = 1  # the first question gets a 500, the retry an answer
    verdict = OpenAIJudge(s.url, "tiny-always_a", retries=1, max_tokens=1).compare("p", "a", "b")
    assert verdict.replies == ("A", "A") and len(s.asked) == 3
    s.fail_next = 2
    with pytest.raises(JudgeError, match=rf"the judge at {s.url} answered HTTP 500"):
        OpenAIJudge(s.url, "tiny-always_a", retries=1, max_tokens=1).compare("p", "a", "b")
    assert s.fail_next == 0


def test_evaluate_policy_reports_the_ai_judge_beside_the_gold_one(served, tiny_world_dir, tmp_path, capsys):
    from tiller.world import load_world

    world = load_world(tiny_world_dir)
    prompts, families = held_out_prompts(world, 2, seed=0)
    ideal = PolicyAnswers("ideal", prompts, families, [world.judge.ideal(p) for p in prompts])
    shrug = PolicyAnswers("shrug", prompts, families, ["I don't know."] * len(prompts))
    judge = OpenAIJudge(served["always_a"].url, max_tokens=1)
    # tmp_path has no corpus-valid.jsonl and the answers are cached: no policy is loaded
    res = evaluate_policy("ideal", tmp_path, baseline="shrug", n_per_family=2, seed=0, world=world,
                          cache={"ideal": ideal, "shrug": shrug}, judge=judge)
    assert res.win_rate["overall"]["rate"] > 0.5  # the gold judge still speaks
    n = len(prompts)
    assert res.judge_win_rate["overall"] == {**res.judge_win_rate["overall"], "rate": 0.5, "ties": 1.0, "n": n,
                                             "left_out": 0}
    assert set(res.judge_win_rate) >= set(families)
    assert res.judge["n_asked"] == 2 * n and res.judge["n_parse_failures"] == 0 and res.judge["n_pairs"] == n
    assert res.judge["template"] == str(DEFAULT_TEMPLATE) and res.judge["judge"] == judge.name
    assert {"judge", "judge_win_rate"} <= set(res.to_json())
    print_eval(res)
    out = capsys.readouterr().out
    assert f"AI judge {judge.name}" in out and f"{2 * n} questions (both orders of {n} pairs), 0 replies" in out
    assert f"overall             50.0% [50.0%, 50.0%] n={n}" in out

    with pytest.raises(ConfigError, match="give a baseline"):
        evaluate_policy("ideal", tmp_path, world=world, cache={"ideal": ideal}, judge=judge)


def test_print_eval_shows_unparsable_replies_and_left_out_pairs(capsys):
    res = EvalResult("p", per_family={"facts": {"score": 1.0, "correct": 1.0}}, overall={"score": 1.0, "correct": 1.0},
                     baseline="b", win_rate={"overall": {"rate": 1.0, "lo": 1.0, "hi": 1.0, "n": 2, "ties": 0.0,
                                                         "wins": 1.0, "losses": 0.0}},
                     judge={"judge": "openai:http://j/v1:m", "template": "t.j2", "n_asked": 4,
                            "n_parse_failures": 1, "n_pairs": 2, "n_pairs_left_out": 1,
                            "failure_examples": ["I think A"]},
                     judge_win_rate=judge_win_rates(["facts", "harmful"], [False, False], [1.0, None]))
    print_eval(res)
    out = capsys.readouterr().out
    assert "4 questions (both orders of 2 pairs), 1 replies not A, B or tie, 1 pairs left out" in out
    assert "unparsable: 'I think A'" in out and "left out 1" in out
    judged = out[out.index("AI judge win rate"):].splitlines()
    assert next(x for x in judged if x.startswith("harmful")).split() == ["harmful", "–", "left", "out", "1"]
