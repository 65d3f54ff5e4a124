"""Elo ratings from pairwise gold-judge matches: a Bradley-Terry maximum-likelihood fit in Elo points.

Bradley-Terry says P(i beats j) = sigmoid(r_i - r_j); we fit r by Newton's method on the (concave)
log-likelihood with ties counted as half a win each way, plus a small L2 prior so an undefeated player
gets a large but finite rating. Natural-log units become Elo points by 400 / ln 10, so a 3:1 record is
400 * log10(3) ~ 191 points. Unlike sequential Elo updates the fit does not depend on match order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log unit of odds

Match = tuple[str, str, float]


def _index(matches: Sequence[Match]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    players = sorted({m[0] for m in matches} | {m[1] for m in matches})
    pos = {p: i for i, p in enumerate(players)}
    a = np.array([pos[m[0]] for m in matches], dtype=np.int64)
    b = np.array([pos[m[1]] for m in matches], dtype=np.int64)
    o = np.array([float(m[2]) for m in matches], dtype=np.float64)
    if o.size and (o.min() < 0.0 or o.max() > 1.0):
        raise ValueError("match outcomes must lie in [0, 1] (1: first player wins, 0.5: tie)")
    return players, a, b, o


def _wins(k: int, a: np.ndarray, b: np.ndarray, o: np.ndarray) -> np.ndarray:
    """W[i, j] = (fractional) wins of i over j; the games between i and j are W + W.T. (k, k)"""
    w = np.zeros((k, k))
    np.add.at(w, (a, b), o)
    np.add.at(w, (b, a), 1.0 - o)
    return w


def _loglik(r: np.ndarray, w: np.ndarray, prior: float) -> float:
    d = r[:, None] - r[None, :]
    return float(-(w * np.logaddexp(0.0, -d)).sum() - 0.5 * prior * (r @ r))


def fit_bradley_terry(w: np.ndarray, prior: float = 0.01, iters: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Strengths r (natural-log units, mean 0 when ``prior`` is 0) maximising the BT likelihood of ``w``.

    ``prior`` is the precision of a N(0, 1/prior) prior on each r; with ``prior=0`` a player who never
    lost has no finite maximum (the fit then stops at ``iters``).
    """
    k = w.shape[0]
    n = w + w.T
    r = np.zeros(k)
    ll = _loglik(r, w, prior)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))  # P(i beats j)
        grad = (w - n * p).sum(1) - prior * r
        c = n * p * (1.0 - p)
        neg_hess = np.diag(c.sum(1) + prior) - c  # graph Laplacian of the games, plus the prior
        step = np.linalg.lstsq(neg_hess, grad, rcond=None)[0]  # min-norm: the prior-free fit is shift-free
        t = 1.0
        while t > 1e-8:  # damped Newton: the likelihood is concave, so halving finds an ascent step
            new = r + t * step
            new_ll = _loglik(new, w, prior)
            if new_ll >= ll - 1e-12:
                break
            t /= 2
        r, gain, ll = new, new_ll - ll, new_ll
        if gain < tol and np.abs(t * step).max() < 1e-9:
            break
    return r - r.mean() if prior == 0 else r


def _to_elo(players: list[str], r: np.ndarray, anchor: str | None, anchor_rating: float) -> dict[str, float]:
    elo = r * ELO_SCALE
    if anchor is None:
        elo = elo - elo.mean() + anchor_rating
    else:
        if anchor not in players:
            raise ValueError(f"anchor {anchor!r} played no matches (players: {', '.join(players)})")
        elo = elo - elo[players.index(anchor)] + anchor_rating
    return {p: float(x) for p, x in zip(players, elo, strict=True)}


def elo_ratings(matches: Sequence[Match], anchor: str | None = None, anchor_rating: float = 1000.0,
                prior: float = 0.01) -> dict[str, float]:
    """Elo ratings of every player in ``matches`` ((a, b, outcome) with outcome 1 if ``a`` wins, 0.5 a tie).

    ``anchor`` gets ``anchor_rating`` exactly; without one the mean rating is ``anchor_rating``.
    """
    if not matches:
        return {}
    players, a, b, o = _index(matches)
    r = fit_bradley_terry(_wins(len(players), a, b, o), prior)
    return _to_elo(players, r, anchor, anchor_rating)


def elo_intervals(matches: Sequence[Match], n_boot: int = 200, seed: int = 0, anchor: str | None = None,
                  anchor_rating: float = 1000.0, prior: float = 0.01) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap 95% intervals of :func:`elo_ratings`, resampling matches with replacement.

    Matches on the same prompt are treated as independent, so the intervals are somewhat optimistic.
    With an ``anchor`` its interval is a point and the others are relative to it.
    """
    if not matches:
        return {}
    players, a, b, o = _index(matches)
    k, m = len(players), len(matches)
    rng = np.random.default_rng(seed)
    draws: list[list[float]] = [[] for _ in players]
    for _ in range(n_boot):
        idx = rng.integers(0, m, size=m)
        present = np.zeros(k, dtype=bool)
        present[a[idx]] = present[b[idx]] = True
        if anchor is not None and anchor in players and not present[players.index(anchor)]:
            continue
        r = fit_bradley_terry(_wins(k, a[idx], b[idx], o[idx]), prior)
        # players absent from this resample keep r = 0 from the prior; leave them out of their interval
        sub = [p for p, keep in zip(players, present, strict=True) if keep]
        elo = _to_elo(sub, r[present], anchor, anchor_rating)
        for i, p in enumerate(players):
            if present[i]:
                draws[i].append(elo[p])
    return {p: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))) if d else (math.nan, math.nan)
            for p, d in zip(players, draws, strict=True)}
