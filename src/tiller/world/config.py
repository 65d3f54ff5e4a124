"""Settings of the embedded default world: sizes of everything, the demo writers' habits, the labelers' noise.

Every size is a knob so the same code builds the default world (~1.5M characters of corpus, ~1.9k prompts)
and a tiny one for tests (a few KB, a few dozen prompts) in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiller.config import ConfigError, field

FAMILIES = ("arithmetic", "lists", "strings", "facts", "style", "harmful", "multiturn")


@dataclass
class WorldConfig:
    seed: int = field(0, help="Seed of everything: the same seed writes byte-identical files.")
    # -- the fictional world (what the corpus teaches and the facts family asks about)
    n_people: int = field(24, help="People with a birthplace, a birth year and a job.")
    n_places: int = field(12, help="Towns and villages, each on a river.")
    n_venues: int = field(16, help="Inns, bakeries, mills... in those places (reviewed by the style family).")
    n_fake_people: int = field(20, help="Names of people who do NOT exist (the hallucination test).")
    fake_fraction: float = field(0.3, help="Share of facts prompts asking about a person who does not exist.")
    # -- prompts and users; splits are by user (InstructGPT sec. 3.2: held-out users in validation/test)
    n_train_users: int = field(42, help="Users whose prompts go to the train split.")
    n_valid_users: int = field(7, help="Users whose prompts go to the valid split.")
    n_test_users: int = field(14, help="Held-out users whose prompts go to the test split.")
    families_per_user: int = field(3, help="How many prompt families each user writes.")
    n_train_prompts: int = field(1400, help="Train prompts in total, spread evenly over the families.")
    n_valid_prompts: int = field(140, help="Valid prompts in total, spread evenly over the families.")
    n_test_per_family: int = field(60, help="Test prompts per family.")
    # -- demonstrations (InstructGPT sec. 3.3: labeler-written demonstrations for SFT)
    n_demos: int = field(800, help="Train prompts that get a written demonstration.")
    n_demo_writers: int = field(8, help="Simulated demo writers (the same people as the labelers).")
    demo_family_weights: dict[str, float] = field(
        default_factory=lambda: {"harmful": 0.1, "facts": 0.5},
        help="Relative chance that a prompt of a family gets a demonstration (others 1.0). Fewer demos of "
             "refusals and of 'I don't know' leave SFT imperfect there, as InstructGPT's SFT was: its "
             "demonstrations were mostly helpfulness tasks and the comparisons taught the rest.")
    demo_variation: float = field(0.3, help="Share of demos with a habit the judge mildly dislikes (filler, wordy).")
    demo_mistake: float = field(0.03, help="Share of demos with a small mistake (a wrong number or fact).")
    constraint_fraction: float = field(
        0.5, help="Share of prompts of every family with an explicit constraint ('Answer in one sentence.', "
                  "tiller.world.constraints). 0 builds the world of tiller before issue #17 byte for byte.")
    demo_constraint_miss: float = field(
        0.3, help="Share of demos whose writer overlooks the prompt's explicit constraint and writes the usual "
                  "answer: the same rate as the habits of demo_variation (a constraint is one more thing to "
                  "remember); the habits then break some of the rest (filler is a second sentence).")
    # -- pretraining corpus
    corpus_chars: int = field(1_500_000, help="Characters of pretraining text (train split).")
    corpus_valid_frac: float = field(0.05, help="Size of corpus-valid.jsonl relative to corpus-train.jsonl.")
    # -- simulated labelers (InstructGPT sec. 3.4 / app. B: inter-annotator agreement 72.6 +- 1.5%)
    n_labelers: int = field(8, help="Simulated labelers in the pool.")
    labeler_temperature: float = field(0.3, help="Bradley-Terry noise: P(a > b) = sigmoid((u_a - u_b) / T).")
    labeler_bias: float = field(0.25, help="Spread (log-normal sd) of each labeler's weights on the aspects.")
    labeler_tie: float = field(0.05, help="Noisy utilities closer than this are ranked as a tie.")
    flag_noise: float = field(0.03, help="Chance a labeler flips any one metadata flag.")
    agreement_items: int = field(300, help="K=4 items ranked by two labelers to measure agreement at build.")

    def validate(self) -> None:
        for name in ("n_people", "n_places", "n_venues", "n_fake_people", "n_labelers", "n_demo_writers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field {name!r} must be at least 1")
        for name in ("n_train_users", "n_valid_users", "n_test_users"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field {name!r} must be at least 1 (every split needs a user)")
        if not 1 <= self.families_per_user <= len(FAMILIES):
            raise ConfigError(f"field 'families_per_user' must be in 1..{len(FAMILIES)}")
        for name in ("fake_fraction", "demo_variation", "demo_mistake", "flag_noise", "constraint_fraction",
                     "demo_constraint_miss"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"field {name!r} must be in [0, 1]")
        for fam, w in self.demo_family_weights.items():
            if fam not in FAMILIES or w < 0:
                raise ConfigError(f"field 'demo_family_weights': {fam!r} must be a family with a weight >= 0")
        if self.n_demos > self.n_train_prompts:
            raise ConfigError("field 'n_demos' cannot exceed 'n_train_prompts'")
        for name in ("labeler_temperature", "labeler_bias", "labeler_tie", "corpus_valid_frac"):
            if getattr(self, name) < 0:
                raise ConfigError(f"field {name!r} must be >= 0")
        for name in ("n_train_prompts", "n_valid_prompts", "n_test_per_family", "n_demos", "corpus_chars",
                     "agreement_items"):
            if getattr(self, name) < 0:
                raise ConfigError(f"field {name!r} must be >= 0")
