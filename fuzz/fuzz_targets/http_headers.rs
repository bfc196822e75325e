//! Fuzzes the response header parsing the connectors share: `Retry-After` (seconds or an HTTP
//! date, capped) and `Date` (→ the destination's clock offset, and the timestamp Olive signs).
//!
//! Input: 8 bytes of local time (milliseconds since the epoch, any `i64`), then the header value.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use refund_agent::destinations::clock::{self, ClockOffset, Observed};
use refund_agent::destinations::http::{self, MAX_RETRY_AFTER};
use refund_agent::destinations::olive::sign;
use reqwest::header::{HeaderMap, HeaderValue, DATE, RETRY_AFTER};

fuzz_target!(|data: &[u8]| {
    let Some((now_bytes, value)) = data.split_first_chunk::<8>() else {
        return;
    };
    let local_ms = i64::from_le_bytes(*now_bytes);
    let Ok(header) = HeaderValue::from_bytes(value) else {
        return;
    };
    // `SystemTime` for the local clock, where it can hold it.
    let now = if local_ms >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_millis(local_ms.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_millis(local_ms.unsigned_abs()))
    };

    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, header.clone());
    headers.insert(DATE, header.clone());
    let text = header.to_str().ok().map(str::trim);

    if let Some(now) = now {
        let wait = http::retry_after(&headers, now);
        assert!(wait.is_none_or(|w| w <= MAX_RETRY_AFTER), "Retry-After above the cap");
        if let Some(secs) = text.and_then(|t| t.parse::<u64>().ok()) {
            assert_eq!(wait, Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER)));
        }
        if let Some(at) = text.and_then(|t| httpdate::parse_http_date(t).ok()) {
            let expected = at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
            assert_eq!(wait, Some(expected), "an HTTP date read as another wait");
        }
    }

    let date = http::date(&headers);
    assert_eq!(date.is_some(), text.is_some_and(|t| httpdate::parse_http_date(t).is_ok()));
    if let Some(server) = date {
        let offset = ClockOffset::new();
        let measured = clock::measure_ms(server, local_ms);
        let observed = offset.observe(server, local_ms);
        // One answer moves the offset only when it is within the tolerance of none (zero) and
        // in range; a jump waits for a second answer that agrees.
        match observed {
            Observed::Kept => assert_eq!(offset.offset_ms(), Some(measured), "the measured offset was not kept"),
            Observed::Awaiting | Observed::OutOfRange => assert_eq!(offset.offset_ms(), None, "{observed:?}"),
            other => panic!("a first answer cannot be {other:?}"),
        }
        let server_now = offset.server_now_ms(local_ms);
        assert_eq!(server_now, local_ms.saturating_add(offset.offset_ms().unwrap_or(0)));
        // Olive signs with the server's time: always a well-formed RFC 3339 timestamp.
        let stamp = sign::timestamp(server_now.div_euclid(1000));
        let b = stamp.as_bytes();
        assert!(stamp.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z', "{stamp}");
    }
});
