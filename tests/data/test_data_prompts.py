"""Prompt curation on hand-written prompts: consent, prefix dedup, per-user cap, split by user, PII."""

from __future__ import annotations

import pytest

from tiller.config import ConfigError, load_config
from tiller.data.formats import PromptRecord
from tiller.data.prompts import (
    CurationConfig,
    assign_splits,
    cap_per_user,
    curate,
    dedup_by_prefix,
    luhn_ok,
    scrub_pii,
)


def rec(id: str, text: str, user: str = "u1", **kw) -> PromptRecord:
    return PromptRecord(id=id, prompt=[{"role": "user", "content": text}], user_id=user, **kw)


def test_dedup_keeps_first_of_a_shared_prefix():
    a = rec("a", "Write a short poem about the sea and the wind at night.")
    b = rec("b", "write a short poem about   the sea and the wind in the morning.")  # same 40 chars, folded
    c = rec("c", "Write a short story about the sea.")
    d = rec("d", "Write a short story about the sea.")  # exact duplicate, shorter than the prefix
    kept, removed = dedup_by_prefix([a, b, c, d], prefix_chars=40)
    assert [r.id for r in kept] == ["a", "c"] and removed == 2
    kept, removed = dedup_by_prefix([a, b, c, d], prefix_chars=60)  # a and b differ by char 50
    assert [r.id for r in kept] == ["a", "b", "c"] and removed == 1


def test_cap_per_user_keeps_the_first():
    recs = [rec(f"x{i}", f"q{i}", "heavy") for i in range(5)] + [rec("y", "q", "light")]
    kept, removed = cap_per_user(recs, 3)
    assert [r.id for r in kept] == ["x0", "x1", "x2", "y"] and removed == 2


def test_split_by_user_never_splits_a_user_and_is_seeded():
    recs = [rec(f"{u}-{i}", f"prompt {u} {i}", f"user{u}") for u in range(60) for i in range(3)]
    out = assign_splits(recs, valid_frac=0.2, test_frac=0.2, seed=1)
    by_user: dict[str, set[str]] = {}
    for r in out:
        by_user.setdefault(r.user_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_user.values())
    counts = {s: sum(v == {s} for v in by_user.values()) for s in ("train", "valid", "test")}
    assert all(c > 0 for c in counts.values()) and sum(counts.values()) == 60
    assert [r.split for r in assign_splits(recs, 0.2, 0.2, seed=1)] == [r.split for r in out]
    assert [r.split for r in assign_splits(recs, 0.2, 0.2, seed=2)] != [r.split for r in out]
    # a user's split does not depend on who else is in the file (stable across rounds)
    alone = assign_splits([r for r in recs if r.user_id == "user7"], 0.2, 0.2, seed=1)
    assert {r.split for r in alone} == by_user["user7"]


@pytest.mark.parametrize(
    "text,expected,counts",
    [
        ("mail jane.doe+work@example.co.uk today", "mail [EMAIL] today", {"email": 1}),
        ("call 555-123-4567 or (555) 123-4567", "call [PHONE] or [PHONE]", {"phone": 2}),
        ("ring +44 20 7946 0958 now", "ring [PHONE] now", {"phone": 1}),
        ("card 4111 1111 1111 1111, or 4111-1111-1111-1111.", "card [CARD], or [CARD].", {"card": 2}),
        ("I live at 12 Main Street, she at 221B Baker St. in London",
         "I live at [ADDRESS], she at [ADDRESS] in London", {"address": 2}),
        ("In 2019 we sold 1500 units for $20,000 (order 12345, v3.10.4).",
         "In 2019 we sold 1500 units for $20,000 (order 12345, v3.10.4).", {}),
    ],
)
def test_scrub_pii(text, expected, counts):
    out, got = scrub_pii(text)
    assert out == expected and dict(got) == counts


def test_luhn_check_is_optional():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    text = "cards 4111111111111111 and 4111111111111112"
    assert scrub_pii(text)[0] == "cards [CARD] and [CARD]"
    assert scrub_pii(text, luhn_check=True)[0] == "cards [CARD] and 4111111111111112"


def test_curate_report_counted_by_hand():
    recs = [
        rec("1", "Explain photosynthesis to a child in simple words, please.", "ann"),
        rec("2", "Explain photosynthesis to a child in simple words and rhyme.", "ann"),  # dup prefix of 1
        rec("3", "Email me at ann@example.com the answer.", "ann"),
        rec("4", "What is 2+2?", "ann"),  # over ann's cap of 2 (after dedup: 1, 3, 4)
        rec("5", "Secret prompt.", "bob", consent=False),
        rec("6", "Call me on 555-123-4567 or write to 12 Main Street.", "bob", consent=True),
    ]
    cfg = CurationConfig(prefix_chars=40, max_per_user=2, valid_frac=0.0, test_frac=0.0)
    kept, report = curate(recs, cfg)
    assert [r.id for r in kept] == ["1", "3", "6"]
    assert kept[1].prompt[0]["content"] == "Email me at [EMAIL] the answer."
    assert kept[2].prompt[0]["content"] == "Call me on [PHONE] or write to [ADDRESS]."
    assert report["input"] == 6 and report["output"] == 3
    assert report["removed"] == {"no_consent": 1, "duplicate_prefix": 1, "over_user_cap": 1}
    assert report["pii"] == {"email": 1, "phone": 1, "card": 0, "address": 1}
    assert report["prompts_scrubbed"] == 2
    assert report["splits"]["train"] == {"prompts": 3, "users": 2}
    assert recs[2].prompt[0]["content"].startswith("Email me at ann@")  # inputs untouched (pure)


def test_config_validation():
    with pytest.raises(ConfigError, match="valid_frac \\+ test_frac"):
        load_config(CurationConfig, overrides=["valid_frac=0.5", "test_frac=0.5"])
    with pytest.raises(ConfigError, match="field 'max_per_user': must be at least 1"):
        load_config(CurationConfig, overrides=["max_per_user=0"])
    assert load_config(CurationConfig, overrides=["prefix_chars=10"]).prefix_chars == 10
