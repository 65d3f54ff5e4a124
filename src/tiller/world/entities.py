"""The fictional world: people, places, rivers, venues, and people who do not exist.

Everything the corpus states and the facts family asks about lives here; ``world.json`` stores it so the
judge can check a claim ("Mira Tolan was born in Kest") against the truth.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from tiller.world.names import NameGen

JOBS = ("baker", "smith", "farmer", "miller", "weaver", "potter", "teacher", "fisher", "tailor", "guard",
        "cook", "singer", "doctor", "builder", "sailor", "painter")
PLACE_KINDS = ("town", "village", "city")
VENUE_KINDS = ("Inn", "Bakery", "Mill", "Market", "Tavern", "Garden")
YEARS = (1800, 1899)
# Short common words used by tasks (strings family, multiturn opposites); names must never equal them.
WORDS = ("lamp", "river", "apple", "bread", "stone", "horse", "candle", "garden", "window", "market", "table",
         "silver", "cloud", "field", "house", "bridge", "forest", "letter", "winter", "summer", "tower", "boat",
         "honey", "paper", "music", "basket", "mirror", "rabbit", "pepper", "kettle")
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "old": "young",
             "early": "late", "open": "closed", "full": "empty", "high": "low", "long": "short", "wet": "dry",
             "loud": "quiet", "rich": "poor", "hard": "soft", "clean": "dirty"}


@dataclass
class Person:
    name: str
    first: str
    last: str
    pronoun: str  # "she" | "he"
    born_in: str
    year: int
    job: str

    @property
    def possessive(self) -> str:
        return "her" if self.pronoun == "she" else "his"


@dataclass
class Place:
    name: str
    kind: str
    river: str


@dataclass
class Venue:
    name: str  # "the Kalder Inn" (lower-case article, as inside a sentence)
    place: str

    @property
    def title(self) -> str:
        """The name at the start of a sentence: "The Kalder Inn"."""
        return self.name[0].upper() + self.name[1:]


@dataclass
class Entities:
    people: list[Person] = field(default_factory=list)
    places: list[Place] = field(default_factory=list)
    rivers: list[str] = field(default_factory=list)
    venues: list[Venue] = field(default_factory=list)
    fake_people: list[str] = field(default_factory=list)

    def person(self, name: str) -> Person | None:
        return next((p for p in self.people if p.name == name), None)

    def place(self, name: str) -> Place | None:
        return next((p for p in self.places if p.name == name), None)

    def venue(self, name: str) -> Venue | None:
        return next((v for v in self.venues if v.name == name), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Entities:
        return cls(
            people=[Person(**p) for p in d["people"]],
            places=[Place(**p) for p in d["places"]],
            rivers=list(d["rivers"]),
            venues=[Venue(**v) for v in d["venues"]],
            fake_people=list(d["fake_people"]),
        )


def build_entities(rng: random.Random, n_people: int, n_places: int, n_venues: int, n_fake: int) -> Entities:
    """Draw the world. Names are unique across kinds, so a place name in a text is never a surname."""
    blocked = set(JOBS) | set(WORDS) | set(OPPOSITES) | set(OPPOSITES.values()) | {k.lower() for k in VENUE_KINDS}
    names = NameGen(rng, blocked=blocked)
    rivers = names.many(max(2, n_places // 2), (2,))
    places = [Place(n, rng.choice(PLACE_KINDS), rng.choice(rivers)) for n in names.many(n_places, (1, 2))]
    firsts = names.many(n_people + n_fake, (2,))
    lasts = names.many(n_people + n_fake, (2,))
    people = []
    for first, last in zip(firsts[:n_people], lasts[:n_people], strict=True):
        people.append(Person(name=f"{first} {last}", first=first, last=last, pronoun=rng.choice(("she", "he")),
                             born_in=rng.choice(places).name, year=rng.randint(*YEARS), job=rng.choice(JOBS)))
    # People who do not exist get their own first and last names: no real person is ever half-named in them.
    fake = [f"{f} {la}" for f, la in zip(firsts[n_people:], lasts[n_people:], strict=True)]
    venue_names = names.many(n_venues, (2,))
    venues = [Venue(f"the {n} {rng.choice(VENUE_KINDS)}", rng.choice(places).name) for n in venue_names]
    return Entities(people=people, places=places, rivers=rivers, venues=venues, fake_people=fake)
