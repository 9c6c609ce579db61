#!/usr/bin/env python3
"""Reads the latest snapshot under a local output directory with pyarrow and DuckDB and checks
that both see the same rows and types as `quotaflow sql`: money as DECIMAL(18,2), instants as
UTC timestamps in microseconds, every row of every table.

    check_readers.py QUOTAFLOW_BIN OUTPUT_DIR
"""
import datetime
import decimal
import json
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

MONEY = {"attainment": ["quota", "closed_won", "expected_to_date", "run_rate_projection", "gap_to_quota", "required_per_day"],
         "deals_current": ["amount", "amount_corporate"]}


def norm(v):
    """One comparable form per value, whichever reader produced it."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, decimal.Decimal):
        return ("dec", str(v.quantize(decimal.Decimal("0.01"))) if v.as_tuple().exponent >= -2 else str(v))
    if isinstance(v, datetime.datetime):
        assert v.tzinfo is not None, f"naive timestamp {v!r}"
        return ("ts", v.astimezone(datetime.timezone.utc).isoformat())
    if isinstance(v, datetime.date):
        return ("date", v.isoformat())
    if isinstance(v, float):
        return ("num", round(v, 9))
    if isinstance(v, int):
        return ("num", v)
    return v


def from_json(v, arrow_type):
    """quotaflow sql --format json values, typed by the Parquet schema."""
    if v is None:
        return None
    if pa.types.is_decimal(arrow_type):
        return norm(decimal.Decimal(str(v)))
    if pa.types.is_timestamp(arrow_type):
        return norm(datetime.datetime.fromisoformat(v.replace("Z", "+00:00")))
    if pa.types.is_date(arrow_type):
        return ("date", v)
    if pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type):
        return norm(float(v) if pa.types.is_floating(arrow_type) else int(v))
    return v


def main():
    qf, out = sys.argv[1], sys.argv[2]
    latest = json.load(open(f"{out}/_latest"))
    manifest = json.load(open(f"{out}/{latest['manifest']}"))
    snap = f"{out}/snapshots/{latest['snapshot_id']:020d}"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    checked = 0
    for t in manifest["tables"]:
        name = t["name"]
        table = pq.read_table(f"{snap}/{name}")
        schema = table.schema
        assert table.num_rows == t["rows"], (name, table.num_rows, t["rows"])
        for col in MONEY.get(name, []):
            assert schema.field(col).type == pa.decimal128(18, 2), (name, col, schema.field(col).type)
        for field in schema:
            if pa.types.is_timestamp(field.type):
                assert field.type.unit == "us" and field.type.tz == "UTC", (name, field)
        duck_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{snap}/{name}/*.parquet')").fetchall()}
        for col in MONEY.get(name, []):
            assert duck_types[col] == "DECIMAL(18,2)", (name, col, duck_types[col])
        assert duck_types["as_of"] == "TIMESTAMP WITH TIME ZONE", (name, duck_types["as_of"])
        cols = schema.names
        arrow_rows = sorted((tuple(norm(r[c]) for c in cols) for r in table.to_pylist()), key=repr)
        duck_rows = sorted((tuple(norm(v) for v in r) for r in
                            con.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM read_parquet('{snap}/{name}/*.parquet')").fetchall()), key=repr)
        assert arrow_rows == duck_rows, f"{name}: pyarrow and DuckDB differ"
        qf_json = json.loads(subprocess.check_output([qf, "sql", "--output", out, "--format", "json", f"SELECT * FROM {name}"]))
        qf_rows = sorted((tuple(from_json(r.get(c), schema.field(c).type) for c in cols) for r in qf_json), key=repr)
        assert qf_rows == arrow_rows, f"{name}: quotaflow sql and pyarrow differ:\n{qf_rows[:2]}\n{arrow_rows[:2]}"
        checked += table.num_rows
    print(f"readers agree: {len(manifest['tables'])} tables, {checked} rows")


if __name__ == "__main__":
    main()
