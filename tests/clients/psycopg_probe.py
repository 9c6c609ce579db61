"""What psycopg 3, and SQLAlchemy 1.4 on psycopg2 (Superset's stack), see of `quotaflow serve`
(tests/serve.rs runs this).

    python3 psycopg_probe.py DSN   ->  one JSON object on stdout

DSN is a libpq connection string without the password (it comes from PGPASSWORD).
"""
import datetime
import decimal
import json
import os
import sys

import psycopg
import psycopg2
import sqlalchemy


def typed(v):
    """A value as JSON, tagged with the Python type the driver decoded it to."""
    if isinstance(v, decimal.Decimal):
        return ["Decimal", str(v)]
    if isinstance(v, datetime.datetime):
        return ["datetime", v.isoformat(), v.utcoffset() is not None]
    if isinstance(v, datetime.date):
        return ["date", v.isoformat()]
    return [type(v).__name__, v]


def main():
    dsn = sys.argv[1]
    out = {}
    with psycopg.connect(dsn) as conn:
        out["ssl"] = conn.info.pgconn.ssl_in_use
        out["server_version"] = conn.info.server_version
        with conn.cursor() as cur:
            # The extended protocol with a parameter, prepared server-side.
            q = ("SELECT entity_id, period_start, quota, closed_won FROM attainment "
                 "WHERE level = %s AND period_type = %s ORDER BY entity_id, period_start")
            cur.execute(q, ("region", "quarter"), prepare=True)
            out["attainment_region_quarter"] = [[typed(v) for v in row] for row in cur.fetchall()]
            for _ in range(3):
                cur.execute(q, ("region", "quarter"), prepare=True)
                assert len(cur.fetchall()) == len(out["attainment_region_quarter"])
            cur.execute("SELECT as_of, written_at FROM snapshots ORDER BY snapshot_id DESC LIMIT 1")
            out["snapshot_times"] = [typed(v) for v in cur.fetchone()]
            cur.execute("SELECT version()")
            out["version"] = cur.fetchone()[0]
            cur.execute("SELECT current_schema(), current_database()")
            out["current_schema"], out["current_database"] = cur.fetchone()
            # One connection's SET is its own.
            cur.execute("SET application_name = 'probe-one'")
            cur.execute("SHOW application_name")
            out["own_setting"] = cur.fetchone()[0]
            errors = {}
            for name, sql in [("insert", "INSERT INTO attainment (level) VALUES ('x')"),
                              ("copy", "COPY attainment TO STDOUT"),
                              ("drop", "DROP TABLE attainment"),
                              ("engine_set", "SET datafusion.execution.batch_size = 1")]:
                try:
                    cur.execute(sql)
                    errors[name] = None
                except psycopg.Error as e:
                    errors[name] = [e.sqlstate, str(e).strip()]
                conn.rollback()
            out["refused"] = errors
        with psycopg.connect(dsn) as other:
            out["other_setting"] = other.execute("SHOW application_name").fetchone()[0]
    try:
        with psycopg.connect(dsn, password="not-the-password"):
            out["wrong_password"] = None
    except psycopg.OperationalError as e:
        out["wrong_password"] = str(e).strip()

    # SQLAlchemy's inspector as Superset runs it (SQLAlchemy 1.4 with psycopg2): the queries it
    # sends to list tables and columns.
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
    inspector = sqlalchemy.inspect(engine)
    out["sa_tables"] = sorted(inspector.get_table_names())
    out["sa_columns"] = [[c["name"], str(c["type"]), c.get("comment")]
                         for c in inspector.get_columns("attainment")]
    out["sa_table_comment"] = inspector.get_table_comment("attainment")["text"]
    with engine.connect() as c:
        out["sa_count"] = c.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM attainment WHERE level = :level"), {"level": "company"}).scalar()
    engine.dispose()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
