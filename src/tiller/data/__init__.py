"""Record formats, readers/writers, importers of public preference data, and prompt curation."""

from tiller.data.formats import (
    FLAGS,
    DataError,
    Demonstration,
    Pair,
    PromptRecord,
    Ranking,
    SampleSet,
    pair_to_ranking,
    ranking_to_pairs,
)
from tiller.data.io import RecordList, read_records, write_jsonl

__all__ = [
    "FLAGS",
    "DataError",
    "Demonstration",
    "Pair",
    "PromptRecord",
    "Ranking",
    "RecordList",
    "SampleSet",
    "pair_to_ranking",
    "ranking_to_pairs",
    "read_records",
    "write_jsonl",
]
