//! Row seals: HMAC-SHA256 under the device key over every column that matters, so a row edited
//! behind the agent's back (a changed amount, a delivery set back to `pending`) is detected
//! before anything is sent. Pure: no I/O.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest seal key accepted: HMAC-SHA256 gains nothing beyond 32 bytes, and a shorter key
/// is guessable.
pub const MIN_KEY_LEN: usize = 32;

/// Seals and verifies rows. Holds the device key; its `Debug` never shows it.
#[derive(Clone)]
pub struct Sealer {
    key: Vec<u8>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

/// The seal key is too short to be trusted.
#[derive(Debug, thiserror::Error)]
#[error("the seal key has {0} bytes; at least {MIN_KEY_LEN} are needed")]
pub struct WeakKey(usize);

impl Sealer {
    pub fn new(key: Vec<u8>) -> Result<Sealer, WeakKey> {
        if key.len() < MIN_KEY_LEN {
            return Err(WeakKey(key.len()));
        }
        Ok(Sealer { key })
    }

    /// The seal of one row: `kind` names the table, and each field is length-prefixed so that
    /// moving bytes from one field to the next changes the seal.
    pub fn seal(&self, kind: &str, fields: &[&[u8]]) -> [u8; 32] {
        self.mac(kind, fields).finalize().into_bytes().into()
    }

    /// Constant-time check of a stored seal.
    pub fn verify(&self, kind: &str, fields: &[&[u8]], seal: &[u8]) -> bool {
        self.mac(kind, fields).verify_slice(seal).is_ok()
    }

    /// A value derived from the key and stored in the database, so that starting with a
    /// different key is refused outright instead of quarantining every row.
    pub fn key_check(&self) -> String {
        hex::encode(self.seal("key-check", &[b"refund-agent"]))
    }

    fn mac(&self, kind: &str, fields: &[&[u8]]) -> HmacSha256 {
        // `new_from_slice` accepts keys of any length for HMAC; the length was checked in `new`.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(&(kind.len() as u64).to_be_bytes());
        mac.update(kind.as_bytes());
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Sealer::new(vec![0; 31]).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", sealer(0x41)).contains("AAAA"));
    }

    #[test]
    fn another_key_gives_another_key_check() {
        assert_ne!(sealer(1).key_check(), sealer(2).key_check());
    }

    proptest! {
        #[test]
        fn seals_verify_and_any_change_breaks_them(
            a in proptest::collection::vec(any::<u8>(), 0..64),
            b in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<usize>(),
        ) {
            let s = sealer(7);
            let seal = s.seal("refund", &[&a, &b]);
            prop_assert!(s.verify("refund", &[&a, &b], &seal));
            prop_assert!(!s.verify("delivery", &[&a, &b], &seal));
            prop_assert!(!sealer(8).verify("refund", &[&a, &b], &seal));
            // Moving the boundary between fields must change the seal.
            if !b.is_empty() {
                let mut a2 = a.clone();
                a2.push(b[0]);
                prop_assert!(!s.verify("refund", &[&a2, &b[1..]], &seal));
            }
            let mut tampered = a.clone();
            if !tampered.is_empty() {
                let i = flip % tampered.len();
                tampered[i] ^= 1;
                prop_assert!(!s.verify("refund", &[&tampered, &b], &seal));
            }
        }
    }
}
