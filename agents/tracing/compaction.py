"""Crash-safe compaction: merge one writer's small Parquet files in a partition into one file.

A writer's files are named after the write-ahead-log segments they hold: `part-<writer>-<seg>.parquet`
for one segment, `part-<writer>-<first>--<last>.parquet` for a merge. Only files of segments
already removed from the log are merged, so a segment republished after a crash can never
duplicate rows that were merged away.

Protocol: (1) an intent file in the log folder names the inputs and the output; (2) the output is
published atomically; (3) the inputs are removed; (4) the intent is removed. Recovery reads each
intent left behind: output present, remove what is left of the inputs (roll forward); output
absent, drop the intent (roll back; the inputs are untouched). Between (2) and (3) a reader
listing the folder can see both the output and the inputs: the views keep one row per event_id.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from opsagent.agents.tracing.files import remove, tmp_path, write_json, write_parquet

log = logging.getLogger(__name__)

_SEG = r"\d{6}-\d{8}"
PART = re.compile(rf"^part-(?P<writer>[0-9a-f]{{8}})-(?P<first>{_SEG})(?:--(?P<last>{_SEG}))?\.parquet$")


def part_name(writer_id: str, first: str, last: str | None = None) -> str:
    """The file name of the rows of segments `first`..`last` (one segment if `last` is None)."""
    span = first if last is None or last == first else f"{first}--{last}"
    return f"part-{writer_id}-{span}.parquet"


@dataclass(frozen=True)
class Compaction:
    """Merge `inputs` (file names in `folder`) into `output`."""

    folder: Path
    inputs: tuple[str, ...]
    output: str


def plan(folder: Path, writer_id: str, live: set[str], *, min_files: int,
         max_bytes: int) -> Compaction | None:
    """The merge of this writer's small files in `folder`, if there are at least `min_files`."""
    spans = {}
    for path in folder.glob(f"part-{writer_id}-*.parquet"):
        match = PART.match(path.name)
        if match is None or path.stat().st_size >= max_bytes:
            continue
        first, last = match["first"], match["last"] or match["first"]
        if first in live or last in live:  # still in the log: it may be published again
            continue
        spans[path.name] = (first, last)
    while len(spans) >= min_files:
        first = min(f for f, _ in spans.values())
        last = max(last for _, last in spans.values())
        output = part_name(writer_id, first, last)
        if output in spans:  # the widest input already has the output's name: leave it out
            del spans[output]
            continue
        if (folder / output).exists():
            log.warning("not compacting %s: %s exists and is not an input", folder, output)
            return None
        return Compaction(folder, tuple(sorted(spans, key=spans.__getitem__)), output)
    return None


def run(compaction: Compaction, root: Path, intents: Path) -> Path:
    """Carry out a merge crash-safely; returns the output file."""
    folder, output = compaction.folder, compaction.folder / compaction.output
    intent = intents / _intent_name(folder, compaction.output)
    write_json(intent, {"folder": folder.relative_to(root).as_posix(),
                        "inputs": list(compaction.inputs), "output": compaction.output})
    write_parquet(output, merge([pq.read_table(folder / name) for name in compaction.inputs]))
    for name in compaction.inputs:
        remove(folder / name)
    remove(intent)
    return output


def recover(root: Path, intents: Path) -> int:
    """Finish or roll back every merge a crash interrupted; returns how many there were."""
    count = 0
    for path in sorted(intents.glob("compact-*.json")):
        spec = json.loads(path.read_text())
        folder = root / spec["folder"]
        if (folder / spec["output"]).exists():
            for name in spec["inputs"]:
                remove(folder / name)
        else:
            tmp_path(folder / spec["output"]).unlink(missing_ok=True)
        remove(path)
        count += 1
    for stale in intents.glob(".compact-*.json.tmp"):
        stale.unlink()
    return count


def merge(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate tables by column name: a column an older file lacks is null there (and
    nullable in the result); the newest table's schema metadata is kept."""
    tables = list(tables)
    fields: dict[str, pa.Field] = {}
    for table in tables:
        for field in table.schema:
            fields.setdefault(field.name, field)
    columns, schema = [], []
    for name, field in fields.items():
        chunks = [t.column(name).chunks if name in t.column_names else [pa.nulls(t.num_rows, field.type)]
                  for t in tables]
        column = pa.chunked_array([c for cs in chunks for c in cs], type=field.type)
        columns.append(column)
        schema.append(field.with_nullable(field.nullable or column.null_count > 0))
    return pa.Table.from_arrays(columns, schema=pa.schema(schema, metadata=tables[-1].schema.metadata))


def _intent_name(folder: Path, output: str) -> str:
    return f"compact-{folder.parent.name}-{folder.name}-{output.removesuffix('.parquet')}.json"
