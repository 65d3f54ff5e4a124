"""Where one RL iteration's CPU time goes, and what a leaner rollout would save (what-if timings).

    python bench/ppo_variants.py --work /tmp/benchppo      # reuses the model of bench/ppo_throughput.py

Times, on one rollout batch of ``--prompts`` x ``--group`` sequences and ``--new-tokens`` new tokens:

- ``tiller.rollout.generate`` as the PPO stage calls it (Hugging Face ``generate``, dynamic KV cache);
- the same with ``cache_implementation="static"``;
- a plain decode loop (prefill, then one cached forward and one ``torch.multinomial`` per token) that
  samples from the same distribution: what ``generate`` costs beyond the model itself;
- the pieces of the update phase: a no-grad policy forward over the batch (the old log-probabilities,
  which the sampling step's logits could supply), the reference forward, and one forward+backward of a
  minibatch.

CPU seconds, best of ``--repeats``, one torch thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import table, tiny_base_model, tiny_world  # noqa: E402
from rm_throughput import cpu_seconds  # noqa: E402

from tiller.batching import batch, encode_prompt  # noqa: E402
from tiller.models import load_policy, position_ids_from_mask, stop_token_ids  # noqa: E402
from tiller.rl import build_sequences, policy_forward  # noqa: E402
from tiller.rollout import generate  # noqa: E402


@torch.no_grad()
def plain_decode(model, tok, prompts: list, n: int, new_tokens: int, temperature: float = 1.0):
    """Sample ``n`` answers per prompt with a hand-written cached loop; returns (B, new_tokens) ids."""
    model.eval()
    flat = [ids for ids in (encode_prompt(tok, p) for p in prompts) for _ in range(n)]
    enc = batch(flat, tok.pad_token_id, side="left")
    mask = enc["attention_mask"]
    out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=True)
    stops = torch.tensor(stop_token_ids(tok))
    done = torch.zeros(len(flat), dtype=torch.bool)
    tokens = []
    for _ in range(new_tokens):
        probs = torch.softmax(out.logits[:, -1].float() / temperature, -1)
        nxt = torch.multinomial(probs, 1).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        tokens.append(nxt)
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position_ids_from_mask(mask)[:, -1:],
                    past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(tokens, 1)


def best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = cpu_seconds()
        fn()
        best = min(best, cpu_seconds() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-ppov-"))
    world = tiny_world(work)
    model_dir = a.model or tiny_base_model(work, work / "world")
    policy, tok = load_policy(model_dir)
    ref, _ = load_policy(model_dir)
    prompts = [p["prompt"] for p in world.prompts if p["split"] == "train"][: a.prompts]
    n_seq = a.prompts * a.group

    def hf(**extra):
        return lambda: generate(policy, tok, prompts, n=a.group, max_new_tokens=a.new_tokens, batch_size=n_seq,
                                **extra)

    torch.manual_seed(0)
    ro = generate(policy, tok, prompts, n=a.group, max_new_tokens=a.new_tokens, batch_size=n_seq)  # warm-up
    b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id)
    mb = b.select(torch.arange(a.minibatch))

    def update_step():
        policy.train()
        lp, _ = policy_forward(policy, mb, 1.0)
        (lp * mb.mask).sum().backward()
        policy.zero_grad(set_to_none=True)

    rows = []
    timings = {
        "generate (tiller.rollout, dynamic cache)": hf(),
        "plain cached decode loop": lambda: plain_decode(policy, tok, prompts, a.group, a.new_tokens),
        "no-grad policy forward, whole batch (old logprobs)": lambda: torch.no_grad()(policy_forward)(policy, b, 1.0),
        "no-grad reference forward, whole batch": lambda: torch.no_grad()(policy_forward)(ref, b, 1.0),
        f"policy forward+backward, one minibatch of {a.minibatch}": update_step,
    }
    try:  # static caches need a model class that supports them; report, don't fail, if this one does not
        policy.generation_config.cache_implementation = "static"
        hf()()  # warm-up (allocates the cache)
        timings["generate, static cache"] = hf()
    except Exception as e:  # noqa: BLE001
        print(f"static cache not usable here: {type(e).__name__}: {str(e)[:120]}")
    for name, fn in timings.items():
        policy.generation_config.cache_implementation = "static" if "static" in name else None
        rows.append([name, round(best_cpu(fn, a.repeats), 3)])
        print(rows[-1], flush=True)
    print(f"\n{a.prompts} prompts x {a.group} = {n_seq} sequences, {a.new_tokens} new tokens (mean generated "
          f"{b.mask.sum(1).mean():.1f}), best of {a.repeats}, 1 thread\n")
    print(table(["piece", "CPU s"], rows))


if __name__ == "__main__":
    main()
