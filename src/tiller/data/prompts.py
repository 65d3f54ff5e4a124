"""Prompt curation as InstructGPT did it (Ouyang et al. 2022, section 3.2 and appendix A).

In order: drop prompts without consent; de-duplicate prompts sharing a long common prefix (keep the
first); keep at most N prompts per user; split train/valid/test by user, so no user's prompts leak from
training into evaluation; scrub PII (emails, phone numbers, card-like numbers, street addresses) to
placeholders. Pure functions over :class:`PromptRecord` lists, each returning what it removed or changed,
and :func:`curate` chaining them into one report.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from tiller.config import ConfigError, field, to_dict
from tiller.data.formats import SPLITS, PromptRecord


@dataclass
class CurationConfig:
    prefix_chars: int = field(40, help="prompts whose first N characters match (case and spaces folded) are duplicates")
    max_per_user: int = field(200, help="keep at most this many prompts per user id (InstructGPT: 200)")
    valid_frac: float = field(0.1, help="share of users whose prompts go to the valid split")
    test_frac: float = field(0.1, help="share of users whose prompts go to the test split")
    seed: int = field(0, help="seed for the split by user id")
    scrub_pii: bool = field(True, help="replace emails, phones, card numbers, addresses with placeholders")
    luhn_check: bool = field(False, help="only treat 13-19 digit numbers as cards when the Luhn check passes")

    def validate(self) -> None:
        if self.prefix_chars < 1:
            raise ConfigError("field 'prefix_chars': must be at least 1")
        if self.max_per_user < 1:
            raise ConfigError("field 'max_per_user': must be at least 1")
        for name in ("valid_frac", "test_frac"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"field {name!r}: must be in [0, 1)")
        if self.valid_frac + self.test_frac >= 1.0:
            raise ConfigError("field 'test_frac': valid_frac + test_frac must leave some users for train")


def prompt_text(r: PromptRecord) -> str:
    return "\n".join(m["content"] for m in r.prompt)


def dedup_by_prefix(records: list[PromptRecord], prefix_chars: int) -> tuple[list[PromptRecord], int]:
    """Keep the first prompt of each prefix (first ``prefix_chars`` characters, case and runs of spaces
    folded); shorter prompts are compared whole. Returns (kept, number removed)."""
    seen: set[str] = set()
    kept = []
    for r in records:
        key = " ".join(prompt_text(r).casefold().split())[:prefix_chars]
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(records) - len(kept)


def cap_per_user(records: list[PromptRecord], max_per_user: int) -> tuple[list[PromptRecord], int]:
    """At most ``max_per_user`` prompts per user id, the first ones in file order."""
    counts: Counter[str] = Counter()
    kept = []
    for r in records:
        counts[r.user_id] += 1
        if counts[r.user_id] <= max_per_user:
            kept.append(r)
    return kept, len(records) - len(kept)


def user_split(user_id: str, valid_frac: float, test_frac: float, seed: int) -> str:
    """The split of a user: a hash of (seed, user id) mapped to [0, 1), so a user's split never changes as
    more prompts or users arrive in later rounds (fractions hold in expectation over users)."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


def assign_splits(records: list[PromptRecord], valid_frac: float, test_frac: float, seed: int) -> list[PromptRecord]:
    """Every record with ``split`` set from its user id (any split already there is replaced)."""
    return [replace(r, split=user_split(r.user_id, valid_frac, test_frac, seed)) for r in records]  # type: ignore[arg-type]


# --- PII ------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, single spaces or dashes allowed between them.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# +CC, area code (plain or in parentheses), then 3-4 and 4 digits, separated by space, dot or dash.
_PHONE = re.compile(
    r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?![\w-])"
)
_STREET = r"Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Way|Terrace|Square|Parkway|Highway|Crescent|Close"
_STREET_ABBR = r"St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Sq|Pkwy|Hwy"  # may end in a period, which goes with them
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][A-Za-z'-]*\s+){{1,3}}(?:(?:{_STREET})\b|(?:{_STREET_ABBR})\b\.?)"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scrub_pii(text: str, luhn_check: bool = False) -> tuple[str, Counter[str]]:
    """Replace PII with ``[EMAIL]``, ``[CARD]``, ``[PHONE]``, ``[ADDRESS]``; returns (text, counts per rule).

    Cards go before phones so a card number is not read as a phone number. Heuristics: they catch the
    common shapes, not every one (InstructGPT also filtered PII heuristically, appendix A.2)."""
    counts: Counter[str] = Counter()

    def sub(pattern: re.Pattern[str], name: str, s: str, keep=lambda m: True) -> str:
        def one(m: re.Match[str]) -> str:
            if not keep(m):
                return m.group(0)
            counts[name] += 1
            return f"[{name.upper()}]"

        return pattern.sub(one, s)

    text = sub(_EMAIL, "email", text)
    text = sub(_CARD, "card", text, lambda m: not luhn_check or luhn_ok(re.sub(r"\D", "", m.group(0))))
    text = sub(_PHONE, "phone", text)
    text = sub(_ADDRESS, "address", text)
    return text, counts


def scrub_records(records: list[PromptRecord], luhn_check: bool = False) -> tuple[list[PromptRecord], Counter[str], int]:
    """Scrub every message of every prompt; returns (records, replacements per rule, prompts changed)."""
    total: Counter[str] = Counter()
    out, changed = [], 0
    for r in records:
        msgs = []
        n_before = sum(total.values())
        for m in r.prompt:
            content, counts = scrub_pii(m["content"], luhn_check)
            total.update(counts)
            msgs.append({**m, "content": content})
        changed += sum(total.values()) > n_before
        out.append(replace(r, prompt=msgs))
    return out, total, changed


def curate(records: list[PromptRecord], cfg: CurationConfig) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Consent, dedup, per-user cap, split by user, PII scrub (in that order); returns (records, report)."""
    n_in = len(records)
    # 1. consent: a prompt whose writer said no is never used (consent missing means given, e.g. imports)
    kept = [r for r in records if r.consent is not False]
    no_consent = n_in - len(kept)
    # 2. prompts sharing a long common prefix (section 3.2)
    kept, duplicates = dedup_by_prefix(kept, cfg.prefix_chars)
    # 3. at most 200 prompts per user id (section 3.2)
    kept, over_cap = cap_per_user(kept, cfg.max_per_user)
    # 4. train/valid/test by user id (section 3.2)
    kept = assign_splits(kept, cfg.valid_frac, cfg.test_frac, cfg.seed)
    # 5. PII (section 3.2: filtered from the training split; here from every split)
    pii: Counter[str] = Counter()
    scrubbed = 0
    if cfg.scrub_pii:
        kept, pii, scrubbed = scrub_records(kept, cfg.luhn_check)
    splits = {
        s: {"prompts": sum(r.split == s for r in kept), "users": len({r.user_id for r in kept if r.split == s})}
        for s in SPLITS
    }
    report = {
        "input": n_in,
        "output": len(kept),
        "removed": {"no_consent": no_consent, "duplicate_prefix": duplicates, "over_user_cap": over_cap},
        "pii": {k: pii.get(k, 0) for k in ("email", "phone", "card", "address")},
        "prompts_scrubbed": scrubbed,
        "splits": splits,
        "config": to_dict(cfg),
    }
    return kept, report
