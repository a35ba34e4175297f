"""The one reader of delimited text files (CSV, TSV, MovieLens' `\\t`, `::` and `,` files) for every
loader.

`read_delimited` runs pyarrow's CSV reader, never a Python loop per line, with one bad-row
handler: a row with the wrong number of fields is skipped and handed back as a `BadRow`, not the
whole file. pyarrow numbers the rows it skips only when it reads without threads, so a file that
has such rows is read a second time, serially; so is one that fails to parse (pyarrow's message
then names the row); a row longer than the block (a long text) is read with a larger block.
`CsvFormat` holds what differs between files: header or given names, encoding, quoting, empty
lines. `field_count_reason` words the reject of a bad row the same way for every loader.

The line view, for small side files and for a loader's exact fallback: `file_lines` splits a
file at newlines; blank lines at the end of a file are not rows (`trailing_blank_lines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from llmrec_ray.storage import Location

# in the reason of a row with the wrong number of fields
SEPARATOR_NAMES = {"\t": "tab", ",": "comma", "::": "'::'", "|": "'|'"}
CSV_BLOCK = 1 << 20  # pyarrow's default; grown (to CSV_MAX_BLOCK) while a row straddles two blocks
CSV_MAX_BLOCK = 1 << 30


@dataclass(frozen=True)
class CsvFormat:
    """How one file is read. The defaults: a header row names the columns, UTF-8, fields in
    double quotes may hold the delimiter and newlines (RFC 4180), empty lines are skipped."""

    delimiter: str = ","
    names: tuple[str, ...] | None = None  # the column names; None: the header row's
    skip_header: bool = False  # with `names`: the first line is a header, not a row
    encoding: str = "utf8"  # latin-1: every byte decodes, so a stray byte is a bad field
    quoted: bool = True  # `"` quotes a field
    newlines_in_values: bool = True
    keep_empty_lines: bool = False  # an empty line is a row (of empty fields)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # the rest are inferred


@dataclass(frozen=True)
class BadRow:
    """A row skipped for its number of fields. `number`: pyarrow's row number (the file's first
    line is row 1, a header included; skipped empty lines do not count, a quoted field spanning
    lines counts once)."""

    number: int
    expected: int
    actual: int
    text: str


def field_count_reason(expected: int, got: int, sep: str) -> str:
    """The reject reason of a row with the wrong number of fields."""
    return f"expected {expected} {SEPARATOR_NAMES[sep]}-separated fields, got {got}"


def read_delimited(source: Location | Path, fmt: CsvFormat) -> tuple[pa.Table, list[BadRow]]:
    """(the rows with the expected number of fields, the rows skipped for their number of
    fields). Raises pyarrow's error when the file cannot be parsed even serially."""
    block, threads = CSV_BLOCK, True
    while True:
        try:
            table, bad = _read_once(source, fmt, block, threads)
        except pa.ArrowInvalid as e:
            if "straddl" in str(e) and block < CSV_MAX_BLOCK:
                block *= 4
            elif threads and "CSV parse error" in str(e):
                threads = False
            else:
                raise
            continue
        if bad and threads:  # with threads pyarrow has no row number to give
            threads = False
            continue
        return table, bad


def _read_once(source: Location | Path, fmt: CsvFormat, block: int,
               threads: bool) -> tuple[pa.Table, list[BadRow]]:
    bad: list[BadRow] = []

    def skip(row) -> str:
        bad.append(BadRow(row.number, row.expected_columns, row.actual_columns, row.text))
        return "skip"

    read = pcsv.ReadOptions(block_size=block, use_threads=threads, encoding=fmt.encoding,
                            column_names=list(fmt.names) if fmt.names else None,
                            skip_rows=1 if fmt.skip_header else 0)
    parse = pcsv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoted else False,
                              newlines_in_values=fmt.newlines_in_values,
                              ignore_empty_lines=not fmt.keep_empty_lines,
                              invalid_row_handler=skip)
    convert = pcsv.ConvertOptions(column_types=fmt.types)
    with _open(source) as stream:
        table = pcsv.read_csv(stream, read_options=read, parse_options=parse,
                              convert_options=convert)
    return table, bad


def _open(source: Location | Path):
    """A readable stream, decompressed by extension (.gz, .bz2)."""
    return source.open() if isinstance(source, Location) else pa.input_stream(str(source))


def row_numbers(first: int, n_rows: int, skipped: list[int]) -> np.ndarray:
    """The numbers of the rows read, in order: `first` .. `first + n_rows - 1` less `skipped`."""
    numbers = np.arange(first, first + n_rows, dtype=np.int64)
    return numbers[~np.isin(numbers, np.array(skipped, dtype=np.int64))]


def file_lines(path: Path) -> list[bytes]:
    """The file's lines (split at `\\n`), the blank lines at its end left out."""
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def trailing_blank_lines(path: Path) -> int:
    """How many blank lines end the file (read from its last 64 KiB, not the whole file)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read()
    trailing = 0
    lines = tail.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line in reversed(lines):
        if line.strip():
            break
        trailing += 1
    return trailing
