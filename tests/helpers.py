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
