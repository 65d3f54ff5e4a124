"""The RLHF maths as pure functions: tensors in, tensors out; no I/O, no model code.

Shapes: B batch, T time, K responses per prompt, V vocab. Masks are float or bool, 1 = real token.
Every ``stats`` dict holds detached 0-dim tensors (``float(v)`` to log); trainers add a namespace
such as ``loss/`` or ``objective/``. References: InstructGPT (Ouyang et al. 2022), PPO (Schulman
et al. 2017), GAE (Schulman et al. 2016), openai/lm-human-preferences, huggingface/trl.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8


# --- masked statistics (as in lm-human-preferences / trl) -------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is set; an empty mask gives 0, not NaN."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(_EPS)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(_EPS)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over masked entries (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = float(mask.to(x.dtype).sum())
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 masked entries, got {n:g}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise to unit variance (and zero mean if ``shift_mean``) using masked entries only.

    Padding must not move the statistics; masked entries are 0 afterwards so they stay inert.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + _EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# --- token log-probabilities ------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``labels``: (B,T,V), (B,T) -> (B,T).

    Never materialises the (B,T,V) log-softmax: logsumexp then gather. Low-precision logits are done
    row by row in float32, where the full upcast would be the memory peak.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_labels in zip(logits, labels, strict=True):  # (T,V), (T,)
        row_logp = F.log_softmax(row_logits.float(), dim=-1)
        rows.append(row_logp.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last dim: (B,T,V) -> (B,T), in nats."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token per row, (B,T) -> (B,) long; left, right or no padding.

    argmax returns the first maximum, so on the flipped mask it finds the last 1. An all-zero row
    gives T-1; callers that can see such rows must check ``mask.sum(1) > 0`` themselves.
    """
    real = (attention_mask > 0).long()
    t = real.shape[1]
    return (t - 1 - real.flip(1).argmax(dim=1)).long()


# --- reward model: K-wise ranking loss (InstructGPT eq. 1) ------------------------------------------


def ranking_loss(scores: Tensor, ranks: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """InstructGPT eq. 1 over all C(K_b,2) pairs of each prompt, generalised to ties and padding.

    scores (B,K) rewards, ranks (B,K) long (0 = best; equal ranks are a tie and form no pair), valid
    (B,K) bool. loss_b = -1/C(K_b,2) * sum_{rank_i < rank_j} log sigmoid(s_i - s_j). The divisor stays
    C(K_b,2) even when ties remove pairs: each labelled prompt weighs the same whatever the ties, as
    in the paper, where all pairs of a prompt form one batch element (Sec. 3.5). Records with
    K_b < 2 are left out of the mean over records; a record with K_b >= 2 and only ties adds 0.
    """
    valid = valid.bool()
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    pairs = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & both  # (B,K,K): i ranked above j
    return preference_loss(scores, pairs.to(scores.dtype), valid)


def preference_loss(scores: Tensor, prefs: Tensor, valid: Tensor,
                    weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``ranking_loss`` with soft pair targets: the mean of several labelers' ranking losses in one pass.

    prefs (B,K,K): prefs[b,i,j] = share of the item's labelers who ranked i above j (0 where nobody did,
    and on padding). loss_b = -1/C(K_b,2) * sum_{i,j} prefs_ij log sigmoid(s_i - s_j), which is linear in
    prefs, so it equals the mean of ``ranking_loss`` over the item's L rankings exactly, while every
    response goes through the model once instead of L times. With one ranking, prefs is 0/1 and this is
    ``ranking_loss``. Stats weigh each pair by its share of labelers (accuracy against the labels).

    ``weights`` (B,), e.g. each item's number of rankings L_b, make the batch loss the weighted mean
    sum_b w_b loss_b / sum_b w_b: with w_b = L_b a batch of merged items has exactly the loss of one element
    per ranking, so an answer set ranked by four labelers counts four times, as four rankings would.
    """
    valid = valid.bool()
    s = scores.masked_fill(~valid, 0.0)  # padding may hold NaN/inf; keep it out of the graph
    diff = s.unsqueeze(2) - s.unsqueeze(1)  # (B,K,K): s_i - s_j
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    w = torch.where(both, prefs.to(s.dtype), 0.0)
    k_b = valid.sum(1).to(s.dtype)
    n_comb = k_b * (k_b - 1) / 2
    per_record = -(w * F.logsigmoid(diff)).sum((1, 2)) / n_comb.clamp_min(1.0)
    keep = k_b >= 2
    w_b = torch.ones_like(per_record) if weights is None else weights.to(per_record)
    if bool(keep.any()):
        loss = (per_record * w_b)[keep].sum() / w_b[keep].sum().clamp_min(_EPS)
    else:
        loss = s.sum() * 0.0

    with torch.no_grad():
        n_pairs = w.sum()
        wins = (diff > 0).to(s.dtype) + 0.5 * (diff == 0).to(s.dtype)
        stats = {
            "accuracy": (wins * w).sum() / n_pairs.clamp_min(1.0),
            "n_pairs": n_pairs,
            "margin": (diff * w).sum() / n_pairs.clamp_min(1.0),
        }
    return loss, stats


def pair_preferences(rankings: list[list[list[int]]], k: int) -> list[list[float]]:
    """K x K matrix: share of ``rankings`` (groups, best first) that put response i above response j.

    ``[[[0], [1, 2]], [[1], [0], [2]]]`` -> row 0 = [0, .5, 1]: both put 0 above 2, one put 0 above 1.
    A tie adds to neither direction, as in ``ranking_loss``."""
    prefs = [[0.0] * k for _ in range(k)]
    for groups in rankings:
        r = ranks_from_groups(groups, k)
        for i in range(k):
            for j in range(k):
                if r[i] < r[j]:
                    prefs[i][j] += 1.0 / len(rankings)
    return prefs


def ranks_from_groups(groups: list[list[int]], k: int) -> list[int]:
    """``[[2],[0,1],[3]]`` (best group first; a group is a tie) -> ranks ``[1,1,0,2]``.

    Every index in 0..k-1 must appear exactly once, so a labelling mistake fails here, loudly.
    """
    ranks: list[int | None] = [None] * k
    for rank, group in enumerate(groups):
        if not group:
            raise ValueError(f"group {rank} is empty")
        for i in group:
            if not 0 <= i < k:
                raise ValueError(f"response index {i} out of range for k={k}")
            if ranks[i] is not None:
                raise ValueError(f"response index {i} appears more than once")
            ranks[i] = rank
    missing = [i for i, r in enumerate(ranks) if r is None]
    if missing:
        raise ValueError(f"responses {missing} are not ranked")
    return [r for r in ranks if r is not None]


# --- DPO: a policy trained on the rankings directly (Rafailov et al. 2023) ---------------------------


def dpo_rewards(logprobs: Tensor, ref_logprobs: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward of each answer, beta * (log pi(y|x) - log pi_ref(y|x)): (B,K), (B,K) -> (B,K).

    Inputs are *sequence* log-probabilities (summed over the answer's tokens). Under the KL-constrained RL
    objective with coefficient beta, the optimal policy's reward is exactly this, up to a per-prompt constant
    that cancels in every comparison of answers to one prompt (Rafailov et al. 2023, eq. 5)."""
    return beta * (logprobs - ref_logprobs)


def _reward_stats(rewards: Tensor, prefs: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Implicit-reward statistics over the labelled pairs, each weighed by its share of labelers: accuracy (a
    tie counts half), mean reward of the preferred and of the other answer, and their margin."""
    valid = valid.bool()
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    w = torch.where(both, prefs.to(rewards.dtype), 0.0).detach()
    r = rewards.detach().masked_fill(~valid, 0.0)
    diff = r.unsqueeze(2) - r.unsqueeze(1)
    n = w.sum().clamp_min(_EPS)
    wins = (diff > 0).to(r.dtype) + 0.5 * (diff == 0).to(r.dtype)
    chosen, rejected = (w * r.unsqueeze(2)).sum() / n, (w * r.unsqueeze(1)).sum() / n
    return {"accuracy": (wins * w).sum() / n, "chosen": chosen, "rejected": rejected,
            "margin": chosen - rejected, "n_pairs": w.sum()}


def dpo_loss(logprobs: Tensor, ref_logprobs: Tensor, prefs: Tensor, valid: Tensor, beta: float,
             weights: Tensor | None = None, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO over every labelled pair of a K-wise ranking: :func:`preference_loss` on the implicit rewards.

    logprobs, ref_logprobs (B,K) sequence log-probs; prefs (B,K,K) the share of the item's labelers ranking i
    above j (:func:`pair_preferences`; ties form no pair); valid (B,K). For K=2 and one labeler this is DPO's
    -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))). For K > 2 it is the RM's convention (InstructGPT
    eq. 1): the sum over pairs divided by C(K_b,2) whatever the ties, so a ranking weighs one element; with
    ``weights`` = each item's number of rankings, a batch of merged items has exactly the loss of one element
    per ranking (the loss is linear in prefs). ``label_smoothing`` eps is conservative DPO (cDPO, Mitchell
    2023): each label is taken as flipped with probability eps, i.e. targets (1-eps) prefs + eps prefs^T.
    stats (on the unsmoothed labels): ``accuracy``, ``chosen``, ``rejected``, ``margin``, ``n_pairs``."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    rewards = dpo_rewards(logprobs, ref_logprobs, beta)
    targets = (1 - label_smoothing) * prefs + label_smoothing * prefs.transpose(1, 2)
    loss, _ = preference_loss(rewards, targets, valid, weights)
    return loss, _reward_stats(rewards, prefs, valid)


def plackett_luce_loss(logprobs: Tensor, ref_logprobs: Tensor, ranks: Tensor, valid: Tensor, beta: float,
                       weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO's list loss (Rafailov et al. 2023, appendix A.3): the negative Plackett-Luce log-likelihood of a
    ranking under the implicit rewards r = beta * (pi - ref), one ranking per row.

    logprobs, ref_logprobs (N,K); ranks (N,K) long, 0 = best, equal ranks a tie; valid (N,K). loss_n =
    -sum_i [r_i - logsumexp_{j in D_i} r_j], D_i = {i} and every answer ranked below i. Ties are unordered
    within their group: each tied answer is picked ahead of all lower-ranked ones and never compared with its
    peers (in neither numerator nor denominator), so ties add nothing, as in :func:`dpo_loss`; the last group's
    terms are 0, and for K=2 this is DPO's pair loss. No division by K: the log-likelihood of one ranking.
    The batch loss is the (``weights``-)weighted mean over rows with K_n >= 2. stats as :func:`dpo_loss`'s."""
    valid = valid.bool()
    rewards = dpo_rewards(logprobs, ref_logprobs, beta).masked_fill(~valid, 0.0)
    eye = torch.eye(ranks.shape[1], dtype=torch.bool, device=ranks.device)
    below = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & valid.unsqueeze(1)  # (N,K,K): j ranked below i
    pool = (below | eye) & valid.unsqueeze(2)
    lse = torch.logsumexp(rewards.unsqueeze(1).expand_as(pool).masked_fill(~pool, float("-inf")), dim=2)
    terms = torch.where(valid, rewards - torch.where(valid, lse, 0.0), 0.0)
    per_row = -terms.sum(1)
    keep = valid.sum(1) >= 2
    w_n = torch.ones_like(per_row) if weights is None else weights.to(per_row)
    if bool(keep.any()):
        loss = (per_row * w_n)[keep].sum() / w_n[keep].sum().clamp_min(_EPS)
    else:
        loss = rewards.sum() * 0.0
    with torch.no_grad():
        stats = _reward_stats(rewards, below.to(rewards.dtype), valid)
    return loss, stats


# --- PPO rewards and advantages ---------------------------------------------------------------------


def kl_penalized_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token rewards -kl_coef * KL, plus the RM score on the last response token (InstructGPT eq. 2).

    scores (B,), the rest (B,T) over response tokens only. Returns (rewards, kl), both (B,T) and 0 on
    padding. A row with no real token gets no score anywhere.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    has_tokens = mask.sum(1) > 0
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), 0.0)  # (B,)
    last = last_token_index(mask).unsqueeze(1)  # (B,1)
    rewards = rewards + torch.zeros_like(rewards).scatter(1, last, bonus.unsqueeze(1))
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over response tokens: (B,T) each.

    A reverse scan over T, batched over B. Masked positions are skipped: they carry the running
    estimate through untouched and get 0 advantage, and the value after the last real token is 0
    (the episode ends). Returns (advantages, returns = advantages + values), 0 on padding; whiten
    advantages afterwards with :func:`masked_whiten` if wanted.
    """
    real = mask > 0
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(real[:, t], candidate, running)
        next_value = torch.where(real[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(real[:, t], running, 0.0)
    returns = torch.where(real, advantages + values, 0.0)
    return advantages, returns


def gae_reference(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """:func:`gae` as the plainest loop over Python floats, one row and one step at a time (for tests)."""
    b, t_len = rewards.shape
    adv = [[0.0] * t_len for _ in range(b)]
    ret = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        steps = [t for t in range(t_len) if float(mask[i, t]) > 0]
        running = 0.0
        for n in reversed(range(len(steps))):
            t = steps[n]
            next_value = float(values[i, steps[n + 1]]) if n + 1 < len(steps) else 0.0
            delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
            running = delta + gamma * lam * running
            adv[i][t] = running
            ret[i][t] = running + float(values[i, t])
    return torch.tensor(adv, dtype=values.dtype), torch.tensor(ret, dtype=values.dtype)


# --- PPO losses -------------------------------------------------------------------------------------


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (PPO eq. 7), negated for minimisation, masked mean over tokens; all (B,T).

    stats: ``clipfrac``; ``approx_kl`` = k3 (ratio-1) - logratio (unbiased, always >= 0);
    ``policy_kl_k1`` = -logratio; ``policy_kl_k2`` = 0.5 * logratio^2 (trl's ``approxkl``); ``ratio``.
    """
    advantages = advantages.detach()
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), mask),
            "approx_kl": masked_mean((ratio - 1) - logratio, mask),
            "policy_kl_k1": masked_mean(-logratio, mask),
            "policy_kl_k2": masked_mean(0.5 * logratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 * masked mean of max(unclipped, clipped) squared error, as in lm-human-preferences; (B,T).

    The value may move at most ``cliprange_value`` from ``old_values`` before its error stops
    shrinking. stats: ``clipfrac`` (clipped term chosen), ``error`` (mean squared error, unclipped).
    """
    returns = returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask),
            "error": masked_mean(vf_losses, mask),
        }
    return loss, stats


# --- KL controllers (lm-human-preferences, train_policy.py) -----------------------------------------


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Moves the KL coefficient towards a target KL (Ziegler et al. 2019, Sec. 2.2).

    error = clip(current/target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


# --- critic-free baselines: RLOO, GRPO, REINFORCE ---------------------------------------------------


def _groups(scores: Tensor, k: int) -> Tensor:
    if k < 2 or scores.dim() != 1 or scores.shape[0] % k:
        raise ValueError(
            f"need scores of shape (B,) with B a multiple of k >= 2; got {tuple(scores.shape)}, k={k}"
        )
    return scores.view(-1, k)  # (B/k, k): consecutive samples of one prompt


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    """Each score minus the mean of the other k-1 in its group (Ahmadian et al. 2024): (B,) -> (B,)."""
    s = _groups(scores, k)
    baseline = (s.sum(1, keepdim=True) - s) / (k - 1)
    return (s - baseline).reshape(-1)


def grpo_advantages(scores: Tensor, k: int, eps: float = 1e-4) -> Tensor:
    """(s - group mean) / (group std + eps) (Shao et al. 2024); std is unbiased, as in trl: (B,) -> (B,)."""
    s = _groups(scores, k)
    return ((s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)).reshape(-1)


def kl_to_go(kl: Tensor, mask: Tensor) -> Tensor:
    """Per-token KL summed from each token to the end of its answer: (B,T) -> (B,T), 0 on padding.

    With gamma 1, the return of the per-token penalty ``-beta * kl_t`` from token t on is ``-beta * kl_to_go``,
    so a critic-free advantage ``A_seq - beta * kl_to_go`` carries the same KL-penalised objective as PPO's
    per-token rewards, while the group statistics (RLOO's baseline, GRPO's std) see the score alone."""
    kl = kl * mask.to(kl.dtype)
    return kl.flip(1).cumsum(1).flip(1) * mask.to(kl.dtype)


class MovingBaseline:
    """REINFORCE's baseline: an exponential moving average of the batch mean score (Williams 1992).

    ``advantages`` subtracts the baseline *before* this batch is folded in (the baseline must not depend on
    the sample it centres); the very first batch is centred on its own mean, since there is no history."""

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"baseline decay must be in [0, 1), got {decay}")
        self.decay, self.value, self.initialised = float(decay), 0.0, False

    def advantages(self, scores: Tensor) -> Tensor:
        mean = float(scores.detach().float().mean())
        if not self.initialised:
            self.value, self.initialised = mean, True
        adv = scores - self.value
        self.value = self.decay * self.value + (1.0 - self.decay) * mean
        return adv

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "value": self.value, "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.value = float(state["decay"]), float(state["value"])
        self.initialised = bool(state["initialised"])


# --- SFT / pretraining mix (the "ptx" of PPO-ptx) ---------------------------------------------------


def masked_lm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token NLL: logits (B,T,V) at t predict labels (B,T) at t+1; label -100 is ignored.

    ``reduction="sum"`` with :func:`token_count` lets callers normalise across accumulated
    micro-batches. No target tokens gives 0 (with a graph), not NaN.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    if reduction == "sum":
        return total
    return total / max(token_count(labels), 1)


def token_count(labels: Tensor) -> int:
    """Number of target tokens :func:`masked_lm_loss` averages over (shifted, -100 excluded)."""
    return int((labels[:, 1:] != -100).sum())
