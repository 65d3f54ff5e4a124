"""One rank of tests/test_sharding.py: ``torchrun --nproc_per_node 2 sharding_worker.py OUT [DEVICE]``.

Each rank trains a tiny HF model sharded with ``tiller.sharding`` (its part of every global batch) and,
beside it in the same process, the same model unsharded on the whole global batch: the one-process run
the sharded one must equal. It writes what it measured to ``OUT/rank-{rank}.json``; the test asserts.
DEVICE is cpu (gloo, the default) or cuda (nccl).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    get_cosine_schedule_with_warmup,
)

from tiller import sharding

VOCAB, T, GLOBAL_BATCH, STEPS, SAVE_AT = 96, 16, 4, 10, 5
OUT = Path(sys.argv[1])
DEVICE = sys.argv[2] if len(sys.argv) > 2 else "cpu"


def config(kind: str):
    if kind == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, tie_word_embeddings=True,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0)


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights
    model = GPT2LMHeadModel(config(kind)) if kind == "gpt2" else LlamaForCausalLM(config(kind))
    return model.to(DEVICE)


def data(n: int = STEPS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (GLOBAL_BATCH, T), generator=g).to(DEVICE) for _ in range(n)]


def mine(ids: torch.Tensor) -> torch.Tensor:
    per = ids.shape[0] // dist.get_world_size()
    return ids[dist.get_rank() * per:(dist.get_rank() + 1) * per]


def mean_over_ranks(x: torch.Tensor) -> float:
    x = x.detach().float().clone()
    dist.all_reduce(x)
    return float(x) / dist.get_world_size()


class Trainer:
    """AdamW + cosine schedule + clipping, on the global batch (plain) or this rank's part (sharded)."""

    def __init__(self, model: nn.Module, sharded: bool, bf16: bool = False):
        self.model, self.sharded, self.bf16 = model, sharded, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        self.sched = get_cosine_schedule_with_warmup(self.opt, 2, STEPS)
        self.losses: list[float] = []
        self.norms: list[float] = []

    def step(self, ids: torch.Tensor) -> None:
        batch = mine(ids) if self.sharded else ids
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(input_ids=batch, labels=batch).loss
        loss.backward()
        norm = sharding.clip_grad_norm_(self.model, 0.5)  # small: clipping is active in every step
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(mean_over_ranks(loss) if self.sharded else float(loss.detach()))
        self.norms.append(float(norm))


def shard_sizes(model: nn.Module) -> dict[str, list[int]]:
    """name -> [numel held by this rank, numel of the whole parameter, its first dimension]"""
    return {n: [p.to_local().numel(), p.numel(), p.shape[0]] for n, p in model.named_parameters()}


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def check_training(kind: str, res: dict) -> None:
    """Sharded vs one process over STEPS steps; sharded checkpoint at SAVE_AT and a resumed run; the
    saved folder; sampling inside ``gathered``."""
    t0 = time.time()
    ref = Trainer(tiny(kind), sharded=False)
    model = tiny(kind)
    sharding.shard(model)
    run = Trainer(model, sharded=True)
    r: dict = {"shard_sizes": shard_sizes(model),
               "tied": model.lm_head.weight is model.get_input_embeddings().weight}
    ckpt = OUT / f"{kind}-ckpt"
    for i, ids in enumerate(data()):
        if i == SAVE_AT:
            sharding.save_state(ckpt, {"policy": model}, {"policy": run.opt}, extra={"sched": run.sched},
                                loop_state={"step": i})
            r["lr_at_save"] = run.sched.get_last_lr()[0]
        ref.step(ids)
        run.step(ids)
    r |= {"ref_losses": ref.losses, "losses": run.losses, "ref_norms": ref.norms, "norms": run.norms,
          "loss_diff": max_diff(ref.losses, run.losses), "norm_diff": max_diff(ref.norms, run.norms)}

    # the folder for plain transformers
    folder = OUT / f"{kind}-hf"
    sd = sharding.save_pretrained(model, folder)
    prompts = data(1)[0]
    plain = None
    if dist.get_rank() == 0:
        assert sd is not None and not any(k.startswith("hf.") for k in sd)
    # every rank loads the folder (after save_pretrained's barrier) to compare against
    plain = AutoModelForCausalLM.from_pretrained(folder).to(DEVICE).eval()
    r["loaded_tied"] = plain.lm_head.weight is plain.get_input_embeddings().weight
    with torch.no_grad():
        want = plain(input_ids=prompts).logits
        r["loaded_vs_ref"] = max_diff(want, ref.model(input_ids=prompts).logits)

    # sampling: rank r runs 3 + 2r single-token forwards and a generate of its own length, no hang
    model.eval()
    with torch.no_grad(), sharding.gathered(model):
        r["gathered_unsharded"] = not any(isinstance(p, DTensor) for p in model.parameters())
        n = 3 + 2 * dist.get_rank()
        diffs = [max_diff(model(input_ids=prompts[:, : k + 1]).logits, want[:, : k + 1]) for k in range(n)]
        gen = dict(input_ids=prompts[:, :4], attention_mask=torch.ones_like(prompts[:, :4]), max_new_tokens=n,
                   do_sample=False, pad_token_id=0)
        new, plain_new = model.generate(**gen), plain.generate(**gen)
    r |= {"gathered_forwards": n, "gathered_logit_diff": max(diffs), "generate_equal": bool((new == plain_new).all()),
          "generated_tokens": new.shape[1] - 4, "resharded": all(s[0] < s[1] for s in shard_sizes(model).values())}
    model.train()

    # resume: fresh weights and optimiser, restored from the checkpoint taken before step SAVE_AT
    again = tiny(kind)
    torch.nn.init.normal_(again.get_input_embeddings().weight)  # something the checkpoint must overwrite
    sharding.shard(again)
    resumed = Trainer(again, sharded=True)
    loop = sharding.load_state(ckpt, {"policy": again}, {"policy": resumed.opt}, extra={"sched": resumed.sched})
    r |= {"loop_state": loop, "lr_at_resume": resumed.sched.get_last_lr()[0]}
    for ids in data()[loop["step"]:]:
        resumed.step(ids)
    r |= {"resumed_losses": resumed.losses, "resume_diff": max_diff(resumed.losses, run.losses[SAVE_AT:]),
          "seconds": time.time() - t0}
    res[kind] = r


def check_autocast_checkpointing(res: dict) -> None:
    """Hugging Face gradient checkpointing on a sharded GPT-2, in fp32 and under bf16 autocast, against
    one process with the same settings."""
    kw = {"use_reentrant": False}  # as tiller.models.enable_gradient_checkpointing
    for bf16 in (False, True):
        t0 = time.time()
        ref, model = tiny("gpt2"), tiny("gpt2")
        for m in (ref, model):
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        sharding.shard(model)
        a, b = Trainer(ref, sharded=False, bf16=bf16), Trainer(model, sharded=True, bf16=bf16)
        for ids in data(5):
            a.step(ids)
            b.step(ids)
        res[f"gpt2_checkpointing_{'bf16' if bf16 else 'fp32'}"] = {
            "ref_losses": a.losses, "losses": b.losses, "loss_diff": max_diff(a.losses, b.losses),
            "seconds": time.time() - t0}


class Scalar(nn.Module):
    """Duck-typed like tiller.models.ScalarModel: an HF sequence classifier in ``.hf``, ``token_values``."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def token_values(self, input_ids, attention_mask):
        h = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.hf.score(h).squeeze(-1)

    def forward(self, input_ids, attention_mask):
        return self.token_values(input_ids, attention_mask)[:, -1]


def check_wrappers(res: dict) -> None:
    """A ScalarModel-like wrapper and a peft LoRA model shard, run and save like a plain model."""
    t0 = time.time()
    ids = data(1)[0]
    mask = torch.ones_like(ids)

    def scalar():
        torch.manual_seed(0)
        cfg = config("llama")
        cfg.num_labels = 1
        return Scalar(AutoModelForSequenceClassification.from_config(cfg)).to(DEVICE)

    ref, model = scalar(), scalar()
    sharding.shard(model, reshard_after_forward=False)
    with torch.no_grad():
        want = ref.token_values(ids, mask)
        with sharding.gathered(model):  # before any forward; ranks score different numbers of times
            got_gathered = [model.token_values(ids, mask) for _ in range(1 + dist.get_rank())][-1]
        got_tv = model.token_values(ids, mask)  # not forward: FSDP must still gather the root's weights
        got_fw = model(ids, mask)
    folder = OUT / "scalar-hf"
    sharding.save_pretrained(model, folder)
    saved = sharding.save_pretrained(model, OUT / "scalar-excluded", exclude={"score.weight"})
    excluded_ok = True
    if dist.get_rank() == 0:  # an excluded key is returned, not written
        from safetensors import safe_open

        with safe_open(OUT / "scalar-excluded" / "model.safetensors", "pt") as f:
            excluded_ok = saved is not None and set(f.keys()) == set(saved) - {"score.weight"}
    loaded = Scalar(AutoModelForSequenceClassification.from_pretrained(folder)).to(DEVICE)
    with torch.no_grad():
        loaded_diff = max_diff(loaded.token_values(ids, mask), want)
    r = {"gathered_diff": max_diff(got_gathered, want), "token_values_diff": max_diff(got_tv, want),
         "forward_diff": max_diff(got_fw, want[:, -1]), "shard_sizes": shard_sizes(model),
         "loaded_diff": loaded_diff, "excluded_ok": excluded_ok, "blocks": len(sharding.blocks(model))}

    from peft import LoraConfig, PeftModel, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    ref_p, peft_p = get_peft_model(tiny("llama"), lora), get_peft_model(tiny("llama"), lora)
    for m in (ref_p, peft_p):  # LoRA's B starts at zero; make the adapters matter
        torch.manual_seed(2)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    sharding.shard(peft_p)
    a, b = Trainer(ref_p, sharded=False), Trainer(peft_p, sharded=True)
    for step_ids in data(3):
        a.step(step_ids)
        b.step(step_ids)
    folder = OUT / "lora"
    sharding.save_pretrained(peft_p, folder)
    loaded_p = PeftModel.from_pretrained(tiny("llama"), folder).to(DEVICE)
    with torch.no_grad():
        lora_loaded = max_diff(loaded_p(input_ids=ids).logits, ref_p(input_ids=ids).logits)
    r |= {"lora_loss_diff": max_diff(a.losses, b.losses), "lora_blocks": len(sharding.blocks(peft_p)),
          "lora_loaded_diff": lora_loaded, "seconds": time.time() - t0}
    res["wrappers"] = r


def main() -> None:
    # a short timeout: a collective one rank never joins fails in a minute instead of hanging for 30
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", timeout=timedelta(seconds=60))
    if DEVICE == "cuda":
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    res: dict = {"world_size": dist.get_world_size()}
    t0 = time.time()
    for kind in ("llama", "gpt2"):
        check_training(kind, res)
    check_autocast_checkpointing(res)
    check_wrappers(res)
    res["seconds"] = time.time() - t0
    (OUT / f"rank-{dist.get_rank()}.json").write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
