//! `refund-agent doctor`: a technician's on-site check of everything the agent needs, one
//! `PASS`/`WARN`/`FAIL` line per item. Unlike `check-config` it also looks outside the config
//! file: the state directory and queue file, the serial device, the destinations over the
//! network and their clocks.
//!
//! It runs next to a live agent, so it never writes: the queue is opened read-only (no write
//! lock, no migration) and the serial port is opened and closed again at once.
//!
//! It lives in the binary, not the library: it is glue over `config`, `queue`'s file and
//! `destinations::http`, and no other module calls it.

use std::fmt;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::{read_secret, Config, DestinationKind, SyncSettings, TerminalSettings};
use crate::destinations::http;
use crate::destinations::zvt::ZvtEndpoint;
use crate::queue::{self, AuditCheck, ChainState, FileCheck, RowsCheck, Sealer};

/// Short, because a technician waits for the answer and a dead host must not hang the tool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Beyond this, signed requests and `Date`-based checks at the destinations start to fail.
const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(60);

/// A check's verdict. Only `Fail` makes the command exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// What was checked, e.g. `secret finalpos`.
    pub subject: String,
    pub detail: String,
}

impl Check {
    fn new(verdict: Verdict, subject: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { verdict, subject: subject.into(), detail: detail.into() }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{tag}  {}: {}", self.subject, self.detail)
    }
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Fail)
}

/// Runs every check against the config at `path`. A config that does not parse is the only
/// check: nothing else can be located without it.
pub async fn run(path: &Path) -> Vec<Check> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return vec![Check::new(Verdict::Fail, "config", e.to_string())],
    };
    let mut checks = vec![Check::new(Verdict::Pass, "config", format!("{} parses", path.display()))];
    checks.push(secret("seal key", &config.seal_key_file));
    for d in &config.destinations {
        if let Some(file) = d.kind.secret_file() {
            checks.push(secret(&format!("secret {}", d.name), file.path()));
        }
    }
    checks.push(state_dir(&config.state_dir));
    let db = config.state_dir.join("queue.db");
    // Without a usable seal key the head record cannot be verified; the key's own line says why.
    let sealer = config.seal_key().ok().and_then(|k| Sealer::new(k.expose().to_vec()).ok());
    let queue = tokio::task::spawn_blocking(move || queue_checks(&db, sealer.as_ref()));
    checks.extend(queue.await.unwrap_or_else(|e| {
        vec![Check::new(Verdict::Fail, "queue", format!("the check itself crashed: {e}"))]
    }));
    if let Some(terminal) = config.terminal.clone() {
        let found = tokio::task::spawn_blocking(move || terminal_device(&terminal)).await;
        checks.extend(found.unwrap_or_else(|e| {
            vec![Check::new(Verdict::Fail, "terminal", format!("the check itself crashed: {e}"))]
        }));
    }
    if let Some(zvt) = &config.zvt_terminal {
        let target =
            format!("ZVT terminal {}", crate::terminal::ecr::owner::endpoint_name(&zvt.link.endpoint));
        checks.push(zvt_reach("terminal", &target, &zvt.link.endpoint).await);
        checks.extend(zvt_link(&config.socket, &target).await);
    }
    checks.extend(destinations(&config).await);
    checks
}

/// The secret exists, is not readable by group or others, and is not empty (the rules the
/// daemon applies at start, so a PASS here means it will start).
pub fn secret(subject: &str, path: &Path) -> Check {
    match read_secret(path) {
        Ok(_) => Check::new(Verdict::Pass, subject, format!("{} readable, mode ok", path.display())),
        Err(e) => Check::new(Verdict::Fail, subject, e.to_string()),
    }
}

/// The state directory exists and a file can be created in it (the queue and its WAL live
/// there). A missing directory is only a warning: the agent creates it at first start.
pub fn state_dir(dir: &Path) -> Check {
    const SUBJECT: &str = "state dir";
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::new(
            Verdict::Warn,
            SUBJECT,
            format!("{} does not exist yet; the agent creates it at first start", dir.display()),
        ),
        Err(e) => Check::new(Verdict::Fail, SUBJECT, format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => {
            Check::new(Verdict::Fail, SUBJECT, format!("{} is not a directory", dir.display()))
        }
        // Creating a real file is the only test that sees read-only mounts and full quotas.
        Ok(_) => match tempfile::tempfile_in(dir) {
            Ok(_) => Check::new(Verdict::Pass, SUBJECT, format!("{} is writable", dir.display())),
            Err(e) => Check::new(Verdict::Fail, SUBJECT, format!("{} is not writable: {e}", dir.display())),
        },
    }
}

/// `PRAGMA integrity_check` on the queue file, opened read-only so a running agent keeps its
/// write lock and nothing is migrated.
pub fn queue_file(db: &Path) -> Check {
    file_check(db, &queue::check_readonly(db, None, REQUEST_TIMEOUT).file)
}

/// The queue file and, when it passes, its rows: the checks the agent makes at start.
fn queue_checks(db: &Path, sealer: Option<&Sealer>) -> Vec<Check> {
    let report = queue::check_readonly(db, sealer, REQUEST_TIMEOUT);
    std::iter::once(file_check(db, &report.file))
        .chain(report.rows.map(|rows| rows_check(db, rows)))
        .chain(report.audit.map(audit_check))
        .collect()
}

/// The full walk of the audit chain. A broken chain fails the check (someone altered the
/// evidence), though the agent itself keeps running on it.
fn audit_check(audit: AuditCheck) -> Check {
    const SUBJECT: &str = "audit log";
    match audit {
        AuditCheck::Unreadable(e) => Check::new(Verdict::Fail, SUBJECT, format!("cannot be walked: {e}")),
        AuditCheck::Walked(ChainState::Intact { rows }) => Check::new(
            Verdict::Pass,
            SUBJECT,
            format!("{rows} row(s) chained and sealed as the agent wrote them"),
        ),
        AuditCheck::Walked(ChainState::Broken { seq, problem }) => Check::new(
            Verdict::Fail,
            SUBJECT,
            format!(
                "altered outside the agent{}: {problem}; refunds are still sent, but the log is no longer evidence",
                seq.map(|s| format!(" (first broken row: {s})")).unwrap_or_default()
            ),
        ),
    }
}

fn file_check(db: &Path, file: &FileCheck) -> Check {
    const SUBJECT: &str = "queue";
    match file {
        FileCheck::Missing => Check::new(
            Verdict::Warn,
            SUBJECT,
            format!("{} does not exist yet; the agent creates it at first start", db.display()),
        ),
        FileCheck::Intact => Check::new(Verdict::Pass, SUBJECT, format!("{} integrity ok", db.display())),
        FileCheck::Damaged(lines) => Check::new(
            Verdict::Fail,
            SUBJECT,
            format!(
                "{} is damaged: {}",
                db.display(),
                lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
        ),
        FileCheck::Unreadable(e) => Check::new(Verdict::Fail, SUBJECT, format!("{}: {e}", db.display())),
    }
}

/// The check the agent makes at start: no refund deleted behind its back, the head record's
/// seal valid, every refund's delivery rows present. Read-only: a refund short of a delivery
/// row is reported here and quarantined by the agent at its start.
fn rows_check(db: &Path, rows: RowsCheck) -> Check {
    const SUBJECT: &str = "queue rows";
    const REFUSED: &str = "the agent will not start on it (README \"Refunds missing from the queue\")";
    match rows {
        RowsCheck::NoKey => Check::new(Verdict::Warn, SUBJECT, "not checked: the seal key cannot be read"),
        RowsCheck::Unreadable(e) => Check::new(Verdict::Fail, SUBJECT, format!("{}: {e}", db.display())),
        RowsCheck::OldSchema(version) => Check::new(
            Verdict::Warn,
            SUBJECT,
            format!("schema version {version}: the agent numbers the refunds at its next start"),
        ),
        RowsCheck::Untrusted(reason) | RowsCheck::Refused(reason) => {
            Check::new(Verdict::Fail, SUBJECT, format!("{reason}; {REFUSED}"))
        }
        RowsCheck::Short(ids) => Check::new(
            Verdict::Warn,
            SUBJECT,
            format!(
                "delivery rows were deleted or added outside the agent for refund(s) {}; they are quarantined and never sent",
                ids.join(", ")
            ),
        ),
        RowsCheck::Sound { head } => Check::new(
            Verdict::Pass,
            SUBJECT,
            format!("refunds 1-{head} all present or purged by the agent, head seal valid"),
        ),
    }
}

/// The serial device: exists (after symlinks, e.g. `/dev/serial/by-id/…`), is a character
/// device, this user may read and write it, and it opens. Stops at the first failure, since
/// later steps only repeat it less clearly.
pub fn terminal_device(t: &TerminalSettings) -> Vec<Check> {
    const SUBJECT: &str = "terminal";
    let path = &t.device;
    let shown = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return vec![Check::new(Verdict::Fail, SUBJECT, format!("{shown}: {e}"))],
    };
    if !meta.file_type().is_char_device() {
        return vec![Check::new(Verdict::Fail, SUBJECT, format!("{shown} is not a character device"))];
    }
    let access = nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK;
    if let Err(e) = nix::unistd::access(path.as_path(), access) {
        return vec![Check::new(
            Verdict::Fail,
            SUBJECT,
            format!("{shown} is not readable and writable by this user ({e}); add the user to its group"),
        )];
    }
    let Some(text) = path.to_str() else {
        return vec![Check::new(Verdict::Fail, SUBJECT, format!("{shown} is not a UTF-8 path"))];
    };
    match serialport::new(text, t.baud).timeout(CONNECT_TIMEOUT).open() {
        // Dropped at once: the agent, if running, may want the port back.
        Ok(_port) => vec![Check::new(Verdict::Pass, SUBJECT, format!("{shown} opens at {} baud", t.baud))],
        Err(e) => vec![Check::new(Verdict::Fail, SUBJECT, format!("{shown} does not open: {e}"))],
    }
}

/// Judges a destination's clock from its `Date` header (pure). The header has one-second
/// resolution, so offsets are reported in whole seconds.
pub fn clock(subject: &str, server: Option<SystemTime>, local: SystemTime) -> Check {
    let Some(server) = server else {
        return Check::new(Verdict::Warn, subject, "no Date header in the answer; offset unknown");
    };
    let (offset, sign) = match server.duration_since(local) {
        Ok(ahead) => (ahead, "+"),
        Err(behind) => (behind.duration(), "-"),
    };
    let text = format!("offset {sign}{} s (destination minus this machine)", offset.as_secs());
    if offset > MAX_CLOCK_OFFSET {
        Check::new(
            Verdict::Warn,
            subject,
            format!("{text}; more than {} s, check NTP", MAX_CLOCK_OFFSET.as_secs()),
        )
    } else {
        Check::new(Verdict::Pass, subject, text)
    }
}

/// One reachability check per destination (`destinations::http::reach`); only a request that
/// gets no answer fails.
async fn destinations(config: &Config) -> Vec<Check> {
    let settings = SyncSettings {
        request_timeout: REQUEST_TIMEOUT.min(config.sync.request_timeout),
        connect_timeout: CONNECT_TIMEOUT.min(config.sync.connect_timeout),
        ..config.sync.clone()
    };
    let client = match http::client(&settings) {
        Ok(c) => c,
        Err(e) => return vec![Check::new(Verdict::Fail, "http client", e.to_string())],
    };
    let mut checks = Vec::new();
    for d in &config.destinations {
        let reach = format!("reach {}", d.name);
        let Some(base_url) = d.base_url() else {
            checks.push(terminal_reach(&reach, &d.kind).await);
            continue;
        };
        match http::reach(&client, base_url).await {
            Ok(answer) => {
                checks.push(Check::new(
                    Verdict::Pass,
                    &reach,
                    format!("{} answered HTTP {}", base_url, answer.status),
                ));
                checks.push(clock(&format!("clock {}", d.name), answer.date, SystemTime::now()));
            }
            Err(e) => checks.push(Check::new(Verdict::Fail, &reach, format!("{}: {e}", base_url))),
        }
    }
    checks
}

/// The reach check of a terminal destination: its TCP port accepts a connection, or its serial
/// device exists. Nothing is sent to the terminal.
async fn terminal_reach(reach: &str, kind: &DestinationKind) -> Check {
    let target = kind.target();
    let DestinationKind::Zvt(settings) = kind else {
        return Check::new(Verdict::Fail, reach, format!("{target}: not a terminal destination"));
    };
    zvt_reach(reach, &target, &settings.endpoint).await
}

/// Whether the running agent is registered at its ZVT terminal, from its own status: a port
/// that accepts connections can still refuse the registration, close at once or never answer,
/// and only the agent's link owner may talk ZVT to it. Nothing when no agent answers.
async fn zvt_link(socket: &Path, target: &str) -> Option<Check> {
    let client = crate::control::client::ControlClient::new(socket).with_timeout(Duration::from_secs(2));
    let answer = client.request("GET", "/v1/status", None, &[]).await.ok()?;
    let status: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    let terminal = status.get("terminal")?;
    let check = if terminal["connected"] == true {
        Check::new(Verdict::Pass, "terminal link", format!("the agent is registered at {target}"))
    } else {
        let why = terminal["last_error"].as_str().unwrap_or("no attempt finished yet");
        Check::new(Verdict::Fail, "terminal link", format!("the agent is not registered at {target}: {why}"))
    };
    Some(check)
}

/// Whether a ZVT terminal's TCP port accepts a connection, or its serial device exists.
async fn zvt_reach(reach: &str, target: &str, endpoint: &ZvtEndpoint) -> Check {
    match endpoint {
        ZvtEndpoint::Tcp(addr) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Check::new(Verdict::Pass, reach, format!("{target} accepted a connection")),
                Ok(Err(e)) => Check::new(Verdict::Fail, reach, format!("{target}: {e}")),
                Err(_) => Check::new(
                    Verdict::Fail,
                    reach,
                    format!("{target}: no answer within {CONNECT_TIMEOUT:?}"),
                ),
            }
        }
        ZvtEndpoint::Serial { device, .. } => match fs::metadata(device) {
            Ok(_) => Check::new(Verdict::Pass, reach, format!("{target} is present")),
            Err(e) => Check::new(Verdict::Fail, reach, format!("{target}: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn clock_offsets_beyond_a_minute_warn() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ok = clock("clock x", Some(now - Duration::from_secs(3)), now);
        assert_eq!(ok.verdict, Verdict::Pass);
        assert!(ok.detail.contains("-3 s"), "{}", ok.detail);
        let ahead = clock("clock x", Some(now + Duration::from_secs(90)), now);
        assert_eq!(ahead.verdict, Verdict::Warn);
        assert!(ahead.detail.contains("+90 s"), "{}", ahead.detail);
        assert_eq!(clock("clock x", None, now).verdict, Verdict::Warn);
    }

    #[test]
    fn a_world_readable_secret_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("k");
        fs::write(&path, "secret").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = secret("secret k", &path);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.to_string().starts_with("FAIL  secret k: "), "{c}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(secret("secret k", &path).verdict, Verdict::Pass);
    }

    #[test]
    fn state_dir_and_queue_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(state_dir(dir.path()).verdict, Verdict::Pass);
        assert_eq!(state_dir(&dir.path().join("missing")).verdict, Verdict::Warn);
        let db = dir.path().join("queue.db");
        assert_eq!(queue_file(&db).verdict, Verdict::Warn);
        let conn = rusqlite::Connection::open(&db).expect("create db");
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);").expect("fill db");
        drop(conn);
        assert_eq!(queue_file(&db).verdict, Verdict::Pass);
        fs::write(&db, b"not a database at all, just text long enough to be read").expect("corrupt");
        assert_eq!(queue_file(&db).verdict, Verdict::Fail);
    }

    #[test]
    fn a_regular_file_is_not_a_terminal() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let t = TerminalSettings {
            device: file.path().to_path_buf(),
            baud: 9600,
            framing: crate::terminal::codec::Framing::Ndjson,
            parity: serialport::Parity::None,
            session_timeout: crate::terminal::session::DEFAULT_TIMEOUT,
        };
        let checks = terminal_device(&t);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].verdict, Verdict::Fail);
        assert!(checks[0].detail.contains("not a character device"), "{}", checks[0]);
    }
}
