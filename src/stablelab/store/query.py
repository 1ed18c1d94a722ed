"""DuckDB over the run store: finished runs' Parquet and live runs' JSONL in one query."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from stablelab.store.run_store import DONE, METRICS, PARQUET, read_jsonl, rows_to_table


def _arrow(result) -> pa.Table:
    # DuckDB >= 2 names it to_arrow_table; 1.x fetch_arrow_table.
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return fetch()


def metrics_table(runs_root: str | Path) -> pa.Table:
    """All logged rows of every run under `runs_root`, with a `run` column (the folder name).

    Finished runs are read from Parquet by DuckDB; unfinished ones from their JSONL (torn tail
    ignored), so a live sweep can be inspected while it runs."""
    root = Path(runs_root)
    parts = []
    finished = sorted(p for p in root.glob(f"*/{PARQUET}") if (p.parent / DONE).exists())
    if finished:
        files = [str(p) for p in finished]
        con = duckdb.connect()
        parts.append(_arrow(
            con.sql(
                "SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS run, * "
                "EXCLUDE (filename) FROM read_parquet(?, filename=true, union_by_name=true)",
                params=[files],
            )
        ))
    for live in sorted(root.glob(f"*/{METRICS}")):
        if (live.parent / DONE).exists():
            continue
        rows = read_jsonl(live)
        if rows:
            parts.append(rows_to_table([{"run": live.parent.name, **r} for r in rows]))
    if not parts:
        return pa.table({"run": pa.array([], pa.string())})
    # "permissive": a live run's column of whole numbers (int64 from JSON) joins a finished run's floats
    return pa.concat_tables(parts, promote_options="permissive")


def query(runs_root: str | Path, sql: str) -> pa.Table:
    """Run SQL against the view `metrics` (all runs' rows). Example:
    `query(root, "SELECT run, max(loss) FROM metrics GROUP BY run")`."""
    metrics = metrics_table(runs_root)  # noqa: F841  (DuckDB reads the local variable by name)
    con = duckdb.connect()
    con.register("metrics", metrics)
    return _arrow(con.sql(sql))
