"""``HTTPScorer`` and an ``http`` reward source against a real local HTTP server (stdlib, 127.0.0.1, a free port).

The server scores what it is sent: the length of each response, plus 0.5 when its prompt mentions a banana,
so a score that comes back for the wrong answer, or in the wrong order, shows."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tiller.scoring import CompositeReward, HTTPScorer, RewardSource

PROMPTS = ["Tell me about bananas.", [{"role": "user", "content": "A banana, please."}], "What is 2 + 2?"]
RESPONSES = ["They are yellow.", "Here.", "4"]
EXPECTED = [16.5, 5.5, 1.0]


def rule(prompt, response: str) -> float:
    return len(response) + (0.5 if "banana" in json.dumps(prompt) else 0.0)


class Handler(BaseHTTPRequestHandler):
    """POST /score: the scores; /short: one score too few; /boom: a 500."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append({"path": self.path, "type": self.headers["Content-Type"], "body": body})
        if self.path == "/boom":
            self.send_error(500, "scorer crashed")
            return
        scores = [rule(p, r) for p, r in zip(body["prompts"], body["responses"], strict=True)]
        if self.path == "/short":
            scores = scores[:-1]
        out = json.dumps({"scores": scores} if self.path != "/noscores" else {"detail": "no"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """The base URL of a scoring server running in a thread for the length of one test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_scores_round_trip_in_order(server):
    scorer = HTTPScorer(f"{server}/score", timeout=10)
    assert scorer.score(PROMPTS, RESPONSES) == EXPECTED
    # reversed input, reversed scores: each score belongs to its own answer
    assert scorer.score(PROMPTS[::-1], RESPONSES[::-1]) == EXPECTED[::-1]
    first = Handler.requests[0]
    assert first["path"] == "/score" and first["type"] == "application/json"
    assert first["body"] == {"prompts": PROMPTS, "responses": RESPONSES}  # chat prompts go as messages


def test_wrong_number_of_scores_names_the_url(server):
    url = f"{server}/short"
    with pytest.raises(RuntimeError) as e:
        HTTPScorer(url, timeout=10).score(PROMPTS, RESPONSES)
    assert str(e.value) == f"{url} returned 2 scores for 3 responses"


def test_a_server_error_raises_naming_the_url(server):
    with pytest.raises(RuntimeError, match=f"^{server}/boom answered HTTP 500") as e:
        HTTPScorer(f"{server}/boom", timeout=10).score(PROMPTS, RESPONSES)
    assert isinstance(e.value.__cause__, urllib.error.HTTPError) and e.value.__cause__.code == 500


def test_a_reply_without_scores_raises_naming_the_url(server):
    with pytest.raises(RuntimeError, match=f'^{server}/noscores answered without a "scores" list'):
        HTTPScorer(f"{server}/noscores", timeout=10).score(PROMPTS, RESPONSES)


def test_nothing_listening_raises_naming_the_url(server):
    url = "http://127.0.0.1:9/score"  # port 9: discard, closed
    with pytest.raises(RuntimeError, match=f"^{url} cannot be reached"):
        HTTPScorer(url, timeout=10).score(PROMPTS, RESPONSES)


def test_an_http_reward_source(server):
    reward = CompositeReward([RewardSource(kind="http", path=f"{server}/score")])
    total, parts = reward.score(PROMPTS, RESPONSES)
    assert list(parts) == ["http0"]
    assert torch.equal(parts["http0"], torch.tensor(EXPECTED))
    assert torch.equal(total, torch.tensor(EXPECTED))  # one source of weight 1: the reward is its score

    weighted = CompositeReward([RewardSource(kind="http", path=f"{server}/score", name="judge", weight=2.0),
                                RewardSource(kind="http", path=f"{server}/score", weight=-0.5)])
    total, parts = weighted.score(PROMPTS, RESPONSES)
    assert list(parts) == ["judge", "http1"]
    assert torch.allclose(total, 1.5 * torch.tensor(EXPECTED))
    with pytest.raises(RuntimeError, match="/short returned 2 scores for 3 responses"):
        CompositeReward([RewardSource(kind="http", path=f"{server}/short")]).score(PROMPTS, RESPONSES)
