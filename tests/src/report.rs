//! What an independent consumer saw, compared with what the writers committed, and
//! the one-line result of a scenario.

use std::collections::HashMap;
use std::time::Duration;

use crate::kafka::ConsumedRecord;
use crate::process::tail;

/// What an independent consumer saw, compared with what the writers committed.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Distinct events seen.
    pub delivered: usize,
    /// Events seen more than once (at-least-once replays).
    pub duplicates: usize,
    /// Committed events never seen.
    pub missing: usize,
    /// A newer event of an aggregate seen before an older one was first delivered.
    pub order_violations: usize,
    /// A few examples of what went wrong, for the assertion message.
    pub examples: Vec<String>,
}

/// Per aggregate, the sequence numbers in `records` must be 1..=n without a hole:
/// nothing committed before the newest delivered event of an aggregate is missing
/// (for runs that stop early, where `DeliveryReport`'s "missing" does not apply).
/// Returns how many distinct events were seen.
pub fn assert_no_holes(records: &[ConsumedRecord], context: &str) -> usize {
    let mut seen: HashMap<String, std::collections::BTreeSet<i64>> = HashMap::new();
    for r in records {
        let value: serde_json::Value = r
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_else(|| panic!("unparsable record {r:?}"));
        let (Some(agg), Some(seq)) = (value["agg"].as_str(), value["seq"].as_i64()) else {
            panic!("record without agg and seq: {r:?}");
        };
        seen.entry(agg.to_owned()).or_default().insert(seq);
    }
    for (agg, seqs) in &seen {
        let newest = seqs.iter().next_back().copied().unwrap_or(0);
        assert_eq!(
            seqs.len() as i64,
            newest,
            "aggregate {agg}: a hole below {newest} ({} seen)\n{context}",
            seqs.len()
        );
    }
    seen.values().map(|s| s.len()).sum()
}

impl DeliveryReport {
    /// Zero missing, zero order violations and `expected` events delivered;
    /// `context` (what ran, a log) goes into the failure message.
    pub fn assert_complete(&self, expected: usize, context: &str) {
        assert_eq!(
            self.missing, 0,
            "missing events: {:?}\n{context}",
            self.examples
        );
        assert_eq!(
            self.order_violations, 0,
            "order violations: {:?}\n{context}",
            self.examples
        );
        assert_eq!(
            self.delivered, expected,
            "delivered: {:?}\n{context}",
            self.examples
        );
    }

    /// Checks records whose value is `{"agg": <aggregate id>, "seq": <1-based sequence
    /// number in commit order>, …}` against `expected` (aggregate id → last sequence
    /// number committed). A replayed suffix (seeing 3, 4 again after 5) is allowed and
    /// counted as duplicates; seeing 5 before 4 was ever seen is an order violation.
    pub fn check(records: &[ConsumedRecord], expected: &HashMap<String, i64>) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let mut high: HashMap<&str, i64> = HashMap::new();
        let mut parsed = Vec::with_capacity(records.len());
        for r in records {
            let value: serde_json::Value = match r.value.as_deref().map(serde_json::from_slice) {
                Some(Ok(v)) => v,
                _ => {
                    report.order_violations += 1;
                    report.examples.push(format!("unparsable record {r:?}"));
                    continue;
                }
            };
            let agg = value["agg"].as_str().unwrap_or_default().to_owned();
            let seq = value["seq"].as_i64().unwrap_or(-1);
            if r.key.as_deref() != Some(agg.as_bytes()) {
                report.order_violations += 1;
                report
                    .examples
                    .push(format!("key {:?} is not the aggregate {agg}", r.key));
            }
            parsed.push((agg, seq));
        }
        for (agg, seq) in &parsed {
            let h = high.entry(agg.as_str()).or_insert(0);
            if *seq == *h + 1 {
                *h = *seq;
                report.delivered += 1;
            } else if *seq <= *h {
                report.duplicates += 1;
            } else {
                report.order_violations += 1;
                if report.examples.len() < 10 {
                    report
                        .examples
                        .push(format!("aggregate {agg}: seq {seq} arrived after {h}"));
                }
            }
        }
        for (agg, last) in expected {
            let seen = high.get(agg.as_str()).copied().unwrap_or(0);
            if seen < *last {
                report.missing += usize::try_from(*last - seen).unwrap_or(0);
                if report.examples.len() < 20 {
                    report
                        .examples
                        .push(format!("aggregate {agg}: saw up to {seen} of {last}"));
                }
            }
        }
        report
    }
}

/// One scenario's result, printed and appended to `$OUTBOXD_FAULT_REPORT` (a file)
/// when that is set.
#[derive(Debug)]
pub struct ScenarioResult<'a> {
    pub name: &'a str,
    pub seed: u64,
    pub events: usize,
    pub faults: usize,
    pub report: &'a DeliveryReport,
    pub elapsed: Duration,
}

impl ScenarioResult<'_> {
    pub fn print(&self) {
        let line = format!(
            "{{\"scenario\":\"{}\",\"seed\":{},\"events\":{},\"faults\":{},\"delivered\":{},\"missing\":{},\"reordered\":{},\"duplicated\":{},\"seconds\":{:.1}}}",
            self.name,
            self.seed,
            self.events,
            self.faults,
            self.report.delivered,
            self.report.missing,
            self.report.order_violations,
            self.report.duplicates,
            self.elapsed.as_secs_f64()
        );
        println!("SCENARIO {line}");
        if let Ok(path) = std::env::var("OUTBOXD_FAULT_REPORT") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    /// Zero missing, zero order violations, every committed event delivered.
    pub fn assert_complete(&self, log: &str) {
        self.report.assert_complete(
            self.events,
            &format!("{}\n--- relay log tail ---\n{}", self.name, tail(log)),
        );
    }
}
