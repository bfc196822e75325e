//! The managers file: one line per manager, `mgr_1 $argon2id$v=19$m=…,t=…,p=…$salt$hash`,
//! `#` comments and blank lines allowed. It is a secret file (mode 0600, looked up in
//! `$CREDENTIALS_DIRECTORY` like the other key files): the hashes slow a guesser down, they do
//! not stop one who can read them.
//!
//! Any standard argon2id parameters verify: they are read from each PHC string, so a hash made
//! by another tool (the reference `argon2` command line, a password manager) works as well as
//! one from `refund-agent manager hash-pin`, which uses the crate's default parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::{Pin, MAX_MANAGER_ID};
use crate::config::{read_secret, ConfigError};

/// The shortest PIN `hash-pin` accepts.
pub const MIN_PIN: usize = 4;
/// The longest PIN accepted anywhere, so nobody can make the agent hash megabytes.
pub const MAX_PIN: usize = 128;

/// Why the managers file (or a new PIN) cannot be used. Messages name the line, never the hash.
#[derive(Debug, thiserror::Error)]
pub enum ManagersError {
    #[error(transparent)]
    Secret(#[from] ConfigError),
    #[error("managers file {path}, line {line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("managers file {path}: no manager is listed")]
    Empty { path: PathBuf },
    #[error("{0}")]
    BadPin(String),
    #[error("cannot hash the PIN: {0}")]
    Hash(String),
}

/// The managers and their PIN hashes (PHC strings, checked when the file was read).
#[derive(Clone)]
pub struct Managers {
    hashes: BTreeMap<String, String>,
}

impl std::fmt::Debug for Managers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managers").field("ids", &self.hashes.keys().collect::<Vec<_>>()).finish()
    }
}

impl Managers {
    /// Reads the file with the permission checks of every secret, then parses it.
    pub fn load(path: &Path) -> Result<Managers, ManagersError> {
        let secret = read_secret(path)?;
        let text = std::str::from_utf8(secret.expose()).map_err(|_| ManagersError::Line {
            path: path.to_path_buf(),
            line: 0,
            message: "the file is not UTF-8 text".into(),
        })?;
        Managers::parse(text, path)
    }

    /// Parses the file's text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Managers, ManagersError> {
        let mut hashes = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: &str| ManagersError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected `MANAGER_ID $argon2id$…` (an id, a space, a PHC string)"));
            };
            check_id(id).map_err(|m| err(&m))?;
            let parsed = PasswordHash::new(hash).map_err(|_| err("the hash is not a PHC string"))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(err("the hash is not argon2id"));
            }
            if parsed.salt.is_none() || parsed.hash.is_none() || argon2::Params::try_from(&parsed).is_err() {
                return Err(err("the hash is not a PHC string with argon2 parameters, a salt and a hash"));
            }
            if hashes.insert(id.to_string(), hash.to_string()).is_some() {
                return Err(err(&format!("manager {id} is listed twice")));
            }
        }
        if hashes.is_empty() {
            return Err(ManagersError::Empty { path: path.to_path_buf() });
        }
        Ok(Managers { hashes })
    }

    /// How many managers are listed.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `pin` is `manager`'s PIN. Costs one argon2 verification (tens of ms): call it
    /// off the async runtime and never on the queue owner thread. An unknown manager costs
    /// the same, so the answer's timing does not tell which ids exist.
    pub fn verify(&self, manager: &str, pin: &Pin) -> bool {
        let (known, hash) = match self.hashes.get(manager) {
            Some(hash) => (true, hash),
            None => match self.hashes.values().next() {
                Some(any) => (false, any),
                None => return false,
            },
        };
        if pin.expose().len() > MAX_PIN {
            return false;
        }
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = Argon2::default().verify_password(pin.expose().as_bytes(), &parsed).is_ok();
        known && matches
    }
}

/// A manager id: 1 to 64 of `A-Z a-z 0-9 _ . -`, so it can stand in a log or audit line as is.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MANAGER_ID {
        return Err(format!("a manager id has 1 to {MAX_MANAGER_ID} characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err("a manager id may hold only letters, digits, `_`, `.` and `-`".into());
    }
    Ok(())
}

/// A new PIN must have 4 to 128 characters and no control characters.
pub fn check_new_pin(pin: &Pin) -> Result<(), ManagersError> {
    let p = pin.expose();
    let n = p.chars().count();
    if n < MIN_PIN {
        return Err(ManagersError::BadPin(format!("a PIN has at least {MIN_PIN} characters")));
    }
    if p.len() > MAX_PIN {
        return Err(ManagersError::BadPin(format!("a PIN has at most {MAX_PIN} bytes")));
    }
    if p.chars().any(char::is_control) {
        return Err(ManagersError::BadPin("a PIN may not hold control characters".into()));
    }
    Ok(())
}

/// The PHC string of `pin` under a fresh random salt, with the crate's default argon2id
/// parameters (the line `refund-agent manager hash-pin` prints).
pub fn hash_pin(pin: &Pin) -> Result<String, ManagersError> {
    check_new_pin(pin)?;
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ManagersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(pin.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ManagersError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by the argon2 reference implementation's command-line tool (Debian package
    /// `argon2`, 0~20171227): `echo -n 1234 | argon2 somesalt123 -id -t 2 -m 12 -p 1 -e`.
    const REFERENCE_1234: &str =
        "$argon2id$v=19$m=4096,t=2,p=1$c29tZXNhbHQxMjM$u5ItbQp4q3bWsTPEkwR3pECD/YFg7cb3nulk7WfqBxo";
    /// The same tool with other parameters: `echo -n 2468 | argon2 saltsaltsalt -id -t 3 -m 16 -p 4 -e`.
    const REFERENCE_2468: &str =
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$V+VYIgrwZwKH7Io2CXlNm1iC/dA5gaYeG47PSUjjDtk";

    fn parse(text: &str) -> Result<Managers, ManagersError> {
        Managers::parse(text, Path::new("managers"))
    }

    #[test]
    fn hashes_from_the_reference_implementation_verify() {
        let m =
            parse(&format!("# managers\n\nmgr_1 {REFERENCE_1234}\n  mgr_2   {REFERENCE_2468}  \n")).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.verify("mgr_1", &Pin::new("1234")));
        assert!(m.verify("mgr_2", &Pin::new("2468")));
        assert!(!m.verify("mgr_1", &Pin::new("1235")));
        assert!(!m.verify("mgr_2", &Pin::new("1234")));
        assert!(!m.verify("mgr_3", &Pin::new("1234")), "an unknown manager never verifies");
    }

    #[test]
    fn a_hash_made_by_hash_pin_verifies() {
        let line = hash_pin(&Pin::new("7531")).unwrap();
        assert!(line.starts_with("$argon2id$v=19$"), "{line}");
        let m = parse(&format!("boss {line}")).unwrap();
        assert!(m.verify("boss", &Pin::new("7531")));
        assert!(!m.verify("boss", &Pin::new("7532")));
    }

    #[test]
    fn bad_lines_are_named_by_number_without_the_hash() {
        let cases = [
            ("mgr_1\n", 1, "expected"),
            (&format!("# c\nmgr_1 {REFERENCE_1234} extra"), 2, "expected"),
            ("\n\nmgr_1 $argon2id$garbage-secret", 3, "not a PHC string"),
            ("mgr_1 $argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHQxMjM$u5ItbQp4q3bWsTPEkwR3pE", 1, "PHC string"),
            (&format!("mgr 1 {REFERENCE_1234}"), 1, "expected"),
            (&format!("mgr/1 {REFERENCE_1234}"), 1, "letters, digits"),
            (&format!("m {REFERENCE_1234}\nm {REFERENCE_2468}"), 2, "twice"),
            (&format!("m {}", REFERENCE_1234.replace("argon2id", "argon2i")), 1, "not argon2id"),
        ];
        for (text, line, what) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}:")), "{err}");
            assert!(err.contains(what), "{err}");
            assert!(!err.contains("garbage-secret") && !err.contains("u5ItbQp"), "{err}");
        }
        assert!(matches!(parse("# nobody\n"), Err(ManagersError::Empty { .. })));
    }

    #[test]
    fn new_pins_are_checked() {
        for bad in ["", "123", "12\u{7}4", &"9".repeat(129)] {
            assert!(matches!(hash_pin(&Pin::new(bad)), Err(ManagersError::BadPin(_))), "{bad:?}");
        }
        assert!(check_new_pin(&Pin::new("0000")).is_ok());
    }
}
