"""The report's Method section: how the run was made, settings, machine."""

from __future__ import annotations

from report_fmt import fmt
from services import BROKER_JVMS


def method(results: dict) -> list[str]:
    env = results.get("environment", {})
    opts = results.get("options", {})
    L: list[str] = []
    L += ["### Method", "",
          "```sh", "bench/run.sh            # full preset: writes this section, docs/benchmarks.png, bench/results/full.json",
          "bench/run.sh --quick    # 50k events, k = 10, 6 s latency steps, no ladder, a small sweep,",
          "                        # one takeover per mode (bench/.work/runs/ only)",
          "bench/run.sh --help     # all options", "```", "",
          "`bench/run.sh` installs or resolves what is missing (Debian's PostgreSQL, a JDK, Maven; "
          "the Python packages of `bench/requirements.txt`; Kafka's jars as `scripts/kafka.sh` does; "
          f"Kafka Connect {env.get('connect', '4.3.1')} and the Debezium Postgres connector plugin archive "
          f"{env.get('debezium')} from Maven Central), builds outboxd in release mode and runs "
          "`bench/bench.py`, which:", "",
          f"1. starts its own PostgreSQL ({env.get('postgres', '?')}, 127.0.0.1:54400: `wal_level=logical`, "
          "`track_commit_timestamp=on`, `fsync=off`, `synchronous_commit=on`, `autovacuum=off`, "
          "`shared_buffers=512MB`) and its own single-node Kafka broker (127.0.0.1:19192, "
          "`scripts/kafka.sh`'s broker settings, `log.message.timestamp.type=LogAppendTime`, JVM "
          # Runs before the JVM was recorded used the serial one.
          f"`{env.get('kafka_jvm', ' '.join(BROKER_JVMS['serial']))}`), "
          "both fresh, and warms the broker up with an idempotent producer (500,000 records);",
          f"2. **drain**, per transaction size k: creates a database with a Debezium-style outbox table "
          f"(`id uuid`, `aggregatetype`, `aggregateid`, `type`, `payload jsonb`), a publication, one "
          f"pgoutput slot per reader and {opts.get('partitions')} partitions for each of the 4 topics "
          f"`bench.<relay>.<run>.outbox.event.<aggregatetype>`, all *before* writing, so that every slot "
          f"sees the same WAL; then writes N events (~257-byte JSON payloads, 1,000 aggregates over 4 "
          f"aggregate types) with `pgbench` ({opts.get('writers')} connections, one `INSERT … SELECT "
          f"generate_series(1, k)` per transaction); then each reader drains its slot in turn: "
          "at the first k, outboxd at-least-once and exactly-once once each as a warm-up, not measured (a fresh "
          "broker's first drain ran up to 30% slower); "
          "`pg_recvlogical --start --endpos=<WAL end> -o proto_version=1 -o publication_names=… -f /dev/null` "
          "(timed until it exits; it confirms the slot as it stops), outboxd, outboxd exactly-once, outboxd with each "
          "variant setting (full preset: `caps4x`, 32 MiB in flight and a 16 MiB read buffer; `2threads`, "
          "`server.worker_threads=2`), Debezium, outboxd exactly-once again, outboxd again, pg_recvlogical again "
          "(with `--profile`, one more outboxd drain under perf). A relay's time runs from process start until the slot's "
          "`confirmed_flush_lsn` reaches the last commit of the workload (polled every 50 ms), which "
          "happens only after Kafka acknowledged every record; the topics are then checked to hold "
          "exactly N records (exactly-once: read back whole with `isolation.level=read_committed`, N "
          "records with N distinct event ids). CPU seconds and peak RSS (`VmHWM`) come from `/proc` "
          "and Kafka transactions and commit times from outboxd's `/metrics` at that moment, "
          "the walsender's CPU from its process, the broker's CPU and the machine's busy share "
          "over the same window;",
          "3. **sweep** of exactly-once's transaction limits: one more backlog "
          f"({fmt(opts.get('sweep_events'))} events in transactions of {opts.get('sweep_k')}), drained the "
          "same way by outboxd at-least-once and exactly-once with each pair of "
          f"`kafka.transaction_max_ms` ∈ {{{', '.join(map(str, opts.get('sweep_ms') or []))}}} and "
          f"`kafka.transaction_max_bytes` ∈ {{{', '.join(map(str, opts.get('sweep_bytes') or []))}}}, "
          f"{opts.get('sweep_passes')} pass(es) in alternating order;",
          "4. **latency**: every relay attached to a fresh slot (outboxd, outboxd exactly-once, the "
          "variants, exactly-once with each `transaction_max_ms` of "
          f"{{{', '.join(map(str, opts.get('sweep_latency_ms') or []))}}} (fixed steps only), Debezium), "
          "a warm-up, then per step `pgbench -R` (Poisson arrivals) at a fixed offered rate for the "
          "step's duration, while a consumer per relay (`isolation.level=read_committed`, reading "
          "from the warm-up on; the broker answers its waiting fetch as soon as records become "
          "visible; its threads at nice −10 so that on a busy machine its own scheduling stays out "
          "of the numbers, the harness's garbage collector only between steps) notes for every "
          "record the broker's LogAppendTime and its own clock on receipt; every record of the step "
          "is matched (header `id`) to its row's commit "
          "timestamp; Kafka transactions and commit times from outboxd's `/metrics` before and after "
          "the step;",
          "5. **takeover**, per delivery mode: outboxd on a fresh slot, a writer at "
          f"{fmt(opts.get('takeover_rate'))} events/s (transactions of {opts.get('takeover_k')}); "
          f"{opts.get('takeover_reps')} times a second outboxd on the same slot (it stands by: "
          "PostgreSQL lets one walsender hold a slot), then SIGKILL of the active one; the slot "
          "polled every 5 ms, the standby's log read for `relaying`, the consumer as above;",
          "6. writes `results.json`, this markdown and the chart (`bench/report.py`).", "",
          "Settings:", "",
          "- outboxd: defaults (`linger.ms=5`, `acks=all`, idempotence, 100,000 records / 8 MiB in "
          "flight (payload + per-record overhead), 4 MiB read buffer); the harness sets only the URL, slot, publication, table, brokers, "
          f"topic template and metrics address{extra_env(opts)}. Exactly-once: "
          "`kafka.delivery=exactly-once` and otherwise the same defaults"
          + (f" (`kafka.transaction_max_ms={env['eos_defaults']['transaction_max_ms']}`, "
             f"`kafka.transaction_max_bytes={env['eos_defaults']['transaction_max_bytes']}` as "
             "`crates/outboxd/src/config/kafka.rs` has them; the transactional producer's `linger.ms` is 2)" if env.get("eos_defaults") else "") + ".",
          "- Debezium: `connector.class=io.debezium.connector.postgresql.PostgresConnector`, "
          "`plugin.name=pgoutput`, the pre-created slot and publication "
          "(`publication.autocreate.mode=disabled`), `snapshot.mode=no_data`, "
          "`table.include.list=public.outbox`, `tombstones.on.delete=false`; the Outbox Event Router "
          "(`transforms.outbox.type=io.debezium.transforms.outbox.EventRouter`, "
          "`route.topic.replacement=bench.dbz.<run>.outbox.event.${routedByValue}`); StringConverter for "
          "keys and values (so the same key and value bytes as outboxd's `key_format=string`). Tuned as a "
          "careful user would: " + ", ".join(f"`{k}={v}`" for k, v in results.get("debezium_tuning", {}).items())
          + ". Kafka Connect standalone with its default producer settings, started like "
          "`bin/connect-standalone.sh` (`-Xms256M -Xmx2G`, G1).", "",
          "Machine and versions:", "",
          f"- {env.get('cpus')} CPUs ({env.get('cpu_model')}), {env.get('mem_gib')} GiB RAM, "
          f"kernel {env.get('kernel')}, {env.get('os')}; shared with other work: load average "
          f"{fmt_load(env.get('loadavg_start'))} at the start, {fmt_load(env.get('loadavg_end'))} at the end.",
          f"- PostgreSQL {env.get('postgres')}; Kafka {env.get('kafka')}; Kafka Connect {env.get('connect')}; "
          f"Debezium {env.get('debezium')}; {env.get('java')}.",
          f"- outboxd {env.get('outboxd')}, {env.get('rustc')}, rdkafka-sys {env.get('rdkafka_sys')} "
          "(librdkafka, built from source).", *broker_pauses(env.get("broker_pauses")), ""]
    return L


def broker_pauses(p: dict | None) -> list[str]:
    """The broker's stops over the whole run."""
    if not p:
        return []
    return [f"- The broker's JVM: {p['count']} safepoints (stops of every Java thread, "
            "a collector's pauses among them) from its start to the run's end, warm-up and "
            f"drains included: {p['total_ms']} ms in all, {p['over_5ms']} of 5 ms or more, the "
            f"longest {p['longest_ms']} ms; {p['allocation_stalls']} allocation stalls, the "
            f"longest {p.get('longest_stall_ms', '–')} ms. Each latency step has its own in "
            "`results.json` (`broker_pauses`)."]


def fmt_load(v):
    return "/".join(f"{x:.1f}" for x in v) if v else "–"


def extra_env(opts: dict) -> str:
    env = opts.get("outboxd_env") or {}
    return (" plus " + ", ".join(f"`{k}={v}`" for k, v in env.items())) if env else ""
