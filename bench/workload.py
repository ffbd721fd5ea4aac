"""The workload: the outbox table, its publication and slots, and pgbench writing
Debezium-style outbox events into it."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from common import lsn_int, lsn_str, run

AGGREGATE_TYPES = ["order", "customer", "payment", "shipment"]
PUBLICATION = "bench_outbox"

WORKLOAD_SQL = """\
\\set a random(0, 999)
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
SELECT gen_random_uuid(),
       (ARRAY['order','customer','payment','shipment'])[1 + (a % 4)],
       'agg-' || a,
       'Created',
       format('{"aggregate": "agg-%s", "seq": %s, "customerId": "cust-%s", "status": "CREATED", "currency": "EUR", "total": %s, "lines": [{"sku": "SKU-%s", "qty": %s, "price": 19.99}, {"sku": "SKU-%s", "qty": 1, "price": 5.49}], "note": "%s"}',
              a, g, (a * 7) % 100000, (a % 997) + 0.5, g % 10000, 1 + g % 5, a % 777, md5(g::text || a || random()))::jsonb
FROM (SELECT g, (:a + g * 37) % 1000 AS a FROM generate_series(1, :k) g) s;
"""

OUTBOX_DDL = """\
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL,
    type varchar(255) NOT NULL,
    payload jsonb
);
"""


class Workload:
    """Mixin of Bench: databases, slots and writers (needs self.pg, self.o, self.args,
    self.workload)."""

    def topics(self, system: str, tag: str) -> list[str]:
        return [f"bench.{system}.{tag}.outbox.event.{t}" for t in AGGREGATE_TYPES]

    def topic_template(self, system: str, tag: str) -> str:
        return f"bench.{system}.{tag}.outbox.event.${{routedByValue}}"

    def create_db(self, db: str) -> None:
        with self.pg.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{db}"')
        with self.pg.connect(db) as c:
            c.execute(OUTBOX_DDL)
            c.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE outbox WITH (publish = 'insert')")

    def create_slot(self, db: str, slot: str) -> None:
        with self.pg.connect(db) as c:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    def drop_db(self, db: str) -> None:
        with self.pg.connect() as c:
            for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                     (db,)).fetchall():
                with contextlib.suppress(Exception):
                    c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute("CHECKPOINT")

    def pgbench_cmd(self, db: str, k: int, *, transactions: int | None = None,
                    rate_tps: float | None = None, seconds: int | None = None,
                    clients: int | None = None) -> list[str]:
        clients = clients or self.o.writers
        cmd = [str(Path(self.args.pg_bindir) / "pgbench"), "-h", "127.0.0.1", "-p",
               str(self.pg.port), "-U", "postgres", "-n", "-f", str(self.workload), "-D", f"k={k}",
               "-c", str(clients), "-j", str(min(clients, 2))]
        if transactions is not None:
            cmd += ["-t", str(transactions // clients)]
        if rate_tps is not None:
            cmd += ["-R", f"{rate_tps:.3f}"]
        if seconds is not None:
            cmd += ["-T", str(seconds)]
        cmd.append(db)
        return cmd

    def pgbench(self, db: str, k: int, **kw) -> dict:
        """Runs pgbench to its end; what it achieved."""
        cmd = self.pgbench_cmd(db, k, **kw)
        t0 = time.time()
        cp = run(cmd)
        t1 = time.time()
        return pgbench_summary(cp.stdout + cp.stderr, k, t0, t1, cmd)

    def wal_positions(self, db: str, start: int) -> tuple[int, int, int]:
        """(WAL end after the workload, LSN of the last commit record, commit count in
        the range scanned), the last two found with pg_waldump."""
        time.sleep(0.5)
        with self.pg.connect(db) as c:
            end = lsn_int(c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
        scan_from = max(start, end - (4 << 20))
        cp = run([str(Path(self.args.pg_bindir) / "pg_waldump"), "-p", str(self.pg.data / "pg_wal"),
                  "-s", lsn_str(scan_from), "-e", lsn_str(end), "-r", "Transaction"], check=False)
        commits = re.findall(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F/]+, desc: COMMIT", cp.stdout)
        if not commits:
            raise RuntimeError(f"pg_waldump found no commit before {lsn_str(end)}: {cp.stderr[-500:]}")
        return end, lsn_int(commits[-1]), len(commits)

    def slot_confirmed(self, db: str, slot: str) -> int:
        with self.pg.connect(db) as c:
            return lsn_int(c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = %s", (slot,)).fetchone()[0])

    def commit_times_us(self, db: str) -> dict[str, int]:
        """Event id -> commit time of its row's transaction (µs since the epoch)."""
        with self.pg.connect(db) as c:
            return dict(c.execute(
                "SELECT id::text, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1e6)::bigint "
                "FROM outbox").fetchall())

    def outbox_rows(self, db: str) -> int:
        with self.pg.connect(db) as c:
            return c.execute("SELECT count(*) FROM outbox").fetchone()[0]


def pgbench_summary(out: str, k: int, t0: float, t1: float, cmd: list[str]) -> dict:
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lag = re.search(r"rate limit schedule lag: avg ([\d.]+) \(max ([\d.]+)\) ms", out)
    return {"start": t0, "end": t1, "transactions": int(m.group(1)) if m else None,
            "tps": float(tps.group(1)) if tps else None,
            "events_per_s": float(tps.group(1)) * k if tps else None,
            "schedule_lag_avg_ms": float(lag.group(1)) if lag else None,
            "schedule_lag_max_ms": float(lag.group(2)) if lag else None,
            "cmd": " ".join(cmd)}
