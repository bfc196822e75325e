//! `refund-agent`: the command-line entry point. Glue only; see the library for the product.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use refund_agent::cli::{backup_cmds, client_cmds, decode_cmd, exit, Cli, Command, ManagerCmd, TerminalCmd};
use refund_agent::config::Config;
use refund_agent::control::client::ControlClient;
use refund_agent::queue::QueueError;
use refund_agent::{daemon, demo};
use tracing_subscriber::filter::{LevelFilter, Targets};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Demo));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    ExitCode::from(runtime.block_on(dispatch(cli)))
}

/// Where journald listens for its native protocol.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Logs to journald (structured fields kept as journal fields) when the agent runs as a systemd
/// service, otherwise to stderr. `RUST_LOG` filters both.
///
/// journald is chosen only when its socket exists *and* systemd connected our stderr to the
/// journal (`JOURNAL_STREAM`): a technician running a CLI command, or a test reading the
/// agent's stderr, on a machine that has journald must still see the messages where they look.
fn init_logging(quiet: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let default = if quiet { LevelFilter::OFF } else { LevelFilter::INFO };
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), default);
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some() && Path::new(JOURNALD_SOCKET).exists();
    // A journald that refuses the connection falls back to stderr rather than losing the logs.
    let journald = if under_systemd { tracing_journald::layer().ok() } else { None };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(journald) => registry.with(journald.with_syslog_identifier("refund-agent".into())).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
            .init(),
    }
}

/// The log filter from `RUST_LOG`: a level (`debug`) or `target=level` pairs separated by commas
/// (`refund_agent=debug,hyper=warn`). `Targets` reads that syntax without a regular-expression
/// engine, which keeps the binary smaller than `EnvFilter` would; span and field filters are not
/// supported. A value that does not parse falls back to the default level.
fn log_filter(rust_log: Option<&str>, default: LevelFilter) -> Targets {
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default))
}

fn load_config(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

fn client(socket: &Option<PathBuf>, config: &Path, timeout: Duration) -> Result<ControlClient, u8> {
    let client = match socket {
        Some(s) => ControlClient::new(s),
        None => load_config(config).map(|c| ControlClient::new(&c.socket))?,
    };
    Ok(client.with_timeout(timeout))
}

async fn dispatch(cli: Cli) -> u8 {
    let client = |cli_socket: &Option<PathBuf>| client(cli_socket, &cli.config, cli.timeout);
    let socket = cli.socket.clone();
    match cli.command {
        Command::Run => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match daemon::run(&config).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    tracing::error!(error = %e, "refund-agent cannot start");
                    eprintln!("error: {e}");
                    match e {
                        daemon::StartError::Config(_) | daemon::StartError::SealKey { .. } => exit::USAGE,
                        daemon::StartError::Queue(
                            QueueError::OlderCopy { .. } | QueueError::MarkerMissing { .. },
                        ) => exit::OLDER_QUEUE,
                        _ => exit::ERROR,
                    }
                }
            }
        }
        Command::Demo => match demo::run().await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                exit::ERROR
            }
        },
        Command::CheckConfig => check_config(&cli.config),
        Command::Doctor => {
            let checks = refund_agent::doctor::run(&cli.config).await;
            for check in &checks {
                println!("{check}");
            }
            if refund_agent::doctor::failed(&checks) {
                exit::DOCTOR_FAILED
            } else {
                exit::OK
            }
        }
        Command::Status(ref f) => match client(&socket) {
            Ok(c) => client_cmds::status(&c, f.json).await,
            Err(code) => code,
        },
        Command::Refund(refund_agent::cli::RefundCmd::Create(args)) => match client(&socket) {
            Ok(c) => client_cmds::create(&c, args).await,
            Err(code) => code,
        },
        Command::Refunds(cmd) => match client(&socket) {
            Ok(c) => client_cmds::refunds(&c, cmd).await,
            Err(code) => code,
        },
        Command::Receipt(cmd) => match client(&socket) {
            Ok(c) => client_cmds::receipt(&c, cmd).await,
            Err(code) => code,
        },
        Command::Manager(ManagerCmd::HashPin { manager }) => client_cmds::hash_pin(&manager),
        Command::Backup { ref path, force } => match load_config(&cli.config) {
            Ok(config) => backup_cmds::backup(&config, path, force),
            Err(code) => code,
        },
        Command::Restore { ref path, discard_current } => match load_config(&cli.config) {
            Ok(config) => backup_cmds::restore(&config, path, discard_current),
            Err(code) => code,
        },
        Command::Terminal(TerminalCmd::Decode { framing, ref file }) => decode_cmd::decode(framing, file),
    }
}

/// Loads the config, reads every secret with its permission check, and builds the connectors.
fn check_config(path: &Path) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut failed = false;
    if let Err(e) = daemon::sealer(&config) {
        eprintln!("error: {e}");
        failed = true;
    }
    match daemon::connectors(&config) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    let managers = match daemon::managers(&config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            failed = true;
            None
        }
    };
    if failed {
        return exit::USAGE;
    }
    println!("config {} is valid", config.path.display());
    println!("  terminal:     {}", config.terminal_id);
    println!("  state dir:    {}", config.state_dir.display());
    println!("  socket:       {}", config.socket.display());
    for line in refund_agent::config::limits::summary(&config.limits) {
        println!("  limits:       {line}");
    }
    for d in &config.destinations {
        println!("  destination:  {} ({}, {})", d.name, d.kind.name(), d.kind.target());
    }
    for r in &config.routes {
        println!("  route:        processor {} -> {}", r.processor, r.destinations.join(", "));
    }
    match (&managers, &config.managers_file) {
        (Some(m), Some(path)) => println!("  managers:     {} in {}", m.len(), path.display()),
        _ => eprintln!(
            "warning: no limits.managers_file: no manager approval can be given, so refunds above \
             max_refund, unlinked refunds and manual decisions (retry, cancel, resolve) are impossible"
        ),
    }
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_falls_back_on_nonsense() {
        let filter = log_filter(Some("refund_agent=debug,hyper=warn"), LevelFilter::INFO);
        assert!(filter.would_enable("refund_agent::sync", &tracing::Level::DEBUG));
        assert!(!filter.would_enable("hyper::client", &tracing::Level::INFO));
        let level = log_filter(Some("debug"), LevelFilter::INFO);
        assert!(level.would_enable("anything", &tracing::Level::DEBUG));
        let fallback = log_filter(Some("=[{"), LevelFilter::INFO);
        assert!(fallback.would_enable("refund_agent", &tracing::Level::INFO));
        assert!(!fallback.would_enable("refund_agent", &tracing::Level::DEBUG));
        let quiet = log_filter(None, LevelFilter::OFF);
        assert!(!quiet.would_enable("refund_agent", &tracing::Level::ERROR));
    }
}
