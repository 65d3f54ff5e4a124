"""Request and response bodies of the JSON API: one schema per direction (``...Create`` in, ``...Public`` out)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tiller.data.formats import MAX_TIME_S, DataError, check_text, normalize_newlines

# Every number a client sends is checked here, at the door, so SQLite and PostgreSQL never see one they
# would treat differently (issue #15): ids fit PostgreSQL's INTEGER, pages hold 1-1000 rows.
MAX_DB_ID = 2**31 - 1
MAX_PAGE = 1000
DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="a database id")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows to return, 1-1000")]
AssignmentStatus = Literal["pending", "done", "skipped", "closed"]
ClipSide = Annotated[int, Path(ge=0, le=1, description="0: the left clip (a), 1: the right clip (b)")]


def _text(value: str) -> str:
    """Typed text (an answer, a chat turn): newlines as ``\n``, and no NUL (see ``check_text``)."""
    try:
        return check_text(normalize_newlines(value))
    except DataError as e:
        raise ValueError(e.reason) from None


Text = Annotated[str, AfterValidator(_text)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_TIME_S, allow_inf_nan=False,
                                 description="time spent on the label, 0-86400 s")]


class RankingCreate(BaseModel):
    """A ranking of the K answers, best first: ``[[2], [0, 1], [3]]`` is 3rd > 1st = 2nd > 4th."""

    model_config = ConfigDict(extra="forbid")
    ranking: list[list[int]]
    likert: list[int]
    flags: list[list[str]] | None = None
    time_spent_s: Seconds = 0.0
    idempotency_key: str | None = None


class DemonstrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: Text = Field(max_length=100_000)
    time_spent_s: Seconds = 0.0
    idempotency_key: str | None = None


class ClipChoiceCreate(BaseModel):
    """Which of two clips does the task better: ``left`` (a), ``right`` (b), ``equal``, or ``cant_tell``
    (recorded, never exported for training; Christiano et al. 2017 sec. 2.2)."""

    model_config = ConfigDict(extra="forbid")
    choice: Literal["left", "right", "equal", "cant_tell"]
    time_spent_s: Seconds = 0.0
    idempotency_key: str | None = None


class LabelPublic(BaseModel):
    id: int
    assignment_id: int
    ranking: list[list[int]] | None
    likert: list[int] | None
    flags: list[list[str]] | None
    response: str | None
    time_spent_s: float
    choice: str | None = None
    replayed: bool = False


class AssignmentPublic(BaseModel):
    id: int
    batch: str
    kind: str
    item_id: str
    status: str
    labeler: str
    prompt: list[dict[str, str]]
    responses: list[str] | None  # None for a clip comparison: its clips are fetched by URL (``clips``)
    clips: list[str] | None = None  # a clip comparison's two videos (left, right), served by assignment


class BatchPublic(BaseModel):
    name: str
    kind: str
    overlap: int
    items: int
    assignments: dict[str, int]
    per_labeler: dict[str, dict[str, int]]
    agreement: float | None = None
    compared_pairs: int = 0
    tau_b: float | None = None


class UserPublic(BaseModel):
    id: int
    name: str
    role: str


class ConversationCreate(BaseModel):
    model: str = Field(max_length=255)


class ConversationPublic(BaseModel):
    id: int
    model: str
    messages: list[dict[str, Any]]


class TurnCreate(BaseModel):
    content: Text = Field(min_length=1, max_length=20_000)
    consent: bool = False
    max_new_tokens: int = Field(default=128, ge=1, le=1024)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="sampling seed: the same answer again")


class ComparisonPublic(BaseModel):
    id: int
    responses: list[str]


class ChoiceCreate(BaseModel):
    choice: Literal[0, 1]


class RatingCreate(BaseModel):
    value: Literal[-1, 1]
