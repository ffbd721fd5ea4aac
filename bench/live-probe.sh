#!/usr/bin/env bash
# Investigation aid (not part of the benchmark): one reader on a live workload, with
# the walsender's lag, CPU split and context switches, to see where a live relay
# spends its time. Needs the bench's services running:
#
#   bench/run.sh --quick --events 4000 --no-latency --systems outboxd --keep
#   bench/live-probe.sh outboxd 20000                      # outboxd run, defaults
#   bench/live-probe.sh outboxd 20000 OUTBOXD_KAFKA__PRODUCER__LINGER_MS=5
#   bench/live-probe.sh tail 20000                         # outboxd tail --confirm (no Kafka)
#   bench/live-probe.sh recvlogical 20000                  # pg_recvlogical to /dev/null
#
# Arguments: READER RATE [ENV=VALUE...]; RATE in events/s, written by pgbench -R in
# transactions of 10 for 15 s into a fresh database `probe`. Prints the writer's
# schedule lag, CPU ticks (1/100 s) of the reader, its walsender, the broker and the
# machine, the reader's context switches per thread, and the walsender's sent lag
# (WAL written but not yet sent) and the slot's confirmed lag, sampled every 200 ms.
# Stop the services afterwards: pg_ctl -D bench/.work/pg/data stop (as postgres) and
# the broker's java process.
set -euo pipefail

READER=${1:?reader: outboxd, tail or recvlogical}
RATE=${2:?rate in events/s}
shift 2
BENCH=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
WORK=$BENCH/.work
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
OUTBOXD=${OUTBOXD_BIN:-${CARGO_TARGET_DIR:-$WORK/target}/release/outboxd}
PSQL=("$BIN/psql" -h 127.0.0.1 -p 54400 -U postgres -X -q)
URL='postgres://postgres@127.0.0.1:54400/probe?sslmode=disable'
PY=$WORK/venv/bin/python
SQL=$(mktemp)
sed -n '/^WORKLOAD_SQL = """\\$/,/^"""$/p' "$BENCH/bench.py" | sed '1d;$d' | sed 's/^\\\\set/\\set/' >"$SQL"

"${PSQL[@]}" -c "SELECT pg_drop_replication_slot('probe') FROM pg_replication_slots WHERE slot_name = 'probe'" >/dev/null
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS probe WITH (FORCE)" -c "CREATE DATABASE probe"
"${PSQL[@]}" -d probe -c "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL, aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb)" \
    -c "CREATE PUBLICATION bench_outbox FOR TABLE outbox WITH (publish = 'insert')" \
    -c "SELECT pg_create_logical_replication_slot('probe', 'pgoutput')" >/dev/null

case $READER in
    outboxd)
        env OUTBOXD_POSTGRES__URL="$URL" OUTBOXD_POSTGRES__SLOT=probe OUTBOXD_POSTGRES__PUBLICATION=bench_outbox \
            OUTBOXD_KAFKA__BROKERS=127.0.0.1:19192 OUTBOXD_ROUTING__TOPIC="probe.$$.\${routedByValue}" \
            OUTBOXD_SERVER__METRICS_ADDRESS=127.0.0.1:19399 "$@" "$OUTBOXD" run >"$WORK/probe-$READER.log" 2>&1 &
        ;;
    tail)
        "$OUTBOXD" tail --postgres-url "$URL" --slot probe --publication bench_outbox --confirm \
            --metrics-address 127.0.0.1:19399 >/dev/null 2>"$WORK/probe-$READER.log" &
        ;;
    recvlogical)
        "$BIN/pg_recvlogical" -h 127.0.0.1 -p 54400 -U postgres -d probe --slot probe --start \
            -o proto_version=1 -o publication_names=bench_outbox -f /dev/null 2>"$WORK/probe-$READER.log" &
        ;;
    *) echo "unknown reader $READER" >&2; exit 2 ;;
esac
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$SQL"' EXIT
sleep 2
WPID=$("${PSQL[@]}" -d probe -Atc "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'probe'")
KPID=$(pgrep -f "$WORK/kafka/server.properties" | head -n 1 || true)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
box() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }

"$PY" - "$PID" >"$WORK/probe-$READER.samples" <<'PY' &
import os, sys, time
import psycopg
pid = int(sys.argv[1])
c = psycopg.connect("host=127.0.0.1 port=54400 user=postgres dbname=probe", autocommit=True)
while os.path.exists(f"/proc/{pid}"):
    r = c.execute("SELECT pg_current_wal_lsn() - r.sent_lsn, pg_current_wal_lsn() - s.confirmed_flush_lsn "
                  "FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid "
                  "WHERE s.slot_name = 'probe'").fetchone()
    if r:
        print(int(r[0]), int(r[1]), flush=True)
    time.sleep(0.2)
PY

r0=$(ticks "$PID"); w0=$(ticks "$WPID"); k0=$( [[ -n $KPID ]] && ticks "$KPID" || echo 0); read -r b0 i0 < <(box)
"$BIN/pgbench" -h 127.0.0.1 -p 54400 -U postgres -n -f "$SQL" -D k=10 -c 4 -j 2 -R $((RATE / 10)) -T 15 probe 2>&1 |
    grep -E 'tps|schedule lag'
r1=$(ticks "$PID"); w1=$(ticks "$WPID"); k1=$( [[ -n $KPID ]] && ticks "$KPID" || echo 0); read -r b1 i1 < <(box)
echo "CPU ticks: reader $((r1 - r0)), walsender $((w1 - w0)), broker $((k1 - k0)); machine busy $((b1 - b0)), idle $((i1 - i0))"
for t in /proc/"$PID"/task/*; do
    printf '  thread %-16s cpu %5s  voluntary cs %7s  involuntary cs %7s\n' "$(cat "$t/comm")" "$(ticks "$PID/task/${t##*/}")" \
        "$(awk '/^voluntary/{print $2}' "$t/status")" "$(awk '/^nonvoluntary/{print $2}' "$t/status")"
done
sleep 3
kill "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
sleep 0.5
for col in 1 2; do
    name=$([[ $col == 1 ]] && echo "walsender sent lag" || echo "slot confirmed lag")
    awk -v c="$col" '{print $c}' "$WORK/probe-$READER.samples" | sort -n |
        awk -v n="$name" '{a[NR]=$1} END {if (NR) printf "%s, bytes: p50 %d, p90 %d, max %d (%d samples)\n", n, a[int(NR*.5)+1], a[int(NR*.9)+1], a[NR], NR}'
done
