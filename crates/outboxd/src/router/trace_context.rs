//! Trace context from the outbox row to W3C `traceparent` / `tracestate` headers.
//!
//! Debezium's tracing reads the `tracingspancontext` column as a serialized
//! `java.util.Properties` (what the writer's OpenTelemetry propagator injected,
//! stored with `Properties.store`), records spans of its own and injects the child
//! span's context. outboxd records no spans: it passes the writer's context on,
//! so the consumer's span continues the writer's trace as its direct child.

/// The headers for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// The trace headers carried by a `java.util.Properties` text, `Ok(None)` when it
/// has no `traceparent`, or why the context is unusable.
pub fn from_properties(text: &str) -> Result<Option<TraceHeaders>, String> {
    let properties = crate::java_properties::parse(text);
    let get = |key: &str| {
        properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let Some(traceparent) = get("traceparent") else {
        return Ok(None);
    };
    let traceparent = validate_traceparent(traceparent.trim())?;
    let tracestate = get("tracestate").and_then(normalize_tracestate);
    Ok(Some(TraceHeaders {
        traceparent,
        tracestate,
    }))
}

/// W3C Trace Context: `version-traceid-parentid-flags`, lower-case hex, the ids not
/// all zeros. Later versions may append fields, which are dropped; the header is
/// written as version `00`.
fn validate_traceparent(value: &str) -> Result<String, String> {
    let bad = |why: &str| format!("traceparent '{value}' is not a W3C trace context: {why}");
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let parts: Vec<&str> = value.splitn(5, '-').collect();
    let [version, trace_id, parent_id, flags, rest @ ..] = parts.as_slice() else {
        return Err(bad("expected four fields separated by '-'"));
    };
    if !hex(version, 2) || *version == "ff" {
        return Err(bad("invalid version"));
    }
    if *version == "00" && !rest.is_empty() {
        return Err(bad("version 00 has exactly four fields"));
    }
    if !hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return Err(bad("invalid trace id"));
    }
    if !hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return Err(bad("invalid parent id"));
    }
    if !hex(flags, 2) {
        return Err(bad("invalid flags"));
    }
    Ok(format!("00-{trace_id}-{parent_id}-{flags}"))
}

/// `tracestate` as OpenTelemetry re-injects it: members trimmed and joined with
/// `,`, empty ones dropped; an invalid list is dropped whole (at most 32 members).
fn normalize_tracestate(value: &str) -> Option<String> {
    let members: Vec<&str> = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    let valid_member = |m: &&str| {
        let Some((key, val)) = m.split_once('=') else {
            return false;
        };
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'));
        let val_ok = !val.is_empty()
            && val.len() <= 256
            && val
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && !val.ends_with(' ');
        key_ok && val_ok
    };
    if members.is_empty() || members.len() > 32 || !members.iter().all(valid_member) {
        return None;
    }
    Some(members.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context as `Properties.store` writes it (the date comment, escaped `=`).
    #[test]
    fn reads_a_stored_properties_context() {
        let stored = "#Tue Nov 30 10:00:00 UTC 2026\n\
                      traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n\
                      tracestate=vendor\\=abc,other\\=x\n";
        assert_eq!(
            from_properties(stored).unwrap(),
            Some(TraceHeaders {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
                tracestate: Some("vendor=abc,other=x".to_owned()),
            })
        );
        assert_eq!(from_properties("# nothing\n").unwrap(), None);
    }

    #[test]
    fn invalid_contexts_are_refused_and_tracestate_normalized() {
        for bad in [
            "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "traceparent=00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "traceparent=00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "traceparent=ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(from_properties(bad).is_err(), "{bad}");
        }
        let t = from_properties(
            "traceparent: 01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra\n\
             tracestate = a\\=1 , ,b\\=2",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.traceparent,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        );
        assert_eq!(t.tracestate.as_deref(), Some("a=1,b=2"));
        let t = from_properties(
            "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate=Bad=1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.tracestate, None);
    }
}
