"""``pipeline sql OUT "SELECT ..."``: read-only DuckDB views over an output folder's manifests.

Views: one per stage (``manifests/<stage>/*.parquet``, named after the stage: ``source``,
``detect``, ...); ``samples``: every stage joined on ``key``, each column prefixed with its
stage name (``detect_score``, ``pose_yaw``, ``identity_embedding``) except ``key`` and
``identity``; and, when ``pipeline audit`` ran, ``audit`` (``audit/identity.parquet``),
``audit_merges`` (``audit/merges.parquet``) and the audit's columns in ``samples`` as
``audit_<column>``; when ``pipeline audit --against`` ran, ``leaks`` (``audit/leaks.parquet``:
identities and photos shared with other output folders). DuckDB runs in memory, and only
SELECT / EXPLAIN statements are accepted, so a query can neither create a database file nor
write into the folder.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from pipeline import layout
from schemas import audit as audit_schema
from schemas import leaks as leak_schema

SAMPLES = "samples"
AUDIT = "audit"
AUDIT_MERGES = "audit_merges"
LEAKS = "leaks"
SOURCE = "source"
UNPREFIXED = ("key", "identity")
FORMATS = ("table", "csv", "parquet")
TABLE_ROWS = 200
CELL_CHARS = 60


def quote(name: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def _literal(path: Path) -> str:
    return "'" + path.as_posix().replace("'", "''") + "'"


def stages_of(out: Path) -> list[str]:
    """Stage names with at least one manifest, ``source`` first."""
    root = layout.manifests(out)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) if root.is_dir() else []
    return sorted(names, key=lambda n: (n != SOURCE, n))


def connect(out: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views of ``out``."""
    out = Path(out)
    stages = stages_of(out)
    if SOURCE not in stages:
        raise FileNotFoundError(f"{out}/manifests/source has no manifests: not a pipeline output folder")
    con = duckdb.connect(":memory:")
    for stage in stages:
        glob = layout.manifests(out, stage) / "*.parquet"
        con.execute(f"CREATE VIEW {quote(stage)} AS SELECT * FROM read_parquet({_literal(glob)})")
    tables = {stage: columns(con, stage) for stage in stages}
    audit_dir = layout.audit(out)
    if (audit_dir / audit_schema.IDENTITY_FILE).is_file():
        con.execute(f"CREATE VIEW {AUDIT} AS SELECT * FROM "
                    f"read_parquet({_literal(audit_dir / audit_schema.IDENTITY_FILE)})")
        tables[AUDIT] = columns(con, AUDIT)
    if (audit_dir / audit_schema.MERGES_FILE).is_file():
        con.execute(f"CREATE VIEW {AUDIT_MERGES} AS SELECT * FROM "
                    f"read_parquet({_literal(audit_dir / audit_schema.MERGES_FILE)})")
    leaks = audit_dir / leak_schema.LEAKS_FILE
    if leaks.is_file():
        con.execute(f"CREATE VIEW {LEAKS} AS SELECT * FROM read_parquet({_literal(leaks)})")
    con.execute(f"CREATE VIEW {SAMPLES} AS {samples_query(tables)}")
    return con


def columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    return [row[0] for row in _rows(con.execute(f"DESCRIBE {quote(view)}"))]


def _rows(result: Any) -> list[tuple]:
    return result.fetchall()


def samples_query(tables: dict[str, list[str]]) -> str:
    """SELECT joining every view on key, source first (its ``identity`` kept unprefixed)."""
    names = list(tables)
    select = [f"t0.{quote('key')} AS {quote('key')}", f"t0.{quote('identity')} AS {quote('identity')}"]
    joins = [f"{quote(names[0])} AS t0"]
    for i, name in enumerate(names):
        alias = f"t{i}"
        if i:
            joins.append(f"LEFT JOIN {quote(name)} AS {alias} ON {alias}.{quote('key')} = t0.{quote('key')}")
        for col in tables[name]:
            if col in UNPREFIXED:
                continue
            select.append(f"{alias}.{quote(col)} AS {quote(f'{name}_{col}')}")
    return f"SELECT {', '.join(select)} FROM {' '.join(joins)}"


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but SELECT / EXPLAIN (no COPY, ATTACH, CREATE, SET, INSTALL...)."""
    statements = con.extract_statements(sql)
    if not statements:
        raise ValueError("empty query")
    allowed = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
    for st in statements:
        if st.type not in allowed:
            raise ValueError(f"only SELECT queries are allowed (the output folder is read-only): got {st.type.name}")


def to_arrow(result: Any) -> pa.Table:
    """A DuckDB result as a pyarrow Table (DuckDB 1.x and 2.x spell this differently)."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(result, name, None)
        if fn is not None:
            table = fn()
            return table.read_all() if isinstance(table, pa.RecordBatchReader) else table
    raise RuntimeError("this duckdb version cannot return arrow tables")


def query(out: Path | str, sql: str, single: bool = False) -> pa.Table:
    """Run a read-only query against the views of ``out``; the last statement's result."""
    con = connect(out)
    try:
        check_read_only(con, sql)
        statements = con.extract_statements(sql)
        if single and len(statements) != 1:
            raise ValueError("expected a single SQL condition, not several statements")
        for st in statements[:-1]:
            con.execute(st.query).fetchall()
        return to_arrow(con.sql(statements[-1].query))
    finally:
        con.close()


def _plain(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return value


def flatten_nested(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs, maps) as JSON text, for CSV."""
    cols = []
    for field, col in zip(table.schema, table.columns):
        if pa.types.is_nested(field.type):
            col = pa.array([_plain(v) for v in col.to_pylist()], pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        head = ", ".join(_cell(v) for v in value[:4])
        return f"[{head}{', …' if len(value) > 4 else ''}] ({len(value)})" if len(value) > 4 else f"[{head}]"
    text = str(value)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def render_table(table: pa.Table, max_rows: int = TABLE_ROWS) -> str:
    """A rich text table of the first ``max_rows`` rows."""
    from rich.console import Console
    from rich.table import Table

    view = Table(show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*(_cell(row[n]) for n in table.column_names))
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=False).print(view)
    more = table.num_rows - max_rows
    if more > 0:
        buf.write(f"({more} more rows; use --format csv or parquet for all of them)\n")
    return buf.getvalue()


def write_result(table: pa.Table, fmt: str, output: Path | str | None, out: Path | str | None = None,
                 stream: Any = None) -> None:
    """Write a result as a rich table, CSV or Parquet, to ``output`` or ``stream`` (stdout)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if output is not None and out is not None and _inside(Path(output), Path(out)):
        raise ValueError(f"{output} is inside {out}: the output folder is read-only, write elsewhere")
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, str(output))
        return
    if fmt == "csv":
        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(flatten_nested(table), buf)
        data = buf.getvalue()
        if output is None:
            (stream or sys.stdout).write(data.decode())
        else:
            Path(output).write_bytes(data)
        return
    text = render_table(table)
    if output is None:
        (stream or sys.stdout).write(text)
    else:
        Path(output).write_text(text)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def keys_where(out: Path | str, where: str | None, extra: Iterable[str] = ()) -> pa.Table:
    """``key, identity`` (+ ``extra`` columns) of the samples matching a SQL condition."""
    cols = ", ".join(quote(c) for c in ("key", "identity", *extra))
    cond = f" WHERE {where}" if where and where.strip() else ""
    return query(out, f"SELECT {cols} FROM {SAMPLES}{cond} ORDER BY {quote('key')}", single=True)
