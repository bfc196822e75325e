//! The command line: one binary, `refund-agent`, with subcommands (SPEC section 4).
//!
//! Exit codes: 0 success; 1 unexpected error; 2 usage or configuration error; 3 refused by
//! the agent (validation, conflict); 4 agent unreachable or no answer (within `--timeout`); 5
//! not found; 6 `doctor` found a problem (at least one FAIL line); 7 `run` refused a queue older
//! than the one it last ran on (put the newer file back, or use `restore`).

pub mod backup_cmds;
pub mod client_cmds;
pub mod decode_cmd;
pub mod output;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::refund::draft::LineRequest;

/// Exit codes, documented in README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    /// `doctor` printed at least one FAIL.
    pub const DOCTOR_FAILED: u8 = 6;
    /// `run`: the queue is an older copy than the one the agent last ran on; bring it in with
    /// `refund-agent restore` or put the newer file back.
    pub const OLDER_QUEUE: u8 = 7;
}

#[derive(Debug, Parser)]
#[command(
    name = "refund-agent",
    version,
    about = "Takes refunds at the till, keeps them safe offline, delivers them exactly once"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "REFUND_AGENT_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Control socket to talk to (default: the one in the configuration).
    #[arg(long, global = true, env = "REFUND_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// How long a command waits for the agent's answer, connecting included (e.g. "10s").
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the larger variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the daemon).
    Run,
    /// The whole flow on this machine: a simulated till and a local sandbox cloud.
    Demo,
    /// Validate the configuration and secret files, then exit.
    CheckConfig,
    /// Check this machine: secrets, state dir and queue file, serial device, destinations and
    /// their clocks. One PASS/WARN/FAIL line each; exit code 6 on any FAIL.
    Doctor,
    /// Queue counts, destinations and connectivity.
    Status(JsonFlag),
    /// Create a refund.
    #[command(subcommand)]
    Refund(RefundCmd),
    /// Look at refunds.
    #[command(subcommand)]
    Refunds(RefundsCmd),
    /// Register original sales in the ledger.
    #[command(subcommand)]
    Receipt(ReceiptCmd),
    /// Copy the queue to PATH (SQLite online backup), while the agent runs or not. The copy is
    /// one file, mode 0600; an existing PATH is replaced only with --force.
    Backup {
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup back in place of the queue (stop the agent first). Deliveries that were not
    /// final in the copy become `unknown` where the destination does not deduplicate (resolve
    /// them by hand) and `pending` where it does; the replaced queue is kept as
    /// queue.db.pre-restore. When the queue it replaces is intact and current, that queue is
    /// kept and only what the copy alone knew is carried into it.
    Restore {
        path: PathBuf,
        /// Restore even though the queue it replaces is damaged: refunds only that queue knew,
        /// and their idempotency keys, are forgotten.
        #[arg(long)]
        discard_current: bool,
    },
    /// Managers and their PINs.
    #[command(subcommand)]
    Manager(ManagerCmd),
    /// Tools for the terminal line.
    #[command(subcommand)]
    Terminal(TerminalCmd),
}

#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Decode a captured byte stream (FILE, or `-` for stdin) into one JSON object per line: per
    /// frame, APDU, link byte or dropped run. Card data is reduced to BIN + last 4 or masked.
    Decode {
        /// zvt (serial frames), zvt-apdu (APDUs as over TCP), ndjson, stx-etx or lines.
        #[arg(long)]
        framing: crate::terminal::capture::CaptureFraming,
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ManagerCmd {
    /// Reads a PIN (one line) on stdin and prints the managers-file line `ID $argon2id$…`.
    HashPin {
        /// The manager's id in the printed line.
        #[arg(long, default_value = "mgr_1")]
        manager: String,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RefundCmd {
    /// Validate and queue a refund against an original sale.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The original sale's receipt id.
    #[arg(long, conflicts_with = "transaction", required_unless_present = "transaction")]
    pub receipt: Option<String>,
    /// The original sale's transaction id (instead of --receipt).
    #[arg(long)]
    pub transaction: Option<String>,
    /// Amount as a decimal string, e.g. 5.00. With --line it may be left out; given, it must
    /// equal what the lines refund.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "lines")]
    pub amount: Option<String>,
    /// An item returned, as LINE:QUANTITY (the receipt's 1-based line), e.g. --line 3:1;
    /// repeat for more lines.
    #[arg(long = "line", value_name = "LINE:QUANTITY", value_parser = parse_line)]
    pub lines: Vec<LineRequest>,
    #[arg(long)]
    pub reason: String,
    /// The cashier's id.
    #[arg(long)]
    pub operator: String,
    #[arg(long)]
    pub currency: Option<String>,
    /// Tax part of the amount (a breakdown lifts the subtotal rule).
    #[arg(long)]
    pub tax: Option<String>,
    #[arg(long)]
    pub discount: Option<String>,
    /// The approving manager's id (above max_refund, or for an unlinked refund); the manager's
    /// PIN is read from stdin (one line).
    #[arg(long)]
    pub manager: Option<String>,
    /// The presented card, masked (e.g. ************2257), for the card-present check.
    #[arg(long)]
    pub card: Option<String>,
    /// Have the agent read the presented card at its ZVT terminal instead of `--card`; the
    /// answer is waited for at least 45 s, as the customer has 30 s to present the card.
    #[arg(long, conflicts_with = "card")]
    pub read_card: bool,
    /// Reuse a key to make a retry safe; a fresh one is generated otherwise.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// How many times to resend (same key) when the agent's answer is lost.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RefundsCmd {
    /// Refunds, newest first.
    List {
        /// Only this state: queued, delivered, declined, failed, unknown, cancelled, expired, quarantined.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One refund with its deliveries.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a failed or expired refund again (after fixing what made it fail). A manager's
    /// decision: `--manager ID`, the PIN on stdin.
    Retry {
        id: String,
        /// Who asks (logged).
        #[arg(long)]
        operator: String,
        /// The approving manager (audit-logged); the PIN is read from stdin.
        #[arg(long)]
        manager: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a refund before any money moved (`--manager ID`, the PIN on stdin).
    Cancel {
        id: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        manager: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Settle a delivery whose outcome is unknown, after checking at the destination
    /// (`--manager ID`, the PIN on stdin).
    Resolve {
        id: String,
        /// The destination has the refund.
        #[arg(long, conflicts_with = "not_delivered", required_unless_present = "not_delivered")]
        delivered: bool,
        /// The destination does not have it: send it again.
        #[arg(long)]
        not_delivered: bool,
        /// Which destination, when several are unknown.
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        manager: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReceiptCmd {
    /// Register a sale from a JSON file (the `receipt` event's fields); `-` reads stdin.
    Add {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A sale as the ledger holds it: each line with its sold, refunded, waiting and
    /// refundable quantities, and the refundable balance.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// `--line 3:1`: the receipt's line and how many of its units are returned.
fn parse_line(text: &str) -> Result<LineRequest, String> {
    let shape = || format!("{text:?} is not LINE:QUANTITY, e.g. 3:1");
    let (line, quantity) = text.split_once(':').ok_or_else(shape)?;
    Ok(LineRequest {
        line: line.trim().parse().map_err(|_| shape())?,
        quantity: quantity.trim().parse().map_err(|_| shape())?,
    })
}

/// `--timeout`: a duration like "10s", more than zero (zero would refuse every answer).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{text:?} is not a duration like \"10s\" ({e})")),
    }
}
