"""FSDP2 sharding (tiller.sharding) through the real launcher: two gloo ranks on the CPU against one
process with the same global batch. One ``torchrun`` launch of ``tests/dist/sharding_worker.py`` runs
every check (tiny Llama and GPT-2 with tied embeddings, a ScalarModel-like wrapper, a peft LoRA model)
and writes what it measured to ``rank-{r}.json``; the tests below read those files. Checkpointing and
clipping without a process group run in this process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from tiller import sharding

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
WORKER = Path(__file__).parent / "dist" / "sharding_worker.py"
KINDS = ("llama", "gpt2")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (installed with torch) is not on the path")


def launch(out: Path, device: str) -> list[dict]:
    """Run the worker on two ranks (gloo on the CPU, nccl on two GPUs); their measurements."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(WORKER), str(out), device]
    # a timeout, so a collective that hangs fails the test instead of the suite
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """The two CPU ranks' measurements: one launch for the whole module (~15 s on a loaded 2-core machine)."""
    return launch(tmp_path_factory.mktemp("sharding"), "cpu")


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_sharded_training_equals_one_process(ranks, kind):
    """10 AdamW steps with a cosine schedule and clipping at 0.5 (active every step): the same losses
    and the same total gradient norm as one process on the whole global batch."""
    for r in ranks:
        res = r[kind]
        assert res["loss_diff"] < 1e-5, (res["ref_losses"], res["losses"])
        assert res["norm_diff"] < 1e-5, (res["ref_norms"], res["norms"])
        assert min(res["norms"]) > 0.5  # so clipping was active: the norm reaches the update
    assert ranks[0][kind]["losses"] == ranks[1][kind]["losses"]


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_rank_holds_part_of_every_parameter(ranks, kind):
    for r in ranks:
        sizes = r[kind]["shard_sizes"]
        assert sizes and all(local < full for local, full, _ in sizes.values()), sizes
        assert r[kind]["tied"]  # the LM head still is the embedding
    for name, (local, full, _) in ranks[0][kind]["shard_sizes"].items():  # the two parts make the whole
        assert local + ranks[1][kind]["shard_sizes"][name][0] == full


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_saved_folder_loads_with_plain_transformers(ranks, kind):
    for r in ranks:
        assert r[kind]["loaded_vs_ref"] < 1e-5  # the trained weights, read back by from_pretrained
        assert r[kind]["loaded_tied"]


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_a_sharded_checkpoint_continues_identically(ranks, kind):
    """Saved before step 5; fresh weights and optimiser, restored, trained on: the same losses, bit for bit."""
    for r in ranks:
        res = r[kind]
        assert res["loop_state"] == {"step": 5}
        assert res["lr_at_resume"] == res["lr_at_save"]  # the scheduler came back through `extra`
        assert res["resume_diff"] == 0.0, (res["losses"], res["resumed_losses"])


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gathered_lets_ranks_run_different_numbers_of_forwards(ranks, kind):
    """Inside ``gathered``, rank 0 runs 3 forwards and a 3-token generate, rank 1 5 and 5: no hang, the
    logits of the model loaded from the saved folder, and the weights sharded again afterwards."""
    assert [r[kind]["gathered_forwards"] for r in ranks] == [3, 5]
    assert [r[kind]["generated_tokens"] for r in ranks] == [3, 5]
    for r in ranks:
        res = r[kind]
        assert res["gathered_unsharded"] and res["resharded"]
        assert res["gathered_logit_diff"] < 1e-6
        assert res["generate_equal"]


@needs_torchrun
@pytest.mark.slow
def test_gradient_checkpointing_and_bf16_autocast_work_sharded(ranks):
    """Hugging Face (non-reentrant) gradient checkpointing on a sharded GPT-2: the losses of one process
    with the same settings, exactly as fp32 training does; under torch.autocast(bf16) with fp32 weights,
    to bf16 rounding (the ranks' matmuls have half the rows)."""
    for r in ranks:
        fp32, bf16 = r["gpt2_checkpointing_fp32"], r["gpt2_checkpointing_bf16"]
        assert fp32["loss_diff"] < 1e-5, (fp32["ref_losses"], fp32["losses"])
        assert bf16["loss_diff"] < 1e-3, (bf16["ref_losses"], bf16["losses"])


@needs_torchrun
@pytest.mark.slow
def test_wrappers_shard_like_plain_models(ranks):
    """A ScalarModel-like wrapper (``.hf``, ``token_values``) and a peft LoRA model: blocks found, the same
    outputs and losses as unsharded, and folders that their plain loaders read back."""
    for r in ranks:
        res = r["wrappers"]
        assert res["blocks"] == res["lora_blocks"] == 2
        assert res["gathered_diff"] < 1e-6 and res["token_values_diff"] < 1e-6 and res["forward_diff"] < 1e-6
        assert res["loaded_diff"] < 1e-6 and res["excluded_ok"]
        assert res["lora_loss_diff"] < 1e-5 and res["lora_loaded_diff"] < 1e-5
        big = {n: s for n, s in res["shard_sizes"].items() if s[2] >= 2}  # a (1, H) head lives on one rank
        assert all(local < full for local, full, _ in big.values())


@needs_torchrun
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="sharding over NCCL needs two GPUs (one rank each)")
def test_sharded_training_on_two_gpus(tmp_path):
    """The same worker on two GPUs: the device mesh on cuda, NCCL, bf16 autocast on the GPU."""
    for r in launch(tmp_path, "cuda"):
        for kind in KINDS:
            res = r[kind]
            assert res["loss_diff"] < 1e-4 and res["resume_diff"] == 0.0 and res["generate_equal"]
            assert all(local < full for local, full, _ in res["shard_sizes"].values())
        assert r["gpt2_checkpointing_bf16"]["loss_diff"] < 1e-2


# --- one process, no process group ---------------------------------------------------------------------


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


def test_shard_without_a_process_group_says_so():
    with pytest.raises(sharding.ShardingError, match="initialised process group"):
        sharding.shard(_tiny())


def test_blocks_are_the_decoder_layers():
    model = _tiny()
    assert [type(b).__name__ for b in sharding.blocks(model)] == ["LlamaDecoderLayer"] * 2


def test_checkpoint_in_one_process_continues_identically(tmp_path):
    """save_state/load_state without a process group: weights, AdamW, the schedule (``extra``), the RNG
    (the batches here are drawn from it) and the loop state come back; the continuation is identical."""

    def setup():
        model = _tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        return model, opt, get_cosine_schedule_with_warmup(opt, 1, 6)

    def step(model, opt, sched) -> float:
        ids = torch.randint(0, 50, (2, 8))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        sharding.clip_grad_norm_(model, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    torch.manual_seed(1)
    model, opt, sched = setup()
    for _ in range(2):
        step(model, opt, sched)
    sharding.save_state(tmp_path / "ckpt", {"policy": model}, {"policy": opt}, extra={"sched": sched},
                        loop_state={"step": 2})
    want = [step(model, opt, sched) for _ in range(3)]

    model2, opt2, sched2 = setup()
    torch.manual_seed(99)  # the checkpoint's RNG state must replace this
    assert sharding.load_state(tmp_path / "missing", {"policy": model2}, {"policy": opt2}) is None
    loop = sharding.load_state(tmp_path / "ckpt", {"policy": model2}, {"policy": opt2}, extra={"sched": sched2})
    assert loop == {"step": 2}
    assert [step(model2, opt2, sched2) for _ in range(3)] == want
    assert model2.lm_head.weight is model2.get_input_embeddings().weight
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left


def test_clip_grad_norm_unsharded_matches_torch():
    a, b = _tiny(), _tiny()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    for m in (a, b):
        m(input_ids=ids, labels=ids).loss.backward()
    norm = sharding.clip_grad_norm_(a, 0.1)
    assert torch.allclose(norm, torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_plain_model_passes_through_gathered_and_full_state_dict():
    model = _tiny()
    with sharding.gathered(model) as m:
        assert m is model
    sd = sharding.full_state_dict(model)
    assert sd is not None and torch.equal(sd["model.embed_tokens.weight"], model.get_input_embeddings().weight)
