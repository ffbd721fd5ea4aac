// An idempotent consumer of outboxd's events: franz-go and pgx.
//
//	go run . BROKERS TOPIC GROUP POSTGRES_URL COUNT
//
// Consumes COUNT records, applying each in one database transaction with the inbox
// rules of docs/consumers.md, and commits each record's offset after that transaction.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

func apply(ctx context.Context, db *pgx.Conn, r *kgo.Record) (outcome string, err error) {
	h := map[string]*string{}
	for _, hd := range r.Headers {
		v := string(hd.Value)
		h[hd.Key] = &v
	}
	if h["id"] == nil {
		return "", fmt.Errorf("%s[%d]@%d has no id header", r.Topic, r.Partition, r.Offset)
	}
	id, key, lsn, index := *h["id"], string(r.Key), h["outboxd.lsn"], h["outboxd.index"]
	replay := h["outboxd.replay"] != nil && *h["outboxd.replay"] == "true"
	tx, err := db.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx) // a no-op after Commit
	tag, err := tx.Exec(ctx, `INSERT INTO inbox (event_id, topic, partition, "offset",
	    aggregate_id, lsn, event_index, replayed) VALUES ($1, $2, $3, $4, $5, $6::pg_lsn, $7, $8)
	    ON CONFLICT (event_id) DO NOTHING`,
		id, r.Topic, r.Partition, r.Offset, key, lsn, index, replay)
	if err != nil {
		return "", err
	}
	if tag.RowsAffected() == 0 {
		return "duplicate", nil // applied before
	}
	outcome = "applied"
	if lsn != nil {
		tag, err = tx.Exec(ctx, `INSERT INTO inbox_versions (topic, aggregate_id, lsn, event_index,
		    event_id) VALUES ($1, $2, $3::pg_lsn, $4, $5) ON CONFLICT DO NOTHING`,
			r.Topic, key, lsn, index, id)
		if err != nil {
			return "", err
		}
		if tag.RowsAffected() == 0 {
			var newer bool
			err = tx.QueryRow(ctx, `SELECT ($1::pg_lsn, $2::bigint) > (lsn, event_index)
			    FROM inbox_versions WHERE topic = $3 AND aggregate_id = $4 FOR UPDATE`,
				lsn, index, r.Topic, key).Scan(&newer)
			switch {
			case err != nil:
				return "", err
			case newer:
				_, err = tx.Exec(ctx, `UPDATE inbox_versions SET lsn = $1::pg_lsn,
				    event_index = $2, event_id = $3 WHERE topic = $4 AND aggregate_id = $5`,
					lsn, index, id, r.Topic, key)
			case replay:
				outcome = "applied late" // replayed, never applied: apply it
			default:
				return "stale", nil // a newer event of the aggregate was applied
			}
			if err != nil {
				return "", err
			}
		}
	}
	// Your effects, in the same transaction:
	_, err = tx.Exec(ctx, `INSERT INTO applied_events (event_id, order_id, payload)
	    VALUES ($1, $2, $3)`, id, key, string(r.Value))
	if err != nil {
		return "", err
	}
	return outcome, tx.Commit(ctx)
}

// docs:begin
func consume(ctx context.Context, cl *kgo.Client, db *pgx.Conn, count int) error {
	for done := 0; done < count; {
		fetches := cl.PollFetches(ctx)
		if err := fetches.Err(); err != nil {
			return err
		}
		for _, r := range fetches.Records() {
			outcome, err := apply(ctx, db, r)
			if err != nil {
				return err
			}
			fmt.Println(outcome, r.Offset)
			// Only after the database transaction committed:
			if err := cl.CommitRecords(ctx, r); err != nil {
				return err
			}
			done++
		}
		cl.AllowRebalance() // revocations wait until the polled records are done
	}
	return nil
}
// docs:end

func main() {
	if len(os.Args) != 6 {
		log.Fatal("usage: inbox-consumer BROKERS TOPIC GROUP POSTGRES_URL COUNT")
	}
	brokers, topic, group, dsn := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	count, err := strconv.Atoi(os.Args[5])
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	// docs:begin
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.BlockRebalanceOnPoll(),
	)
	// docs:end
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close(ctx)
	if err := consume(ctx, cl, db, count); err != nil {
		log.Fatal(err)
	}
}
