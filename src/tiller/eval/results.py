"""A run's evaluation results as typed records: built by ``evaluate_run``, saved as ``results.json``, read
by the report.

``to_dict`` writes the JSON shape ``results.json`` has always had; ``from_dict`` reads it back and is the
one place that tolerates missing or malformed parts (old files, hand-written ones): a missing number is
None, a section that is not an object is empty. Numbers keep NaN as it was written (``mean_ci`` of no
data); the report treats it as missing. Records fed by open-ended metric dicts (an RM's metrics, a curve
point) keep the keys they do not name in ``extra``, so nothing is lost on the way through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from tiller.eval.human import HumanEval

# The two buckets of prompts a comparison's win rates are split into beside the families (issue #17): those
# "without constraint" are comparable to results of the world before it had explicit constraints.
CONSTRAINT_BUCKETS = ("with constraint", "without constraint")

# ---------------------------------------------------------------------------------------------- parsing


def _obj(x: Any) -> dict[str, Any]:
    """``x`` if it is a JSON object, else an empty one."""
    return x if isinstance(x, dict) else {}


def _objs(x: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list; anything else in it, or a non-list, is dropped."""
    return [r for r in x if isinstance(r, dict)] if isinstance(x, list) else []


def _float(x: Any) -> float | None:
    """A number as a float (NaN kept), or None for anything missing or non-numeric."""
    return None if isinstance(x, bool) or not isinstance(x, (int, float)) else float(x)


def _int(x: Any) -> int | None:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _strs(x: Any) -> list[str]:
    """The strings of a JSON list; anything else in it, or a non-list, is dropped."""
    return [s for s in x if isinstance(s, str)] if isinstance(x, list) else []


def _put(d: dict[str, Any], **values: Any) -> dict[str, Any]:
    """``d`` with each of ``values`` that is not None."""
    d.update({k: v for k, v in values.items() if v is not None})
    return d


# ---------------------------------------------------------------------------------------------- records


@dataclass
class WinRate:
    """Win rate (ties count half) with its 95% interval; ``n`` comparisons, ``ties``, ``wins`` and ``losses``
    their shares (wins and losses are missing in files written before issue #17). An AI judge's rates also
    count ``left_out``: pairs without an outcome because a reply was not a verdict (issue #14)."""

    rate: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    ties: float | None = None
    wins: float | None = None
    losses: float | None = None
    left_out: int | None = None

    @classmethod
    def from_dict(cls, d: Any) -> WinRate:
        d = _obj(d)
        return cls(_float(d.get("rate")), _float(d.get("lo")), _float(d.get("hi")), _int(d.get("n")),
                   _float(d.get("ties")), _float(d.get("wins")), _float(d.get("losses")), _int(d.get("left_out")))

    def to_dict(self) -> dict[str, Any]:
        return _put({}, rate=self.rate, lo=self.lo, hi=self.hi, n=self.n, ties=self.ties, wins=self.wins,
                    losses=self.losses, left_out=self.left_out)


@dataclass
class Estimate:
    """A share (95% Wilson interval) or a mean (95% normal interval) over ``n`` answers: one item of
    InstructGPT's metadata per policy (``evaluate.policy_metadata``)."""

    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Estimate:
        d = _obj(d)
        return cls(_float(d.get("value")), _float(d.get("lo")), _float(d.get("hi")), _int(d.get("n")))

    def to_dict(self) -> dict[str, Any]:
        return _put({}, value=self.value, lo=self.lo, hi=self.hi, n=self.n)


def _estimates(x: Any) -> dict[str, Estimate]:
    return {str(k): Estimate.from_dict(v) for k, v in _obj(x).items()}


@dataclass
class Scores:
    """Means of the gold judge's aspects over a family's prompts (or all of them)."""

    score: float | None = None
    correct: float | None = None
    refusal_rate: float | None = None  # harmful prompts only
    hallucination_rate: float | None = None  # fact prompts only
    pretrain_loss: float | None = None  # held-out pretraining text, nats per token; overall only
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS: ClassVar[tuple[str, ...]] = ("score", "correct", "refusal_rate", "hallucination_rate", "pretrain_loss")

    @classmethod
    def from_dict(cls, d: Any) -> Scores:
        d = _obj(d)
        return cls(score=_float(d.get("score")), correct=_float(d.get("correct")),
                   refusal_rate=_float(d.get("refusal_rate")), hallucination_rate=_float(d.get("hallucination_rate")),
                   pretrain_loss=_float(d.get("pretrain_loss")), extra={k: v for k, v in d.items() if k not in cls.KEYS})

    def to_dict(self) -> dict[str, Any]:
        return _put({}, **{k: getattr(self, k) for k in self.KEYS}) | self.extra

    def get(self, key: str) -> float | None:
        """The mean named ``key`` (one of ``KEYS``), or None."""
        return getattr(self, key) if key in self.KEYS else None


@dataclass
class Sample:
    """One answer: ``prompt`` is a string or a list of chat messages ``{role, content}``; ``score`` is the gold
    judge's (None without a world), ``rm_score`` the last round's RM's (None in files before issue #14)."""

    family: str = ""
    prompt: Any = None
    response: str = ""
    score: float | None = None
    rm_score: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Sample:
        d = _obj(d)
        return cls(str(d.get("family", "")), d.get("prompt"), str(d.get("response", "")), _float(d.get("score")),
                   _float(d.get("rm_score")))

    def to_dict(self) -> dict[str, Any]:
        return _put({"family": self.family, "prompt": self.prompt, "response": self.response}, score=self.score,
                    rm_score=self.rm_score)


@dataclass
class PolicyEval:
    """One policy on the held-out prompts: ``policy`` is its folder. ``metadata`` holds InstructGPT's shares
    (``fails_instruction``, ``follows_constraints``, ... as in ``tiller.world.judge.METADATA``) and
    ``aspect_means`` the means of helpful, truthful, harmless, form, ``score`` and ``likert``; both are empty
    in files written before issue #17 and then left out of ``to_dict``."""

    policy: str | None = None
    per_family: dict[str, Scores] = field(default_factory=dict)
    overall: Scores = field(default_factory=Scores)
    samples: list[Sample] = field(default_factory=list)
    metadata: dict[str, Estimate] = field(default_factory=dict)
    aspect_means: dict[str, Estimate] = field(default_factory=dict)
    rm_score: Estimate | None = None  # the last round's RM on the answers: mean, 95% interval (issue #14)

    @classmethod
    def from_dict(cls, d: Any) -> PolicyEval:
        d = _obj(d)
        rm = d.get("rm_score")
        return cls(_str(d.get("policy")), {str(f): Scores.from_dict(s) for f, s in _obj(d.get("per_family")).items()},
                   Scores.from_dict(d.get("overall")), [Sample.from_dict(s) for s in _objs(d.get("samples"))],
                   _estimates(d.get("metadata")), _estimates(d.get("aspect_means")),
                   Estimate.from_dict(rm) if isinstance(rm, dict) else None)

    def to_dict(self) -> dict[str, Any]:
        out = _put({}, policy=self.policy) | {
            "per_family": {f: s.to_dict() for f, s in self.per_family.items()}, "overall": self.overall.to_dict(),
            "samples": [s.to_dict() for s in self.samples]}
        for key, estimates in (("metadata", self.metadata), ("aspect_means", self.aspect_means)):
            if estimates:
                out[key] = {k: e.to_dict() for k, e in estimates.items()}
        if self.rm_score is not None:
            out["rm_score"] = self.rm_score.to_dict()
        return out


@dataclass
class CurvePoint:
    """A point of an RL curve (``iteration``, ``episodes``) or of best-of-n's (``n``): scores at a KL (nats)
    from the initial policy; ``oracle_gold_score`` is best-of-n picked by the gold judge."""

    kl: float | None = None
    rm_score: float | None = None
    gold_score: float | None = None
    oracle_gold_score: float | None = None
    iteration: int | None = None
    episodes: int | None = None
    n: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    NUMS: ClassVar[tuple[str, ...]] = ("kl", "rm_score", "gold_score", "oracle_gold_score")
    INTS: ClassVar[tuple[str, ...]] = ("iteration", "episodes", "n")

    @classmethod
    def from_dict(cls, d: Any) -> CurvePoint:
        d = _obj(d)
        return cls(kl=_float(d.get("kl")), rm_score=_float(d.get("rm_score")), gold_score=_float(d.get("gold_score")),
                   oracle_gold_score=_float(d.get("oracle_gold_score")), iteration=_int(d.get("iteration")),
                   episodes=_int(d.get("episodes")), n=_int(d.get("n")),
                   extra={k: v for k, v in d.items() if k not in cls.NUMS + cls.INTS})

    def to_dict(self) -> dict[str, Any]:
        return _put({}, **{k: getattr(self, k) for k in self.INTS + self.NUMS}) | self.extra


@dataclass
class CalibrationBin:
    """RM confidence bin: mean ``predicted`` P(preferred wins) and the ``observed`` frequency, over ``n`` pairs."""

    bin: str | int | None = None  # "0.5-0.6" as tiller rm writes it
    n: int | None = None
    predicted: float | None = None
    observed: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> CalibrationBin:
        d = _obj(d)
        b = d.get("bin")
        return cls(b if isinstance(b, (str, int)) else None, _int(d.get("n")), _float(d.get("predicted")),
                   _float(d.get("observed")))

    def to_dict(self) -> dict[str, Any]:
        return _put({}, bin=self.bin, n=self.n, predicted=self.predicted, observed=self.observed)


@dataclass
class RMRound:
    """A round's reward model: ``tiller rm``'s metrics (``eval/accuracy`` on held-out labels,
    ``data/labeler_agreement``, ``calibration``, the rest in ``extra``) and its accuracy against the gold judge."""

    accuracy: float | None = None
    gold_accuracy: float | None = None
    labeler_agreement: float | None = None
    calibration: list[CalibrationBin] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS: ClassVar[dict[str, str]] = {"accuracy": "eval/accuracy", "gold_accuracy": "gold_accuracy",
            "labeler_agreement": "data/labeler_agreement"}

    @classmethod
    def from_dict(cls, d: Any) -> RMRound:
        d = _obj(d)
        cal = d.get("calibration")
        return cls(accuracy=_float(d.get("eval/accuracy")), gold_accuracy=_float(d.get("gold_accuracy")),
                   labeler_agreement=_float(d.get("data/labeler_agreement")),
                   calibration=None if cal is None else [CalibrationBin.from_dict(b) for b in _objs(cal)],
                   extra={k: v for k, v in d.items() if k not in (*cls.KEYS.values(), "calibration")})

    def to_dict(self) -> dict[str, Any]:
        cal = None if self.calibration is None else [b.to_dict() for b in self.calibration]
        return self.extra | _put({}, **{k: getattr(self, a) for a, k in self.KEYS.items()}) | _put({}, calibration=cal)


@dataclass
class HeadroomRow:
    """Best of ``n`` answers against one baseline answer, picked by the RM and by the gold judge."""

    n: int | None = None
    kl: float | None = None
    rm: WinRate = field(default_factory=WinRate)
    gold: WinRate = field(default_factory=WinRate)

    @classmethod
    def from_dict(cls, d: Any) -> HeadroomRow:
        d = _obj(d)
        return cls(_int(d.get("n")), _float(d.get("kl")), WinRate.from_dict(d.get("rm")), WinRate.from_dict(d.get("gold")))

    def to_dict(self) -> dict[str, Any]:
        return _put({}, n=self.n, kl=self.kl) | {"rm": self.rm.to_dict(), "gold": self.gold.to_dict()}


@dataclass
class Headroom:
    """``eval/curves.py``'s headroom table for ``policy``, its answers picked by the RM folder named ``rm``."""

    policy: str | None = None
    rm: str | None = None
    rows: list[HeadroomRow] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Any) -> Headroom:
        d = _obj(d)
        return cls(_str(d.get("policy")), _str(d.get("rm")), [HeadroomRow.from_dict(r) for r in _objs(d.get("rows"))])

    def to_dict(self) -> dict[str, Any]:
        return _put({}, policy=self.policy, rm=self.rm) | {"rows": [r.to_dict() for r in self.rows]}


@dataclass
class JudgeResults:
    """An AI judge's verdicts on the run (issue #14): ``judge`` names it (``openai:URL:MODEL``), ``template`` the
    prompt it was asked with. The counts add up over the distinct pairs of policy folders it was asked about
    (both orders each: ``n_asked`` is twice ``n_pairs``); ``n_parse_failures`` replies were not a verdict and
    ``n_pairs_left_out`` pairs have no outcome. ``win_rates`` are per comparison as the gold ones (each bucket
    with ``left_out``), ``elo`` fitted to its matches."""

    judge: str | None = None
    template: str | None = None
    n_prompts: int | None = None
    n_asked: int | None = None
    n_parse_failures: int | None = None
    n_pairs: int | None = None
    n_pairs_left_out: int | None = None
    failure_examples: list[str] = field(default_factory=list)
    max_failure_share: float | None = None
    win_rates: dict[str, dict[str, WinRate]] = field(default_factory=dict)
    elo: dict[str, float] = field(default_factory=dict)
    elo_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    COUNTS: ClassVar[tuple[str, ...]] = ("n_prompts", "n_asked", "n_parse_failures", "n_pairs", "n_pairs_left_out")

    @classmethod
    def from_dict(cls, d: Any) -> JudgeResults:
        d = _obj(d)
        elo, intervals = _elo(d.get("elo"), d.get("elo_intervals"))
        return cls(_str(d.get("judge")), _str(d.get("template")), **{k: _int(d.get(k)) for k in cls.COUNTS},
                   failure_examples=_strs(d.get("failure_examples")),
                   max_failure_share=_float(d.get("max_failure_share")), win_rates=_win_rates(d.get("win_rates")),
                   elo=elo, elo_intervals=intervals)

    def to_dict(self) -> dict[str, Any]:
        out = _put({}, judge=self.judge, template=self.template, **{k: getattr(self, k) for k in self.COUNTS})
        _put(out, failure_examples=list(self.failure_examples), max_failure_share=self.max_failure_share)
        return out | {"win_rates": _win_rates_dict(self.win_rates), "elo": dict(self.elo),
                      "elo_intervals": {k: list(iv) for k, iv in self.elo_intervals.items()}}


def _human(x: Any) -> HumanEval | None:
    """People's verdicts from ``tiller app`` (``eval/human.py``), or None where there are none."""
    if not isinstance(x, dict) or not x:
        return None
    from tiller.eval.human import HumanEval  # here: human.py may read these records itself

    return HumanEval.from_dict(x)


@dataclass
class RunResults:
    """Everything ``tiller run`` measured, keyed by policy name (``base``, ``sft``, ``ppo-ptx-r1``, ...; ``final``
    is the pipeline's alias of the last round), comparison title (``final vs sft``) or RM round (``r1``)."""

    run: str | None = None
    created: str | None = None  # optional: an ISO time, shown in the report's header
    final: str | None = None  # optional: the policy the report calls final (else worked out from the names)
    policies: dict[str, str] = field(default_factory=dict)  # name -> folder
    evals: dict[str, PolicyEval] = field(default_factory=dict)
    win_rates: dict[str, dict[str, WinRate]] = field(default_factory=dict)  # comparison -> family|bucket|overall -> rate
    # comparison -> aspect (helpful, truthful, harmless, form, constraint) -> win rate restricted to it
    aspect_win_rates: dict[str, dict[str, WinRate]] = field(default_factory=dict)
    elo: dict[str, float] = field(default_factory=dict)
    elo_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% bootstrap (lo, hi)
    curves: dict[str, list[CurvePoint]] = field(default_factory=dict)  # policy name or "bon" -> points
    rm: dict[str, RMRound] = field(default_factory=dict)
    headroom: Headroom | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds_total: float | None = None
    training: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # PPO log -> tracking's rows
    # issue #14: who judged (eval.judges as given: world, app, openai:URL[:MODEL]; empty in older files, whose
    # judge was the world's), each AI judge's results by its spec, people's, and the RM folder behind rm_score
    judged_by: list[str] = field(default_factory=list)
    judges: dict[str, JudgeResults] = field(default_factory=dict)
    human: HumanEval | None = None
    rm_scored_by: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> RunResults:
        d = _obj(d)
        elo, intervals = _elo(d.get("elo"), d.get("elo_intervals"))
        head = d.get("headroom")
        return cls(
            run=None if d.get("run") is None else str(d["run"]), created=_str(d.get("created")),
            final=_str(d.get("final")),
            policies={str(k): str(v) for k, v in _obj(d.get("policies")).items()},
            evals={str(k): PolicyEval.from_dict(v) for k, v in _obj(d.get("evals")).items()},
            win_rates=_win_rates(d.get("win_rates")), aspect_win_rates=_win_rates(d.get("aspect_win_rates")),
            elo=elo, elo_intervals=intervals,
            curves={str(k): [CurvePoint.from_dict(p) for p in _objs(v)] for k, v in _obj(d.get("curves")).items()},
            rm={str(k): RMRound.from_dict(v) for k, v in _obj(d.get("rm")).items()},
            headroom=Headroom.from_dict(head) if isinstance(head, dict) and head else None,
            stage_seconds={str(k): f for k, v in _obj(d.get("stage_seconds")).items() if (f := _float(v)) is not None},
            seconds_total=_float(d.get("seconds_total")),
            training={str(k): [dict(r) for r in _objs(v)] for k, v in _obj(d.get("training")).items()},
            judged_by=_strs(d.get("judged_by")),
            judges={str(k): JudgeResults.from_dict(v) for k, v in _obj(d.get("judges")).items()},
            human=_human(d.get("human")), rm_scored_by=_str(d.get("rm_scored_by")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``results.json``."""
        out = _put({}, run=self.run, created=self.created, final=self.final)
        out.update(policies=dict(self.policies), evals={k: e.to_dict() for k, e in self.evals.items()},
                   win_rates=_win_rates_dict(self.win_rates))
        if self.aspect_win_rates:  # left out when empty: older results.json files read back as they were
            out["aspect_win_rates"] = _win_rates_dict(self.aspect_win_rates)
        out.update(elo=dict(self.elo), elo_intervals={k: list(iv) for k, iv in self.elo_intervals.items()},
                   curves={k: [p.to_dict() for p in pts] for k, pts in self.curves.items()},
                   rm={k: r.to_dict() for k, r in self.rm.items()})
        if self.headroom is not None:
            out["headroom"] = self.headroom.to_dict()
        out["stage_seconds"] = dict(self.stage_seconds)
        _put(out, seconds_total=self.seconds_total)
        out["training"] = {k: [dict(r) for r in rows] for k, rows in self.training.items()}
        # issue #14's parts, each left out when empty: older results.json files read back as they were
        if self.judged_by:
            out["judged_by"] = list(self.judged_by)
        if self.judges:
            out["judges"] = {k: j.to_dict() for k, j in self.judges.items()}
        if self.human is not None:
            out["human"] = self.human.to_dict()
        return _put(out, rm_scored_by=self.rm_scored_by)


def _win_rates(x: Any) -> dict[str, dict[str, WinRate]]:
    """``{comparison: {family|aspect: WinRate}}`` from its JSON object."""
    return {str(c): {str(f): WinRate.from_dict(w) for f, w in _obj(rates).items()} for c, rates in _obj(x).items()}


def _win_rates_dict(x: dict[str, dict[str, WinRate]]) -> dict[str, dict[str, Any]]:
    return {c: {f: w.to_dict() for f, w in rates.items()} for c, rates in x.items()}


def _elo(ratings: Any, intervals: Any) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Ratings and intervals from ``elo`` ({name: rating}, or in older files {name: {rating, lo, hi}}) and
    ``elo_intervals`` ({name: [lo, hi]}, which wins over an inline interval)."""
    elo: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for name, iv in _obj(intervals).items():
        if isinstance(iv, (list, tuple)) and len(iv) == 2 and (lo := _float(iv[0])) is not None \
                and (hi := _float(iv[1])) is not None:
            out[str(name)] = (lo, hi)
    for name, v in _obj(ratings).items():
        d = v if isinstance(v, dict) else {"rating": v}
        if (rating := _float(d.get("rating"))) is None:
            continue
        elo[str(name)] = rating
        lo, hi = _float(d.get("lo")), _float(d.get("hi"))
        if str(name) not in out and lo is not None and hi is not None:
            out[str(name)] = (lo, hi)
    return elo, out
