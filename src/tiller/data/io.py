"""Reading and writing record files: JSONL (optionally .gz), JSON (a list), parquet, a datasets folder.

Reading is strict by default: the first bad record raises :class:`DataError` naming the file, the line
(JSONL, 1-based) or record index (other formats, 0-based) and the field. With ``skip_bad=True`` bad records
are skipped, but never silently: each is logged and kept in ``RecordList.problems``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from tiller.data.formats import DataError, kind_class

log = logging.getLogger(__name__)
T = TypeVar("T")


class RecordList(list[T], Generic[T]):
    """The records read, plus ``problems``: one :class:`DataError` per record skipped (``skip_bad``)."""

    def __init__(self, records: Iterable[T] = (), problems: list[DataError] | None = None):
        super().__init__(records)
        self.problems: list[DataError] = problems or []


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _jsonl_rows(path: Path, text: Iterable[str]) -> Iterator[tuple[DataError | None, Any, dict[str, Any]]]:
    for n, line in enumerate(text, 1):
        if not line.strip():
            continue  # blank lines (a trailing newline, a hand-edited file) are not records
        try:
            yield None, json.loads(line), {"line": n}
        except json.JSONDecodeError as e:
            yield DataError(f"not valid JSON ({e.msg} at column {e.colno})").at(str(path), line=n), None, {}


def iter_rows(path: str | Path) -> Iterator[tuple[DataError | None, Any, dict[str, Any]]]:
    """Raw rows of a file: (error or None, JSON value, location ``{"line": n}`` or ``{"record": i}``).

    The format comes from the name: ``.jsonl``/``.jsonl.gz``, ``.json``/``.json.gz`` (a list; JSON lines
    are accepted too, as the Hub often names them ``.json``), ``.parquet``, or a ``save_to_disk`` folder."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found").at(str(p))
    if p.is_dir():
        yield from _dataset_rows(p)
        return
    suffixes = [s for s in p.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no py.typed

        for i, row in enumerate(pq.read_table(p).to_pylist()):
            yield None, row, {"record": i}
        return
    with _open_text(p) as f:
        if ext != ".json":
            yield from _jsonl_rows(p, f)
            return
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file
            yield from _jsonl_rows(p, text.splitlines())
            return
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})").at(str(p)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON list of records").at(str(p))
    for i, row in enumerate(data):
        yield None, row, {"record": i}


def _dataset_rows(p: Path) -> Iterator[tuple[DataError | None, Any, dict[str, Any]]]:
    import datasets  # type: ignore[import-untyped]  # datasets ships no py.typed

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataError(f"not a datasets save_to_disk folder ({e})").at(str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"a DatasetDict: give one split's folder ({', '.join(ds)})").at(str(p))
    for i, row in enumerate(ds):
        yield None, row, {"record": i}


def convert_rows(
    path: str | Path, convert: Callable[..., T], skip_bad: bool = False, located: bool = False
) -> RecordList[T]:
    """Apply ``convert`` (raising :class:`DataError`) to each row, locating errors in the file.

    With ``located``, ``convert`` also gets the row's location (``{"line": n}`` or ``{"record": i}``)."""
    records: RecordList[T] = RecordList()
    for err, row, loc in iter_rows(path):
        if err is None:
            try:
                records.append(convert(row, loc) if located else convert(row))
                continue
            except DataError as e:
                err = e.at(str(path), **loc)
        if not skip_bad:
            raise err
        log.warning("skipped %s", err)
        records.problems.append(err)
    return records


def read_records(path: str | Path, kind: str, skip_bad: bool = False, allow_empty: bool = False) -> RecordList[Any]:
    """Records of one kind (``prompt``, ``demonstration``, ``sample``, ``ranking``, ``pair``) from a file.

    An empty response is refused unless ``allow_empty`` (every other check is unchanged)."""
    from_json = kind_class(kind).from_json
    return convert_rows(path, lambda row: from_json(row, allow_empty=allow_empty), skip_bad)


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write records (format objects or dicts) as JSONL, atomically: a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                obj = r.to_json() if hasattr(r, "to_json") else r
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
