//! Secrets in files: where a file name points, the permission check, and [`Secret`], whose
//! `Debug` never shows the value. A secret stays a `Secret` up to the line that builds the
//! header or signature from it.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{invalid, ConfigError};

/// A secret read from a file: bytes (`Secret`), or text (`Secret<String>`) for API keys and
/// tokens. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T = Vec<u8>>(T);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text (API keys, tokens), without surrounding whitespace.
    pub fn text(&self) -> Result<&str, ConfigError> {
        std::str::from_utf8(&self.0).map(str::trim).map_err(|_| invalid("secret", "is not UTF-8 text"))
    }

    /// The secret as text ([`Secret::text`]), kept redacted.
    pub fn into_text(self) -> Result<Secret<String>, ConfigError> {
        self.text().map(|t| Secret(t.to_owned()))
    }
}

impl Secret<String> {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret lives, resolved when the config is loaded. The file is read only when it is
/// needed, so that checking a config's text never touches secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile(PathBuf);

impl SecretFile {
    /// Resolves a configured file name like [`secret_path`].
    pub(super) fn resolve(name: &str, base_dir: &Path) -> SecretFile {
        SecretFile(secret_path(name, base_dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Reads the secret as bytes, with [`read_secret`]'s checks.
    pub fn read(&self) -> Result<Secret, ConfigError> {
        read_secret(&self.0)
    }

    /// Reads the secret as text ([`Secret::text`]).
    pub fn read_text(&self) -> Result<Secret<String>, ConfigError> {
        self.read()?.into_text()
    }
}

/// A plain file name is looked up in systemd's `$CREDENTIALS_DIRECTORY` when set (secrets via
/// `LoadCredential=`), otherwise next to the config file; a path is used as given.
pub(super) fn secret_path(name: &str, base_dir: &Path) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    if !name.contains('/') {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            return PathBuf::from(dir).join(name);
        }
    }
    base_dir.join(p)
}

/// Reads a secret file, refusing one that group or others may read: a leaked seal key or API
/// key lets anyone forge queue rows or refunds.
pub fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let err = |message: String| ConfigError::Secret { path: path.to_path_buf(), message };
    let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "is readable by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(|e| err(e.to_string()))?;
    let trimmed = bytes.trim_ascii().to_vec();
    if trimmed.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(Secret(trimmed))
}
