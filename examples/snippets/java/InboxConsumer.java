// An idempotent consumer of outboxd's events: kafka-clients and JDBC.
//
//   java -cp 'lib/*' InboxConsumer.java BROKERS TOPIC GROUP JDBC_URL COUNT
//
// Consumes COUNT records, applying each in one database transaction with the inbox
// rules of docs/consumers.md, and commits each record's offset after that transaction.

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;

public class InboxConsumer {
    static String header(ConsumerRecord<String, String> r, String name) {
        Header h = r.headers().lastHeader(name);
        return h == null || h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8);
    }

    static PreparedStatement sql(Connection db, String sql, Object... params) throws SQLException {
        PreparedStatement s = db.prepareStatement(sql);
        for (int i = 0; i < params.length; i++) s.setObject(i + 1, params[i]);
        return s;
    }

    /** Applies one record in one transaction (db has autocommit off); returns what happened. */
    static String apply(Connection db, ConsumerRecord<String, String> r) throws SQLException {
        String id = header(r, "id"), lsn = header(r, "outboxd.lsn"), index = header(r, "outboxd.index");
        Long idx = index == null ? null : Long.valueOf(index);
        boolean replay = "true".equals(header(r, "outboxd.replay"));
        String outcome = "applied";
        try {
            if (sql(db, "INSERT INTO inbox (event_id, topic, partition, \"offset\", aggregate_id, lsn, "
                    + "event_index, replayed) VALUES (?, ?, ?, ?, ?, ?::pg_lsn, ?, ?) "
                    + "ON CONFLICT (event_id) DO NOTHING",
                    id, r.topic(), r.partition(), r.offset(), r.key(), lsn, idx, replay).executeUpdate() == 0) {
                db.rollback();
                return "duplicate"; // applied before
            }
            if (lsn != null && sql(db, "INSERT INTO inbox_versions (topic, aggregate_id, lsn, event_index, "
                    + "event_id) VALUES (?, ?, ?::pg_lsn, ?, ?) ON CONFLICT DO NOTHING",
                    r.topic(), r.key(), lsn, idx, id).executeUpdate() == 0) {
                ResultSet rs = sql(db, "SELECT (?::pg_lsn, ?::bigint) > (lsn, event_index) FROM inbox_versions "
                        + "WHERE topic = ? AND aggregate_id = ? FOR UPDATE", lsn, idx, r.topic(), r.key()).executeQuery();
                rs.next();
                if (rs.getBoolean(1)) {
                    sql(db, "UPDATE inbox_versions SET lsn = ?::pg_lsn, event_index = ?, event_id = ? "
                            + "WHERE topic = ? AND aggregate_id = ?", lsn, idx, id, r.topic(), r.key()).executeUpdate();
                } else if (replay) {
                    outcome = "applied late"; // replayed, never applied: apply it
                } else {
                    db.rollback();
                    return "stale"; // a newer event of the aggregate was applied
                }
            }
            // Your effects, in the same transaction:
            sql(db, "INSERT INTO applied_events (event_id, order_id, payload) VALUES (?, ?, ?)",
                    id, r.key(), r.value()).executeUpdate();
            db.commit();
            return outcome;
        } catch (SQLException e) {
            db.rollback();
            throw e;
        }
    }

    // docs:begin
    static void consume(KafkaConsumer<String, String> consumer, Connection db, int count) throws SQLException {
        for (int done = 0; done < count; ) {
            for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofSeconds(1))) {
                System.out.println(apply(db, r) + " " + r.offset());
                // Only after the database transaction committed:
                consumer.commitSync(Map.of(new TopicPartition(r.topic(), r.partition()),
                        new OffsetAndMetadata(r.offset() + 1)));
                done++;
            }
        }
    }
    // docs:end

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            throw new IllegalArgumentException("usage: InboxConsumer BROKERS TOPIC GROUP JDBC_URL COUNT");
        }
        // docs:begin
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, args[2]);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        // docs:end
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p);
             Connection db = DriverManager.getConnection(args[3])) {
            db.setAutoCommit(false);
            consumer.subscribe(List.of(args[1]));
            consume(consumer, db, Integer.parseInt(args[4]));
        }
    }
}
