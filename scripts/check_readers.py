#!/usr/bin/env python3
"""Reads every table of an output as the lakehouse readers do (DuckDB's `delta_scan`, Polars
`read_delta`, delta-rs for Python) and checks that each sees the contract's types (money
DECIMAL(18,2), dates DATE, instants TIMESTAMP UTC) and the same rows as `quotaflow sql`; then
time-travels to the oldest retained snapshot through the versions its checkpoint names and
checks those against `quotaflow sql --snapshot ID`.

    check_readers.py QUOTAFLOW_BIN OUTPUT

OUTPUT is a local directory or s3://bucket/prefix (then the AWS_* variables of
`scripts/services env` say where the S3 server is).
"""
import datetime
import decimal
import json
import os
import subprocess
import sys

import duckdb
import duckdb_extensions
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

MONEY = {"attainment": ["quota", "closed_won", "expected_to_date", "run_rate_projection", "gap_to_quota", "required_per_day"],
         "deals_current": ["amount", "amount_corporate"]}
DATES = {"attainment": ["period_start"], "rep_daily": ["day"], "snapshots": ["as_of_date"]}
INSTANTS = {"snapshots": ["as_of", "written_at"]}


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
    """quotaflow sql --format json values, typed by the Delta schema."""
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


class Output:
    """The output's own files (`_latest`, checkpoints), on local disk or S3."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.s3 = None
        if self.url.startswith("s3://"):
            import boto3
            self.s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
            self.bucket, _, self.prefix = self.url[len("s3://"):].partition("/")

    def read(self, rel):
        if self.s3 is None:
            with open(f"{self.url}/{rel}") as f:
                return json.load(f)
        key = f"{self.prefix}/{rel}" if self.prefix else rel
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def checkpoint_ids(self):
        if self.s3 is None:
            names = os.listdir(f"{self.url}/_checkpoints")
        else:
            pre = f"{self.prefix}/_checkpoints/" if self.prefix else "_checkpoints/"
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=pre)
            names = [o["Key"].rsplit("/", 1)[1] for p in pages for o in p.get("Contents", [])]
        return sorted(int(n[:-5]) for n in names if n.endswith(".json"))

    def storage_options(self):
        if self.s3 is None:
            return None
        return {k: os.environ[k] for k in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_REGION", "AWS_ALLOW_HTTP"]}


def duck(out):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    duckdb_extensions.import_extension("delta")
    con.execute("LOAD delta")
    if out.s3 is not None:
        duckdb_extensions.import_extension("httpfs")
        con.execute("LOAD httpfs")
        endpoint = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
        con.execute(f"""CREATE SECRET s3test (TYPE s3, KEY_ID '{os.environ["AWS_ACCESS_KEY_ID"]}',
            SECRET '{os.environ["AWS_SECRET_ACCESS_KEY"]}', REGION '{os.environ["AWS_REGION"]}',
            ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)""")
    return con


def quotaflow_rows(qf, out, name, schema, snapshot=None):
    cmd = [qf, "sql", "--output", out.url, "--format", "json"]
    if snapshot is not None:
        cmd += ["--snapshot", str(snapshot)]
    rows = json.loads(subprocess.check_output(cmd + [f"SELECT * FROM {name}"]))
    return sorted((tuple(from_json(r.get(c), schema.field(c).type) for c in schema.names) for r in rows), key=repr)


def sorted_rows(table, cols):
    return sorted((tuple(norm(r[c]) for c in cols) for r in table.to_pylist()), key=repr)


def check_types(name, schema, reader):
    for col in MONEY.get(name, []):
        assert schema.field(col).type == pa.decimal128(18, 2), (reader, name, col, schema.field(col).type)
    for col in DATES.get(name, []):
        assert pa.types.is_date32(schema.field(col).type), (reader, name, col, schema.field(col).type)
    for col in INSTANTS.get(name, []):
        t = schema.field(col).type
        assert pa.types.is_timestamp(t) and t.unit == "us" and t.tz in ("UTC", "+00:00"), (reader, name, col, t)


def main():
    qf, out = sys.argv[1], Output(sys.argv[2])
    opts = out.storage_options()
    latest = out.read("_latest")
    checkpoint = out.read(latest["checkpoint"])
    assert checkpoint["contract_version"] == 2, checkpoint["contract_version"]
    for field in ["snapshot_id", "pipeline", "quotaflow_version", "as_of", "written_at", "events",
                  "calendar", "offsets", "tables", "state"]:
        assert field in checkpoint, f"the checkpoint has no `{field}`"
    con = duck(out)
    checked = 0
    for name, t in checkpoint["tables"].items():
        uri = f"{out.url}/{t['path']}"
        # delta-rs, at the version the checkpoint names.
        dt = DeltaTable(uri, version=t["version"], storage_options=opts)
        table = dt.to_pyarrow_table()
        schema = table.schema
        check_types(name, schema, "delta-rs")
        cols = schema.names
        rows = sorted_rows(table, cols)
        expected = quotaflow_rows(qf, out, name, schema)
        assert rows == expected, f"{name}: delta-rs and quotaflow sql differ:\n{rows[:2]}\n{expected[:2]}"
        # Polars, at the same version.
        frame = pl.read_delta(uri, version=t["version"], storage_options=opts).to_arrow()
        check_types(name, frame.schema, "polars")
        polars_rows = sorted_rows(frame.select(cols), cols)
        assert polars_rows == expected, f"{name}: Polars and quotaflow sql differ"
        # DuckDB reads a table's latest version: maintenance may have committed after the
        # snapshot, never a data change, so the rows are the snapshot's.
        duck_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM delta_scan('{uri}')").fetchall()}
        for col in MONEY.get(name, []):
            assert duck_types[col] == "DECIMAL(18,2)", (name, col, duck_types[col])
        for col in DATES.get(name, []):
            assert duck_types[col] == "DATE", (name, col, duck_types[col])
        for col in INSTANTS.get(name, []):
            assert duck_types[col] == "TIMESTAMP WITH TIME ZONE", (name, col, duck_types[col])
        quoted = ", ".join('"' + c + '"' for c in cols)
        duck_rows = sorted((tuple(norm(v) for v in r) for r in
                            con.execute(f"SELECT {quoted} FROM delta_scan('{uri}')").fetchall()), key=repr)
        assert duck_rows == expected, f"{name}: DuckDB and quotaflow sql differ:\n{duck_rows[:2]}\n{expected[:2]}"
        checked += len(rows)
    # Time travel: the oldest retained snapshot, through the versions its checkpoint names.
    ids = out.checkpoint_ids()
    travelled = 0
    if len(ids) > 1 and ids[0] != latest["snapshot_id"]:
        old = out.read(f"_checkpoints/{ids[0]:020d}.json")
        for name, t in old["tables"].items():
            uri = f"{out.url}/{t['path']}"
            table = DeltaTable(uri, version=t["version"], storage_options=opts).to_pyarrow_table()
            rows = sorted_rows(table, table.schema.names)
            expected = quotaflow_rows(qf, out, name, table.schema, snapshot=ids[0])
            assert rows == expected, f"{name} at snapshot {ids[0]}: delta-rs and quotaflow sql differ"
            frame = pl.read_delta(uri, version=t["version"], storage_options=opts).to_arrow()
            assert sorted_rows(frame.select(table.schema.names), table.schema.names) == expected, \
                f"{name} at snapshot {ids[0]}: Polars and quotaflow sql differ"
            travelled += 1
    print(f"readers agree: {len(checkpoint['tables'])} tables, {checked} rows; "
          f"time travel to snapshot {ids[0]}: {travelled} tables")


if __name__ == "__main__":
    main()
