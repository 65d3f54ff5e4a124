"""The video files of clip comparisons: which file an assignment's side is, decided on the server.

A client asks for "assignment 12, side 0", never for a file: the assignment passes the one permission
check (:func:`.batches.visible_assignment`: the labeler's own, or any for an admin), and its item names the
clip, whose id passed the name rule at import (no '/', no leading '.'), so no request can reach a file
outside the clips folder or a clip of someone else's assignment.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from tiller.data.formats import DataError

from ..errors import NotFound
from ..models import User
from ..records import clip_file
from .batches import visible_assignment


def clip_path(session: Session, user: User, assignment_id: int, side: int, clips_dir: Path | None) -> Path:
    """The MP4 of ``side`` (0 left = a, 1 right = b) of a clip assignment ``user`` may see; 404 otherwise."""
    a = visible_assignment(session, user, assignment_id)
    clips = a.item.responses or []
    if a.item.batch.kind != "clip" or side not in (0, 1) or len(clips) != 2:
        raise NotFound(f"assignment {assignment_id} has no clip {side}")
    if clips_dir is None:
        raise NotFound("this app serves no clips (start it with --clips-dir)")
    try:
        path = clip_file(clips_dir, str(clips[side]))
    except DataError:  # a row written around the importer: refuse rather than follow it
        raise NotFound(f"assignment {assignment_id} has no clip {side}") from None
    if not path.is_file():
        raise NotFound(f"clip {clips[side]!r} is missing from the clips folder")
    return path
