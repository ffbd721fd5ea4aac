//! Feeds arbitrary bytes to `decode` and to a `StreamDecoder`.
//!
//! The whole input is decoded as one message; then it is split into frames
//! (u8 length prefix, so that several small messages fit one input) and fed
//! in order to a single `StreamDecoder`, which exercises the relation cache
//! and transaction checks across messages.
//!
//! Beyond "no panic", it checks that whatever `decode` accepts re-encodes to
//! exactly the same bytes: the decoder must not accept two spellings of a
//! message, or silently drop anything.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outboxd_pgoutput::{decode, encode::encode, StreamDecoder};

fn check_canonical(frame: &[u8]) {
    if let Ok(msg) = decode(Bytes::copy_from_slice(frame)) {
        let again = encode(&msg).expect("a decoded message is encodable");
        assert_eq!(
            again.as_ref(),
            frame,
            "non-canonical input accepted: {msg:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_canonical(data);

    let mut stream = StreamDecoder::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        check_canonical(frame);
        if let Err(e) = stream.decode(Bytes::copy_from_slice(frame)) {
            // Formatting must not panic either.
            let _ = e.to_string();
        }
        rest = next;
    }
});
