"""Database tables of the labeling app (SQLAlchemy 2 declarative; the schema itself lives in Alembic).

A *batch* holds *items* (a prompt and, for ranking, K answers; for a clip comparison, a task and two clip
ids); each item is given to ``overlap`` distinct
labelers as *assignments*; a finished assignment has exactly one *label*. Uniqueness is enforced by the
database, not by the code: one label per assignment and one label per idempotency key, so a double click
or a retried request can never store two labels (InstructGPT appendix B: every comparison counts once).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tiller.data.formats import FLAGS as DATA_FLAGS

ROLES = ("admin", "labeler")
BATCH_KINDS = ("rank", "demo", "clip")
# The answers of a clip comparison (Christiano et al. 2017 sec. 2.2: one clip preferred, equally good, or
# "can't tell", which is recorded but kept out of the training data) and the K=2 ranking each one means
# (left = clip a = answer 0), so agreement between labelers is measured as for rankings.
CLIP_CHOICES = ("left", "right", "equal", "cant_tell")
CLIP_RANKINGS: dict[str, list[list[int]] | None] = {
    "left": [[0], [1]], "right": [[1], [0]], "equal": [[0, 1]], "cant_tell": None,
}
# closed: still pending when its batch went on without it (label.min_done < 1); never handed out or exported
ASSIGNMENT_STATUSES = ("pending", "done", "skipped", "closed")
# The per-answer metadata of the InstructGPT labeling interface (Ouyang et al. 2022, Table 3 / Fig. 12),
# shared with the rankings file format.
FLAGS = DATA_FLAGS


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Setting(Base):
    """Key/value settings kept with the data. Not secrets: since migration 0002 the session signing key
    lives outside the database (``$TILLER_APP_SECRET`` or a 0600 file, see :func:`.security.load_secret`)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """An account. ``name_key`` (NFKC + casefold of the name) is unique, so ``Ana`` and ``ana`` cannot both
    exist; NULL only for a pre-0002 name whose key collided with an older one. ``session_version`` is
    embedded in the signed session cookie: bumping it (logout, password change) revokes every session.
    ``failed_logins`` / ``locked_until``: the per-name exponential login backoff."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("name_key", name="uq_users_name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    name_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ApiToken(Base):
    """A bearer token for the JSON API; only its SHA-256 is stored (tokens are 256-bit random)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[User] = relationship()


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    overlap: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list[Item]] = relationship(back_populates="batch", order_by="Item.position")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("batch_id", "external_id", name="uq_items_batch_external"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    responses: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    batch: Mapped[Batch] = relationship(back_populates="items")


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_assignments_item_user"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(8), default="pending", index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    item: Mapped[Item] = relationship()
    user: Mapped[User] = relationship()
    label: Mapped[Label | None] = relationship(back_populates="assignment", uselist=False)


class Label(Base):
    """A ranking (with Likert scores and flags), a demonstration, or a clip comparison's ``choice`` (one of
    ``CLIP_CHOICES``, with its ranking), for one assignment."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    ranking: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    likert: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    flags: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)
    time_spent_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    assignment: Mapped[Assignment] = relationship(back_populates="label")


class Conversation(Base):
    """A playground chat with one checkpoint."""

    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    messages: Mapped[list[ChatMessage]] = relationship(order_by="ChatMessage.position")


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # thumbs: +1 / -1
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ChatPrompt(Base):
    """Every prompt a user typed, with their consent to its use for training (InstructGPT sec. 3.2)."""

    __tablename__ = "chat_prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    consent: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[User] = relationship()


class ChatComparison(Base):
    """Two sampled answers to one turn and the one the user preferred (0 or 1; None until chosen)."""

    __tablename__ = "chat_comparisons"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    responses: Mapped[list[Any]] = mapped_column(JSON)
    choice: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
