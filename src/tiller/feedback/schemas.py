"""Request and response bodies of the JSON API: one schema per direction (``...Create`` in, ``...Public`` out)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RankingCreate(BaseModel):
    """A ranking of the K answers, best first: ``[[2], [0, 1], [3]]`` is 3rd > 1st = 2nd > 4th."""

    model_config = ConfigDict(extra="forbid")
    ranking: list[list[int]]
    likert: list[int]
    flags: list[list[str]] | None = None
    time_spent_s: float = 0.0
    idempotency_key: str | None = None


class DemonstrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: str = Field(max_length=100_000)
    time_spent_s: float = 0.0
    idempotency_key: str | None = None


class LabelPublic(BaseModel):
    id: int
    assignment_id: int
    ranking: list[list[int]] | None
    likert: list[int] | None
    flags: list[list[str]] | None
    response: str | None
    time_spent_s: float
    replayed: bool = False


class AssignmentPublic(BaseModel):
    id: int
    batch: str
    kind: str
    item_id: str
    status: str
    labeler: str
    prompt: list[dict[str, str]]
    responses: list[str] | None


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
    model: str


class ConversationPublic(BaseModel):
    id: int
    model: str
    messages: list[dict[str, Any]]


class TurnCreate(BaseModel):
    content: str = Field(min_length=1, max_length=20_000)
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
