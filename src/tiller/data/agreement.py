"""Inter-labeler agreement on rankings: pure functions, no database.

InstructGPT (Ouyang et al. 2022, sec. 5.1 / appendix B) reports that labelers agree with each other on
72.6 +- 1.5% of comparisons without saying how ties count, so there are two measures here, under two names:

* **pairwise agreement** (ties excluded): over every item labeled by two labelers and every pair of its
  answers, the fraction that both labelers ordered the same way. A pair that *either* labeler put in a tie
  is left out (a tie says "no preference", which neither agrees nor disagrees with an order, and the
  reward model does not train on tied pairs either). The web app's batches and the reward stage's
  ``data/labeler_agreement`` report this one, next to RM accuracy, which leaves ties out too.
* **half-credit agreement** (ties counted): every pair counts; 1 when both order it the same way or both
  tie it, 1/2 when exactly one ties it, 0 when they order it oppositely. The simulated world reports this
  one (``labeler_agreement_half_credit`` in its manifest), between two labelers and with the gold judge.
* **Kendall's tau-b** between the two rankings of one item, averaged over all (item, labeler pair). tau-b
  corrects for ties: ``(nc - nd) / sqrt((n0 - n1) (n0 - n2))`` with ``n0 = K(K-1)/2`` and ``n1``, ``n2`` the
  pairs tied in each ranking. Undefined (skipped) when either ranking ties everything.

A ranking is a list of groups of answer indices, best first: ``[[2], [0, 1]]`` means 2 > 0 = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

Ranking = Sequence[Sequence[int]]


def group_of(ranking: Ranking) -> dict[int, int]:
    """Answer index -> its group number (0 = best)."""
    return {i: g for g, group in enumerate(ranking) for i in group}


def pair_counts(a: Ranking, b: Ranking) -> tuple[int, int, int, int, int]:
    """(concordant, discordant, tied only in a, tied only in b, tied in both) over the shared answers."""
    ga, gb = group_of(a), group_of(b)
    nc = nd = ta = tb = tboth = 0
    for i, j in combinations(sorted(set(ga) & set(gb)), 2):
        da, db = ga[i] - ga[j], gb[i] - gb[j]
        if da == 0 and db == 0:
            tboth += 1
        elif da == 0:
            ta += 1
        elif db == 0:
            tb += 1
        elif (da > 0) == (db > 0):
            nc += 1
        else:
            nd += 1
    return nc, nd, ta, tb, tboth


def pairwise_agreement(a: Ranking, b: Ranking) -> tuple[int, int]:
    """(pairs ordered the same way, pairs ordered by both labelers); tied pairs are excluded."""
    nc, nd, *_ = pair_counts(a, b)
    return nc, nc + nd


def half_credit_agreement(a: Ranking, b: Ranking) -> tuple[float, int]:
    """(credit, pairs): 1 per pair ordered the same way or tied in both, 1/2 per pair tied in one only,
    over every pair of the shared answers."""
    nc, nd, ta, tb, tboth = pair_counts(a, b)
    return nc + tboth + 0.5 * (ta + tb), nc + nd + ta + tb + tboth


def kendall_tau_b(a: Ranking, b: Ranking) -> float | None:
    """Kendall's tau-b of two rankings of the same answers; None if either is all one tie."""
    nc, nd, ta, tb, tboth = pair_counts(a, b)
    n0 = nc + nd + ta + tb + tboth
    n1, n2 = ta + tboth, tb + tboth  # pairs tied in a, pairs tied in b
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return None if denom == 0 else (nc - nd) / denom


@dataclass
class AgreementReport:
    agree: int = 0  # response pairs ordered the same way by two labelers
    compared: int = 0  # response pairs ordered (not tied) by both
    tau_b_sum: float = 0.0
    tau_b_n: int = 0  # (item, labeler pair) with a defined tau-b
    per_labeler: dict[str, list[int]] = field(default_factory=dict)  # name -> [agree, compared]

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    @property
    def tau_b(self) -> float | None:
        return self.tau_b_sum / self.tau_b_n if self.tau_b_n else None

    def labeler_agreement(self, name: str) -> float | None:
        agree, compared = self.per_labeler.get(name, (0, 0))
        return agree / compared if compared else None


def batch_agreement(rankings: Mapping[str, Mapping[str, Ranking]]) -> AgreementReport:
    """Agreement over a batch: ``rankings[item_id][labeler] = ranking``; items with one labeler add nothing."""
    report = AgreementReport()
    for by_labeler in rankings.values():
        for (na, ra), (nb, rb) in combinations(sorted(by_labeler.items()), 2):
            agree, compared = pairwise_agreement(ra, rb)
            report.agree += agree
            report.compared += compared
            for name in (na, nb):
                counts = report.per_labeler.setdefault(name, [0, 0])
                counts[0] += agree
                counts[1] += compared
            tau = kendall_tau_b(ra, rb)
            if tau is not None:
                report.tau_b_sum += tau
                report.tau_b_n += 1
    return report
