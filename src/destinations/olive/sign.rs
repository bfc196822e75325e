//! Olive's request signature (seed 004): lowercase hex HMAC-SHA256 under the integration's
//! secret of `METHOD\nPATH\nTIMESTAMP\nRAW_BODY`, where RAW_BODY is exactly the bytes sent and
//! TIMESTAMP is the `X-Timestamp` header. Pure.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

/// The latest second [`timestamp`] can write with a four-digit year (9999-12-31T23:59:59Z).
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// The `X-Signature` value.
pub fn signature(secret: &[u8], method: &str, path: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    for part in [method.as_bytes(), path.as_bytes(), timestamp.as_bytes()] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Timestamp` value: RFC 3339 in UTC to the second with a `Z`, as in the seed's example
/// (`2026-03-10T12:00:00Z`). Times outside years 1970..=9999 are clamped to them.
pub fn timestamp(unix_secs: i64) -> String {
    let t = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(unix_secs.clamp(0, MAX_UNIX_SECS));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The seed's example request.
    const SEED_BODY: &str = r#"{"original_transaction_id":"txn_pos_12345","amount":"1500.00","reason":"Customer returned item","initiated_by":"admin_user_01"}"#;
    const SEED_TIME: &str = "2026-03-10T12:00:00Z";
    const PATH: &str = "/api/v1/pos/refund";

    /// The seed's own recipe, run with the real `openssl` command line. `None` when there is no
    /// `openssl` on this machine.
    fn openssl_recipe(secret: &str, timestamp: &str, body: &str) -> Option<String> {
        let script = r#"printf 'POST\n/api/v1/pos/refund\n%s\n%s' "$TIMESTAMP" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //'"#;
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("TIMESTAMP", timestamp)
            .env("BODY", body)
            .env("SECRET", secret)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let hex = text.trim_end_matches('\n').to_string();
        (out.status.success() && hex.len() == 64).then_some(hex)
    }

    fn openssl_available() -> bool {
        Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
    }

    #[test]
    fn matches_the_seed_recipe_run_with_openssl() {
        if !openssl_available() {
            eprintln!("skipping: no openssl command on this machine (the fixed vector below still runs)");
            return;
        }
        let cases: &[(&str, &str, &str)] = &[
            ("olive_demo_secret", SEED_TIME, SEED_BODY),
            (
                "s3cr3t with spaces",
                "2026-11-23T10:15:00Z",
                r#"{"original_transaction_id":"txn_123","amount":"5.00","reason":"Kunde gab Ware zurück — défectueux, 返品","initiated_by":"emp_42"}"#,
            ),
            (
                "k",
                "1999-12-31T23:59:59Z",
                r#"{"original_transaction_id":"t\"1","amount":"0.01","reason":"said \"broken\" and 'bent' \\ 100% %s","initiated_by":"o"}"#,
            ),
            ("another-secret", SEED_TIME, ""),
        ];
        for (secret, ts, body) in cases {
            let expected = openssl_recipe(secret, ts, body).expect("the openssl recipe produced a digest");
            let ours = signature(secret.as_bytes(), "POST", PATH, ts, body.as_bytes());
            assert_eq!(ours, expected, "secret {secret:?}, body {body}");
        }
    }

    #[test]
    fn seed_example_fixed_vector() {
        // Computed with the seed's openssl recipe and the secret "olive_demo_secret".
        assert_eq!(
            signature(b"olive_demo_secret", "POST", PATH, SEED_TIME, SEED_BODY.as_bytes()),
            "11116d34c7125550aa93e4246dc379e873edc6d235d3ed8831676db27cc13e24"
        );
    }

    #[test]
    fn every_part_is_covered() {
        let base = signature(b"k", "POST", PATH, SEED_TIME, b"{}");
        assert_eq!(base.len(), 64);
        assert!(base.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(base, signature(b"k2", "POST", PATH, SEED_TIME, b"{}"));
        assert_ne!(base, signature(b"k", "PUT", PATH, SEED_TIME, b"{}"));
        assert_ne!(base, signature(b"k", "POST", "/p/api/v1/pos/refund", SEED_TIME, b"{}"));
        assert_ne!(base, signature(b"k", "POST", PATH, "2026-03-10T12:00:01Z", b"{}"));
        assert_ne!(base, signature(b"k", "POST", PATH, SEED_TIME, b"{ }"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        assert_eq!(timestamp(1_773_144_000), SEED_TIME);
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(timestamp(-5), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
