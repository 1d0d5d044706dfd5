"""Crash-safe compaction: merge one writer's small Parquet files in a partition into one file.

A writer's files are named after the write-ahead-log segments they hold: `part-<writer>-<seg>.parquet`
for one segment, `part-<writer>-<first>--<last>.parquet` for a merge. Only files of segments
already removed from the log are merged, so a segment republished after a crash can never
duplicate rows that were merged away.

Protocol: (1) an intent file in the (local) log folder names the inputs and the output; (2) the
output is published atomically (a local rename or one object upload); (3) the inputs are removed;
(4) the intent is removed. Recovery reads each intent left behind: output present, remove what is
left of the inputs (roll forward); output absent, drop the intent (roll back; the inputs are
untouched). Between (2) and (3) a reader listing the folder can see both the output and the
inputs: the views keep one row per event_id. Folders are paths relative to the store's root.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from opsagent.agents.tracing.files import remove, write_json
from opsagent.agents.tracing.storage import TraceStore

log = logging.getLogger(__name__)

_SEG = r"\d{6}-\d{8}"
PART = re.compile(rf"^part-(?P<writer>[0-9a-f]{{8}})-(?P<first>{_SEG})(?:--(?P<last>{_SEG}))?\.parquet$")


def part_name(writer_id: str, first: str, last: str | None = None) -> str:
    """The file name of the rows of segments `first`..`last` (one segment if `last` is None)."""
    span = first if last is None or last == first else f"{first}--{last}"
    return f"part-{writer_id}-{span}.parquet"


@dataclass(frozen=True)
class Compaction:
    """Merge `inputs` (file names in `folder`, relative to the root) into `output`."""

    folder: str
    inputs: tuple[str, ...]
    output: str


def plan(store: TraceStore, folder: str, writer_id: str, live: set[str], *, min_files: int,
         max_bytes: int) -> Compaction | None:
    """The merge of this writer's small files in `folder`, if there are at least `min_files`."""
    spans = {}
    present = store.listdir(folder)
    for file in present:
        match = PART.match(file.name)
        if match is None or match["writer"] != writer_id or file.size >= max_bytes:
            continue
        first, last = match["first"], match["last"] or match["first"]
        if first in live or last in live:  # still in the log: it may be published again
            continue
        spans[file.name] = (first, last)
    while len(spans) >= min_files:
        first = min(f for f, _ in spans.values())
        last = max(last for _, last in spans.values())
        output = part_name(writer_id, first, last)
        if output in spans:  # the widest input already has the output's name: leave it out
            del spans[output]
            continue
        if output in {f.name for f in present}:
            log.warning("not compacting %s: %s exists and is not an input", folder, output)
            return None
        return Compaction(folder, tuple(sorted(spans, key=spans.__getitem__)), output)
    return None


def run(compaction: Compaction, store: TraceStore, intents: Path) -> str:
    """Carry out a merge crash-safely (the intent in the local folder `intents`); returns the
    output's location."""
    folder = compaction.folder
    intent = intents / _intent_name(folder, compaction.output)
    write_json(intent, {"folder": folder, "inputs": list(compaction.inputs), "output": compaction.output})
    merged = merge([store.read_parquet(f"{folder}/{name}") for name in compaction.inputs])
    written = store.write_parquet(f"{folder}/{compaction.output}", merged)
    for name in compaction.inputs:
        store.remove(f"{folder}/{name}")
    remove(intent)
    return written


def recover(store: TraceStore, intents: Path) -> int:
    """Finish or roll back every merge a crash interrupted; returns how many there were."""
    count = 0
    for path in sorted(intents.glob("compact-*.json")):
        spec = json.loads(path.read_text())
        folder = spec["folder"]
        if store.exists(f"{folder}/{spec['output']}"):
            for name in spec["inputs"]:
                store.remove(f"{folder}/{name}")
        else:
            store.discard_partials(f"{folder}/.{spec['output']}.tmp")
        remove(path)
        count += 1
    for stale in intents.glob(".compact-*.json.tmp"):
        stale.unlink()
    return count


def merge(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate tables by column name: a column an older file lacks is null there (and
    nullable in the result); a column's type is its first one that is not the null type (a
    column of nulls only, as a writer without a schema makes); the newest table's schema
    metadata is kept."""
    tables = list(tables)
    fields: dict[str, pa.Field] = {}
    for table in tables:
        for field in table.schema:
            if field.name not in fields or pa.types.is_null(fields[field.name].type):
                fields[field.name] = field
    columns, schema = [], []
    for name, field in fields.items():
        chunks = [t.column(name).cast(field.type).chunks if name in t.column_names
                  else [pa.nulls(t.num_rows, field.type)] for t in tables]
        column = pa.chunked_array([c for cs in chunks for c in cs], type=field.type)
        columns.append(column)
        schema.append(field.with_nullable(field.nullable or column.null_count > 0))
    return pa.Table.from_arrays(columns, schema=pa.schema(schema, metadata=tables[-1].schema.metadata))


def _intent_name(folder: str, output: str) -> str:
    table, _, partition = folder.rpartition("/")
    return f"compact-{table.rpartition('/')[2]}-{partition}-{output.removesuffix('.parquet')}.json"
