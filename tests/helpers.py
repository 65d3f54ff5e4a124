"""Small builders several test modules share (pytest puts tests/ on the path: ``from helpers import ...``)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

DOCS = ["the cat sat on the mat", "what is two and three", "hello there my friend"] * 20


def plain_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer: byte-level BPE with only <|endoftext|>, pad == eos, no chat tokens."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def run_command(cmd: list[str], cwd: Path, env: dict[str, str], wait: bool = True, timeout: int = 600):
    """Run ``cmd`` (a launcher and its processes) in ``cwd``: with ``wait``, to the end, asserting it
    succeeded (its output in the failure); else started in its own session, so that a test can kill the
    launcher and all its ranks at once (``os.killpg``), output discarded (an unread pipe could fill up and
    stall it)."""
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    err = done.stderr if len(done.stderr) < 8000 else done.stderr[:4000] + "\n[...]\n" + done.stderr[-4000:]
    assert done.returncode == 0, done.stdout[-3000:] + err  # a rank's own error comes before torchrun's summary
    return done


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background thread; its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race with other test runs
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


# -- tiny chat models as pairwise judges behind a real `tiller serve` (tests/eval, tests/test_labelers_app.py) --


def judge_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with the chat markers (as tests/serve/conftest.py builds it); ``A`` and ``B`` are tokens."""
    from tiller.chat import END, ROLE_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[*ROLE_TOKENS.values(), END, "<|pad|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Which answer is better? Answer A or answer B.", "The cat sat on the mat."], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.add_special_tokens({"additional_special_tokens": [*ROLE_TOKENS.values(), END]})
    return tok


def tiny_judge_model(path: Path, always: str | None = None) -> Path:
    """A one-layer random GPT-2 over :func:`judge_tokenizer`, with room for the packaged judge template.
    ``always``: the model's every next token is this one (the final layer norm outputs a constant, its tied
    embedding scaled up)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = judge_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=1, n_head=2, n_embd=32, n_positions=2048,
                        initializer_range=0.5, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    if always is not None:
        with torch.no_grad():
            wte = model.transformer.wte.weight  # tied to lm_head: logits = wte @ ln_f's output
            i = tok.convert_tokens_to_ids(always)
            wte[i] *= 10
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(wte[i])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def first_token_judge(path: Path) -> Path:
    """A hand-wired one-layer GPT-2 judge whose verdict depends on what it is shown: it reads the first token of
    the user's message and answers ``A`` after ``+``, ``B`` after ``-`` and ``????????`` (not a verdict) after
    ``?``, then stops. With a template that shows answer A first, it prefers answers that start with ``+``.

    How: only position 2 (the first token after ``<|user|>`` and its newline) carries a position vector, and the
    one attention head's constant query picks it out; the value copies that token's +/-/? direction, which the
    untied LM head turns into A, B or ?; the tokens A and B carry a direction the head turns into ``<|end|>``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiller.chat import END, encode_prompt

    tok = judge_tokenizer()
    t = tok.convert_tokens_to_ids
    first = encode_prompt(tok, "+ x").index(t("+"))  # where the message's first token sits
    marker, good, nonsense, verdict, bad = range(5)  # residual dimensions
    config = GPT2Config(vocab_size=len(tok), n_layer=1, n_head=1, n_embd=32, n_positions=2048,
                        tie_word_embeddings=False, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    n = config.n_embd
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        block, wte = model.transformer.h[0], model.transformer.wte.weight
        for ln in (block.ln_1, block.ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        model.transformer.wpe.weight[first, marker] = 1.0
        for token, dim, size in (("+", good, 1.0), ("-", bad, 1.0), ("?", nonsense, 1.0), ("A", verdict, 10.0),
                                 ("B", verdict, 10.0)):
            wte[t(token), dim] = size
        block.attn.c_attn.bias[marker] = 100.0  # query: the marker direction, whatever the input
        block.attn.c_attn.weight[marker, n + marker] = 1.0  # key: the marker
        for dim in (good, nonsense, bad):  # value and output: the first token's direction
            block.attn.c_attn.weight[dim, 2 * n + dim] = 1.0
            block.attn.c_proj.weight[dim, dim] = 1.0
        head = model.lm_head.weight
        head[t("A"), good], head[t("B"), bad], head[t("?"), nonsense], head[t(END), verdict] = 1.0, 1.0, 1.0, 100.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@contextmanager
def served_model(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """A real `tiller serve` app over the model at ``path`` (model id ``name``) on a loopback port: (its
    OpenAI base URL, ending in /v1; the engine)."""
    from tiller.serve.api import create_app
    from tiller.serve.engine import ChatEngine

    engine = ChatEngine(str(path), device="cpu", model_name=name)
    with live_server(create_app(engine)) as url:
        yield f"{url}/v1", engine


def fake_run(rd: Path, config: dict[str, Any], outputs: list[str]) -> Path:
    """A run folder as `tiller run` leaves it after writing ``outputs``: ``run-config.json``, and for each
    output a stage folder with its manifest (``rm-r1``), a data file with its ``.manifest`` folder
    (``data/samples-r1.jsonl``) or a plain file (``world/manifest.json``, ``report/report.html``)."""
    import json

    from tiller.runs import write_manifest

    rd.mkdir(parents=True, exist_ok=True)
    (rd / "run-config.json").write_text(json.dumps(config, indent=2))
    for out in outputs:
        path = rd / out
        if path.suffix == ".jsonl":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n")
            write_manifest(path.with_suffix(".manifest"), stage=path.stem.rsplit("-", 1)[0], fingerprint="test")
        elif path.suffix in (".json", ".html"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        else:
            write_manifest(path, stage=path.name, fingerprint="test")
    return rd


# -- real Chromium for the app's browser tests (tests/feedback/test_feedback_browser.py, ..._clips_browser.py) --
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@contextmanager
def chromium_page(width: int = 1360, extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium (``.ci/chromium.sh``), 20 s timeouts; the test skips without
    Playwright."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args], headless=True)
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        context.close()
        browser.close()


def keep_screenshot(path: Path, name: str) -> None:
    """Copy a test's screenshot to docs/screenshots/ only with TILLER_UPDATE_SCREENSHOTS=1, so an ordinary
    test run never rewrites tracked files."""
    import os
    import shutil

    if os.environ.get("TILLER_UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SHOTS / name)
