"""``tiller plan``: the memory a training stage needs on each device, from the model's shapes alone.

Nothing is loaded: the model is built on PyTorch's ``meta`` device from its ``config.json`` (a file, a
model folder, or a name in ``configs/models/``), which gives every parameter's shape and no storage. The
planner then adds up, per device and per phase of a step, the weights of each model, the gradients,
AdamW's states, the saved activations, the logits and the rollout's KV cache. A phase's column sums to
what is alive at its worst moment; the peak is the largest column. ``bench/plan_check.py`` checks it
against the peak RSS of real steps (docs/scaling.md). Units: bytes, per device.

Bytes per trainable parameter: 4 (fp32 weight: tiller trains fp32 weights and computes in bf16 only
through autocast) + 4 (fp32 gradient) + 8 (AdamW's exp_avg and exp_avg_sq) = 16. ZeRO (Rajbhandari et
al. 2020) also counts 16, as 2 + 2 + 12: fp16 weights and gradients beside fp32 master weights, momentum
and variance. Frozen models keep ``dtype`` (the reference runs in the policy's fp32, as in
``stages/ppo.py``).

Activations per decoder block and token, in elements (the tensors autograd saves; Korthikanti et al.
2022, "Reducing activation recomputation", section 4.1, without dropout and with fused SDPA attention,
which keeps no T x T scores)::

    4h             two norms, each its input and its output
    h + 2kv        q, k, v                         (kv = key/value heads x head dim: GQA)
    h + kv         rotated q and k (RoPE models)
    2h             attention output and the merged copy the output projection reads
    4i | 2i        gated MLP (gate, up, SiLU, product) | plain (input and output of the activation)
    + 3i           a GELU composed in Python (GPT-2's gelu_new keeps three more intermediates)

4 bytes each in fp32. Under bf16 autocast the norms and the rotated q, k stay fp32, the rest is bf16, and
the matmuls keep bf16 copies of their fp32 inputs (the norm outputs, the rotated q and k) and of fp32
weights in the graph. ``tests/test_plan.py`` checks the count against the bytes autograd saves. With
gradient checkpointing a block keeps only its input (h, fp32) and one block is recomputed at a time.

Logits (B x T x V; PPO's policy has them at the response positions only) are four fp32 copies at the
worst moment. SFT: the logits the loss reads, the log-softmax cross-entropy keeps, and the gradient in and
out of its backward. PPO: the logits, and the entropy's three temporaries in the forward (scaled logits,
softmax, product), then in the backward ``logprobs_from_logits``'s (logsumexp's exp and product, the
gather's gradient). At a 151k vocabulary they outweigh every block's activations. The head's gradient (a
tied head: the embedding's) is written beside three copies (the logits, their gradient, and the
full-width one the slice's backward builds), so it adds what exceeds one copy (measured: bench traces);
the other gradients appear as the blocks' activations are freed, and all of them meet AdamW's states in
the ``step`` column, beside one copy of the logits, which the loops keep referenced until the next
forward. AdamW's step holds sqrt(exp_avg_sq) of every tensor at once on a GPU (foreach: 4 bytes per
trained parameter), of one tensor at a time on a CPU (with its division: twice the largest tensor).

Phases (columns): ``sample`` (PPO's rollout: the KV cache; under ZeRO-3 the whole policy, and at an
evaluation point the reference too, gathered as ``sharding.gathered`` does so that decoding does not
all-gather per token), ``score`` (no-grad forwards of the reference and value models in chunks of 64
sequences), one backward per trained network (its activations, logits and the head's gradient; PPO's
value backward runs while the policy's gradients wait for the step), and ``step``. The figures are live
tensors: an allocator keeps more (glibc held up to 19% more RSS in bench/plan_check.py; CUDA's caching
allocator fragments), hence ``overhead`` and the margin the verdict prints.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)
from transformers.pytorch_utils import Conv1D

from tiller.config import ConfigError, field

GiB = 2**30
MODELS_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
SCORE_CHUNK = 64  # sequences per no-grad scoring forward (stages/ppo.py score_tokens)
LOGIT_COPIES = 4  # fp32 copies of the logits alive at once in a training step (module docstring)


@dataclass
class PlanConfig:
    """The question: a model, a stage and how it runs on each device."""

    model: str = field("", help="config.json, a model folder, or a name in configs/models/ (qwen2-0.5b, ...)")
    stage: Literal["sft", "rm", "ppo"] = field("sft", help="sft: the policy; rm: a scalar-head model; ppo: "
                                               "policy, reference, value and reward models")
    devices: int = field(1, help="data-parallel devices")
    sharding: Literal["none", "zero2", "zero3"] = field(
        "none", help="none: DDP; zero2: gradients and optimiser states sharded; zero3 (FSDP full shard): "
                     "weights too")
    lora_r: int = field(0, help="LoRA rank on every linear layer of the blocks (0: full fine-tuning)")
    batch: int = field(8, help="sequences per device per forward (micro-batch)")
    seq_len: int = field(512, help="tokens per sequence (prompt + response)")
    response_len: int = field(0, help="ppo: response tokens, the positions that get logits (0: seq_len / 2)")
    rollout_batch: int = field(0, help="ppo: sequences sampled at once per device (0: batch)")
    grad_accum: int = field(1, help="micro-batches per optimiser step: above 1 every gradient is alive in "
                                    "the backward too")
    dtype: Literal["fp32", "bf16"] = field("bf16", help="ppo: the frozen reward model's weights (what tiller trains, "
                                                        "LoRA backbones and the reference included, is fp32)")
    reward_models: int = field(1, help="ppo: reward models held for scoring (an ensemble RM: its members; the "
                                       "default run trains 3)")
    value_backbone: Literal["own", "shared"] = field(
        "own", help="ppo with LoRA: own (the value model is a second network with its adapter) or shared (a "
                    "second adapter and a head on the policy's backbone)")
    mixed_precision: Literal["no", "bf16"] = field("no", help="no: fp32 compute; bf16: autocast (weights stay fp32)")
    gradient_checkpointing: bool = field(False, help="keep only each block's input, recompute the rest")
    accelerator: Literal["gpu", "cpu"] = field("gpu", help="gpu: AdamW's foreach step holds one more fp32 "
                                               "copy of the trainable weights; cpu: one tensor at a time")
    device_memory: float = field(80.0, help="memory per device, GiB")
    overhead: float | None = field(None, help="GiB for the runtime (CUDA context, allocator slack); "
                                              "default 1 on gpu, 0 on cpu")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: give a config.json, a model folder or a name in configs/models/")
        for name in ("devices", "batch", "seq_len", "grad_accum", "reward_models"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.lora_r < 0 or self.response_len < 0 or self.rollout_batch < 0:
            raise ConfigError("lora_r, response_len and rollout_batch must be >= 0")
        if self.value_backbone == "shared" and not (self.stage == "ppo" and self.lora_r):
            raise ConfigError("value_backbone=shared needs stage ppo with LoRA (lora_r > 0)")
        if self.value_backbone == "shared" and self.gradient_checkpointing:
            raise ConfigError("value_backbone=shared trains without gradient checkpointing (as stages/ppo.py)")
        if self.response_len >= self.seq_len:
            raise ConfigError(f"response_len {self.response_len} must be below seq_len {self.seq_len}")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model, read from its parameters' shapes (tied weights once)."""

    name: str
    params: int  # the causal LM
    scalar_params: int  # the same network with a scalar head (reward and value models)
    head: int  # the output projection's own parameters (0 when tied to the input embedding)
    block: int  # one decoder block
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head dim
    vocab: int
    gated: bool  # SwiGLU-style MLP (gate and up projections)
    rotary: bool
    act_extra: int  # intermediates a Python-composed activation keeps, in units of `intermediate`
    lora_fan: int  # sum of (in + out) over the blocks' linear layers: LoRA rank r adds r * lora_fan
    block_linear: int  # parameters of one block's linear layers (what autocast copies to bf16)
    largest: int  # the largest parameter tensor (CPU AdamW's step temporary)

    @property
    def root(self) -> int:
        """Parameters outside the blocks: embeddings, final norm, head (FSDP's root unit)."""
        return self.params - self.layers * self.block

    def lora_params(self, r: int) -> int:
        return r * self.lora_fan

    def block_elements(self) -> int:
        """Activation elements one block saves per token (module docstring)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        mlp = (4 if self.gated else 2) * i + self.act_extra * i
        return 4 * h + (h + 2 * kv) + self.rotary * (h + kv) + 2 * h + mlp

    def block_bytes(self, precision: str) -> int:
        """Bytes one block saves per token: 4 per element in fp32; under bf16 autocast the norms and rotated
        q, k stay fp32, the rest is bf16, plus bf16 copies of the fp32 inputs the matmuls cast."""
        e = self.block_elements()
        if precision != "bf16":
            return 4 * e
        fp32 = 4 * self.hidden + self.rotary * (self.hidden + self.kv_dim)
        cast = 2 * self.hidden + self.rotary * (self.hidden + self.kv_dim)
        return 4 * fp32 + 2 * (e - fp32) + 2 * cast


def resolve_config(spec: str) -> PretrainedConfig:
    """A Hugging Face config from a config.json, a model folder, or a name in ``configs/models/``."""
    path = Path(spec)
    named = MODELS_DIR / f"{spec}.json"
    if not path.exists() and named.is_file():
        path = named
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.json")))
        raise ConfigError(f"model {spec!r}: not a config.json, a model folder or a name in configs/models/ ({known})")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model {spec}: cannot read its config ({e})") from None


def _blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder blocks: the ModuleList with one entry per hidden layer."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise ConfigError(f"{type(model).__name__}: no list of {n_layers} decoder blocks found")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # named_parameters skips tied duplicates


@functools.lru_cache(maxsize=32)
def model_shape(spec: str) -> ModelShape:
    """Count parameters of the model ``spec`` names, built on the meta device (no memory, no weights)."""
    config = resolve_config(spec)
    try:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config)
            scalar = AutoModelForSequenceClassification.from_config(_one_label(config))
    except (ValueError, KeyError) as e:  # an architecture with no causal-LM or sequence-classification class
        raise ConfigError(f"model {spec}: transformers cannot build it as a causal LM and a scalar model ({e})") from None
    text = config.get_text_config()
    blocks = _blocks(lm, text.num_hidden_layers)
    block = blocks[0]
    linears = [m for m in block.modules() if isinstance(m, (nn.Linear, Conv1D))]
    emb = lm.get_input_embeddings()
    out = lm.get_output_embeddings()
    tied = out is None or out.weight is emb.weight
    hidden, heads = emb.weight.shape[1], text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    # how many MLP matrices touch the intermediate size: gate, up, down 3 (a fused gate_up counts 2); fc, proj 2
    mlp_mats = sum((d == inter) + 2 * (d == 2 * inter) for m in linears for d in m.weight.shape)
    act = str(getattr(text, "hidden_act", None) or getattr(text, "activation_function", ""))
    return ModelShape(
        name=spec, params=_count(lm), scalar_params=_count(scalar),
        head=0 if tied else out.weight.numel(), block=_count(block), layers=len(blocks), hidden=hidden,
        intermediate=inter, kv_dim=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        vocab=emb.weight.shape[0], gated=mlp_mats >= 3, rotary=any("rotary" in n for n, _ in lm.named_modules()),
        act_extra=3 if act == "gelu_new" else 0, lora_fan=sum(sum(m.weight.shape) for m in linears) * len(blocks),
        block_linear=sum(m.weight.numel() for m in linears), largest=max(p.numel() for p in lm.parameters()))


def _one_label(config: PretrainedConfig) -> PretrainedConfig:
    one = type(config).from_dict(config.to_dict())
    one.num_labels = 1
    return one


# ------------------------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Bytes per device of each component in each phase of a step; the peak is the largest phase."""

    config: PlanConfig
    shape: ModelShape
    phases: dict[str, dict[str, float]]

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.total)

    @property
    def peak(self) -> float:
        return self.total(self.peak_phase)

    @property
    def fits(self) -> bool:
        return self.peak <= self.config.device_memory * GiB

    def components(self) -> list[str]:
        return list(dict.fromkeys(k for p in self.phases.values() for k in p))

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "shape": asdict(self.shape), "phases": self.phases,
                "peak_phase": self.peak_phase, "peak_bytes": self.peak, "peak_gib": self.peak / GiB,
                "fits": self.fits}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """One row per component, one column per phase (GiB per device), the totals and the verdict."""
        c, s = self.config, self.shape
        names = list(self.phases)
        width = max(len(k) for k in self.components()) + 2
        mode = f"LoRA r={c.lora_r}" if c.lora_r else "full fine-tuning"
        lines = [f"{s.name}: {s.params / 1e9:.3g}B parameters ({s.layers} blocks, width {s.hidden}, vocab {s.vocab})",
                 f"stage {c.stage}, {mode}, {c.devices} device(s), sharding {c.sharding}, batch {c.batch} x "
                 f"{c.seq_len} tokens, compute {'bf16' if c.mixed_precision == 'bf16' else 'fp32'}"
                 + (", gradient checkpointing" if c.gradient_checkpointing else ""),
                 "", f"{'GiB per device':<{width}}" + "".join(f"{n:>12}" for n in names)]
        for k in self.components():
            cells = [self.phases[n].get(k) for n in names]
            lines.append(f"{k:<{width}}" + "".join(f"{'' if v is None else f'{v / GiB:.2f}':>12}" for v in cells))
        lines.append(f"{'total':<{width}}" + "".join(f"{self.total(n) / GiB:>12.2f}" for n in names))
        spare = 1 - self.peak / (c.device_memory * GiB)
        verdict = f"fits, {spare:.0%} to spare" if self.fits else "does NOT fit"
        lines += ["", f"peak {self.peak / GiB:.2f} GiB ({self.peak_phase}): {verdict} in {c.device_memory:g} GiB"]
        return "\n".join(line.rstrip() for line in lines)


@dataclass
class _Net:
    """One network of a stage: what a forward and backward through it keep."""

    trainable: int  # parameters with gradients
    lm: bool  # ends in the vocabulary (logits) rather than a scalar head
    head_grad: int  # the output head's gradient, the first the backward writes (every activation alive)


def plan(cfg: PlanConfig, shape: ModelShape | None = None) -> Plan:
    """The memory of ``cfg``'s stage per device, by phase (module docstring)."""
    cfg.validate()
    s = shape or model_shape(cfg.model)
    ws = cfg.devices if cfg.sharding == "zero3" else 1  # weights sharded
    gs = cfg.devices if cfg.sharding != "none" else 1  # gradients and optimiser states sharded
    sharded, whole, nets = _weights_and_nets(cfg, s)
    trainable = sum(n.trainable for n in nets.values())
    persistent = {**{k: v / ws for k, v in sharded.items()}, **whole}
    persistent["optimizer states (AdamW)"] = 8 * trainable / gs
    if cfg.devices > 1 and cfg.sharding == "none":  # DDP copies gradients into buckets (gradient_as_bucket_view=False)
        persistent["DDP gradient buckets"] = 4 * trainable
    overhead = cfg.overhead if cfg.overhead is not None else (1.0 if cfg.accelerator == "gpu" else 0.0)
    if overhead:
        persistent["runtime overhead"] = overhead * GiB
    phases: dict[str, dict[str, float]] = {}
    if cfg.stage == "ppo":
        phases.update(_rollout_phases(cfg, s))
    # held until the step: the gradients of an earlier backward (PPO's policy while the value model trains),
    # and the last logits, which the loops keep referenced until the next forward (sft.py, ppo.py)
    alive, held = 0.0, 0.0
    for name, net in nets.items():
        phases[f"{name} bwd"] = {**_backward(cfg, s, net, alive, gs), **({"logits": held} if held else {})}
        alive += 4 * net.trainable / gs
        held += _logits_copy(cfg, s) if net.lm else 0
    first = next(iter(nets.values()))
    # AdamW's step: foreach (GPU) keeps sqrt(exp_avg_sq) of every tensor at once; one tensor at a time (CPU)
    # keeps its sqrt and the sqrt divided by the bias correction
    temp = 4 * first.trainable / gs if cfg.accelerator == "gpu" else 8 * min(s.largest, first.trainable)
    phases["step"] = {"logits": held, "gradients": alive, "optimizer step temporaries": temp}
    return Plan(cfg, s, {p: {**persistent, **{k: v for k, v in t.items() if v}} for p, t in phases.items()})


def _weights_and_nets(cfg: PlanConfig, s: ModelShape) -> tuple[dict[str, int], dict[str, int], dict[str, _Net]]:
    """Weights in bytes (those ZeRO-3 shards, those it leaves whole) and the trained networks in backward order.

    As the stages build them: every model tiller trains loads in fp32, a LoRA backbone included (the
    adapter freezes it afterwards); the PPO reference is a second fp32 copy of the policy, or with LoRA the
    policy with its adapter disabled; the value model has the RM's shape (the policy's with a scalar head),
    its own backbone or (``value_backbone=shared``) a second adapter and a head on the policy's; the reward
    model is frozen in ``dtype`` and whole on every device (stages/ppo.py shards policy, value, reference)."""
    lora, h, P, S = s.lora_params(cfg.lora_r), s.hidden, s.params, s.scalar_params
    head_grad = s.head or s.vocab * h  # a tied head writes the embedding's gradient
    if cfg.stage in ("sft", "rm"):
        n, lm, role = (P, True, "policy") if cfg.stage == "sft" else (S, False, "reward model")
        if not cfg.lora_r:
            return {f"{role} weights (fp32)": 4 * n}, {}, {role.split()[0]: _Net(n, lm, head_grad if lm else h)}
        head = 0 if lm else h  # a scalar model's head trains in full (adapters.apply_lora(head="score"))
        return ({f"{role} backbone (fp32)": 4 * n, "LoRA adapter (fp32)": 4 * (lora + head)}, {},
                {role.split()[0]: _Net(lora + head, lm, head)})
    reward = {f"reward weights ({cfg.dtype})": (2 if cfg.dtype == "bf16" else 4) * S * cfg.reward_models}
    if not cfg.lora_r:
        weights = {"policy weights (fp32)": 4 * P, "reference weights (fp32)": 4 * P,
                   "value weights (fp32)": 4 * (S + 1)}
        return weights, reward, {"policy": _Net(P, True, head_grad), "value": _Net(S + 1, False, h + 1)}
    weights = {"policy backbone (fp32)": 4 * P, "LoRA adapters + value head (fp32)": 4 * (2 * lora + h + 1)}
    if cfg.value_backbone == "own":
        weights["value backbone (fp32)"] = 4 * S
    return weights, reward, {"policy": _Net(lora, True, 0), "value": _Net(lora + h + 1, False, h + 1)}


def _backward(cfg: PlanConfig, s: ModelShape, net: _Net, alive: float, gs: int) -> dict[str, float]:
    """What a training forward and backward through ``net`` add, at the start of its backward."""
    tokens = cfg.batch * cfg.seq_len
    block = s.block_bytes(cfg.mixed_precision)
    if cfg.gradient_checkpointing:  # each block's fp32 input, and one block recomputed at a time
        acts = tokens * (4 * s.hidden * s.layers + block)
    else:
        acts = tokens * block * s.layers
    acts += tokens * 4 * 3 * s.hidden  # embedding output, final norm's input and output
    copy = _logits_copy(cfg, s) if net.lm else 0
    # the head's gradient is written when the loss's backward has freed all but three copies
    head = max(0, 4 * net.head_grad - copy)
    grads = alive + (4 * net.trainable / gs if cfg.grad_accum > 1 else head)  # accumulating: all alive
    out = {"activations": acts, "logits": LOGIT_COPIES * copy, "gradients": grads}
    if cfg.mixed_precision == "bf16":  # fp32 weights, sharded or not: the matmuls keep bf16 copies for the backward
        kept = s.block_linear * (1 if cfg.gradient_checkpointing else s.layers)
        out["autocast bf16 weight copies"] = 2 * (kept + (s.vocab * s.hidden if net.lm else s.hidden))
    out.update(_gathered(cfg, s, grads=not cfg.lora_r))
    return out


def _rollout_phases(cfg: PlanConfig, s: ModelShape) -> dict[str, dict[str, float]]:
    """PPO's rollout: sampling with an fp32 KV cache (the fp32 policy samples outside autocast), then
    no-grad scoring forwards in chunks (stages/ppo.py ``score_tokens``). Under ZeRO-3 sampling runs
    inside ``sharding.gathered`` (whole weights, so decoding does not all-gather per token), and an
    evaluation point gathers the reference too (a LoRA reference is the policy itself)."""
    n = cfg.rollout_batch or cfg.batch
    prompt = cfg.seq_len - _response_len(cfg)
    one_block = 4 * s.block_elements()  # a no-grad forward holds about one block's intermediates at a time
    chunk = min(n, SCORE_CHUNK)
    gathered = _gathered(cfg, s, grads=False)
    whole = {"gathered shards (ZeRO-3)": 4 * s.params * (1 if cfg.lora_r else 2)} if gathered else {}
    return {
        "sample": {"KV cache": 2 * s.layers * s.kv_dim * n * cfg.seq_len * 4,
                   "activations": n * prompt * one_block, **whole},
        "score": {"activations": chunk * cfg.seq_len * one_block,
                  "logits": chunk * _response_len(cfg) * s.vocab * 4 * 2, **gathered},  # logits, logsumexp's temporary
    }


def _gathered(cfg: PlanConfig, s: ModelShape, grads: bool) -> dict[str, float]:
    """ZeRO-3 (``tiller.sharding``: FSDP2 per block, then the root): the block being computed and the next
    one prefetched, plus the root unit (embeddings, head), unsharded in fp32 (tiller's FSDP keeps fp32
    weights and leaves bf16 to autocast); in a backward also one block's fp32 gradients."""
    if cfg.sharding != "zero3" or cfg.devices == 1:
        return {}
    return {"gathered shards (ZeRO-3)": 4 * (2 * s.block + s.root) + (4 * s.block if grads else 0)}


def _logits_copy(cfg: PlanConfig, s: ModelShape) -> int:
    """One fp32 copy of a micro-batch's logits: every position in SFT, the response's in PPO."""
    return cfg.batch * (cfg.seq_len if cfg.stage == "sft" else _response_len(cfg)) * s.vocab * 4


def _response_len(cfg: PlanConfig) -> int:
    return cfg.response_len or cfg.seq_len // 2

