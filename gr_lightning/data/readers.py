"""Vectorised readers for event files (CSV/TSV/``::``, JSON lines, Parquet; plain or ``.gz``).

Every reader returns a :class:`pyarrow.Table`; :func:`column_to_int64` and friends turn its columns
into validated numpy arrays and raise :class:`~gr_lightning.data.errors.DataError` naming the file,
column, first bad line and value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from gr_lightning.data.errors import DataError

_BLOCK_SIZE = 1 << 24  # 16 MiB: fewer, larger blocks parse faster on big files.
_INT_PATTERN = r"^\s*[+-]?\d+\s*$"


def find_file(root: Path, name: str) -> Path | None:
    """Return ``root/name`` or its gzipped (or un-gzipped) twin, whichever exists, else None."""
    candidates = [root / name]
    if name.endswith(".gz"):
        candidates.append(root / name[: -len(".gz")])
    else:
        candidates.append(root / f"{name}.gz")
    for path in candidates:
        if path.is_file():
            return path
    return None


def _check_not_empty(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def csv_column_names(path: Path, delimiter: str, header: bool) -> list[str]:
    """Column names of a delimited file (``f0, f1, ...`` when it has no header), reading one block."""
    _check_not_empty(path)
    read_options = pcsv.ReadOptions(autogenerate_column_names=not header, block_size=1 << 16)
    try:
        reader = pcsv.open_csv(
            path, read_options=read_options, parse_options=pcsv.ParseOptions(delimiter=delimiter)
        )
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: cannot parse as delimited text ({err})") from err
    return list(reader.schema.names)


def read_csv(
    path: Path,
    columns: dict[str, str],
    *,
    delimiter: str = ",",
    header: bool = True,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Read selected columns of a delimited text file, multi-threaded.

    Args:
        path: The file; ``.gz`` is decompressed on the fly.
        columns: Output name -> column name in the file (``f0``, ``f1``, ... without a header).
        delimiter: One-character field separator (``::`` files are read with ``:``, see MovieLens).
        header: Whether the first line names the columns.
        types: Output name -> arrow type to parse as (the fast path). When a value does not parse,
            the file is read again untyped so the caller's validation can name the bad row.

    Returns:
        A table whose columns carry the output names.

    """
    available = csv_column_names(path, delimiter, header)
    missing = [src for src in columns.values() if src not in available]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not found; available columns: "
            f"{', '.join(map(repr, available))}"
        )
    read_options = pcsv.ReadOptions(autogenerate_column_names=not header, block_size=_BLOCK_SIZE)
    parse_options = pcsv.ParseOptions(delimiter=delimiter)
    src_types = {columns[k]: t for k, t in (types or {}).items()}
    include = list(dict.fromkeys(columns.values()))
    try:
        table = pcsv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pcsv.ConvertOptions(include_columns=include, column_types=src_types),
        )
    except pa.ArrowInvalid:
        # Slow path, only for bad input: every selected column as text, validated by the caller.
        as_text = dict.fromkeys(include, pa.string())
        try:
            table = pcsv.read_csv(
                path,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=pcsv.ConvertOptions(include_columns=include, column_types=as_text),
            )
        except pa.ArrowInvalid as err:
            raise DataError(f"{path}: cannot parse as delimited text ({err})") from err
    return pa.table({out: table.column(src) for out, src in columns.items()})


def read_json_lines(path: Path, columns: dict[str, str], types: dict[str, pa.DataType]) -> pa.Table:
    """Read selected fields of a JSON-lines file (other fields are skipped without being parsed)."""
    _check_not_empty(path)
    schema = pa.schema([(columns[k], types[k]) for k in columns])
    options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pjson.read_json(path, read_options=pjson.ReadOptions(block_size=_BLOCK_SIZE),
                                parse_options=options)
    except pa.ArrowInvalid as err:
        fields = list(columns.values())
        raise DataError(f"{path}: cannot parse as JSON lines with fields {fields} ({err})") from err
    return pa.table({out: table.column(src) for out, src in columns.items()})


def read_parquet(path: Path, columns: dict[str, str]) -> pa.Table:
    """Read selected columns of a Parquet file."""
    _check_not_empty(path)
    try:
        available = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from err
    missing = [src for src in columns.values() if src not in available]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not found; available columns: "
            f"{', '.join(map(repr, available))}"
        )
    table = pq.read_table(path, columns=list(dict.fromkeys(columns.values())))
    return pa.table({out: table.column(src) for out, src in columns.items()})


def _first_true(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int:
    mask = np.asarray(mask.to_numpy(zero_copy_only=False) if not isinstance(mask, np.ndarray) else mask)
    return int(np.flatnonzero(mask)[0])


def _bad(path: Path, name: str, row: int, value: object, why: str, line_offset: int) -> DataError:
    return DataError(f"{path}: {why} in column {name!r} at line {row + line_offset} (value {value!r})")


def column_to_int64(
    column: pa.ChunkedArray,
    name: str,
    path: Path,
    *,
    line_offset: int = 1,
    non_negative: bool = True,
) -> np.ndarray:
    """Validate and convert one column to int64 without per-row Python work.

    Integers pass through; floats must be finite and whole; text must be all digits; timestamps are
    converted to seconds.

    Args:
        column: The column as read.
        name: Its name, for messages.
        path: Its file, for messages.
        line_offset: Added to the 0-based row to give the file's line number (2 with a header line).
        non_negative: Reject negative values (ids).

    Returns:
        ``(N,)`` int64.

    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if column.null_count:
        row = _first_true(pc.is_null(column))
        raise _bad(path, name, row, None, "missing or NaN value", line_offset)
    if pa.types.is_integer(kind):
        values = column.to_numpy().astype(np.int64, copy=False)
    elif pa.types.is_floating(kind):
        floats = column.to_numpy()
        finite = np.isfinite(floats)
        if not finite.all():
            row = _first_true(~finite)
            raise _bad(path, name, row, float(floats[row]), "missing or NaN value", line_offset)
        whole = floats == np.floor(floats)
        if not whole.all():
            row = _first_true(~whole)
            raise _bad(path, name, row, float(floats[row]), "non-integer value", line_offset)
        values = floats.astype(np.int64)
    elif pa.types.is_timestamp(kind):
        values = pc.cast(column, pa.timestamp("s")).cast(pa.int64()).to_numpy()
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ok = pc.match_substring_regex(column, _INT_PATTERN)
        if not pc.all(ok).as_py():
            row = _first_true(pc.invert(ok))
            value = column[row].as_py()
            why = "missing or NaN value" if value.strip().lower() in ("", "nan", "null", "na") else (
                "non-integer value")
            raise _bad(path, name, row, value, why, line_offset)
        values = pc.cast(pc.utf8_trim_whitespace(column), pa.int64()).to_numpy()
    else:
        raise DataError(f"{path}: column {name!r} has type {kind}, expected integers")
    if non_negative and values.size and values.min() < 0:
        row = _first_true(values < 0)
        raise _bad(path, name, row, int(values[row]), "negative id", line_offset)
    return values


def column_to_float32(column: pa.ChunkedArray, name: str, path: Path, *, line_offset: int = 1) -> np.ndarray:
    """Validate and convert a numeric column (ratings) to float32; missing values are an error."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(f"{path}: non-numeric value in column {name!r} ({err})") from err
    if column.null_count:
        row = _first_true(pc.is_null(column))
        raise _bad(path, name, row, None, "missing value", line_offset)
    values = column.to_numpy().astype(np.float32)
    if not np.isfinite(values).all():
        row = _first_true(~np.isfinite(values))
        raise _bad(path, name, row, float(values[row]), "missing or NaN value", line_offset)
    return values


def column_to_codes(column: pa.ChunkedArray, name: str, path: Path, *, line_offset: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Map string ids to integer codes, hash-based (no Python loop over rows).

    Codes follow the sorted order of the distinct strings, so they do not depend on row order.

    Returns:
        ``(codes, vocabulary)``: ``(N,)`` int64 codes and the ``(V,)`` strings they index.

    """
    if column.null_count:
        row = _first_true(pc.is_null(column))
        raise _bad(path, name, row, None, "missing id", line_offset)
    encoded = pc.dictionary_encode(column.cast(pa.string())).combine_chunks()
    vocab = encoded.dictionary
    order = pc.sort_indices(vocab).to_numpy()  # (V,) position of each sorted string in vocab
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.int64)
    return codes, np.asarray(vocab.take(pa.array(order)).to_numpy(zero_copy_only=False)).astype(str)
