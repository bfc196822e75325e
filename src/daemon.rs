//! Wiring: opens the queue, recovers interrupted deliveries, starts the control API and the
//! sync worker, and stops them in order on SIGTERM / SIGINT.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::control::guard::{Guard, TcpRules};
use crate::control::listen;
use crate::control::server::{self, AppState};
use crate::destinations::{http, Connector};
use crate::manager::{Approver, Managers, ManagersError};
use crate::queue::{self, QueueError, QueueHandle, QueueOwner, QueueSettings, Sealer};
use crate::refund::Policy;
use crate::routing::Router;
use crate::shutdown::{Shutdown, Trigger};
use crate::sync::{Lookups, Worker};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("seal key file {path}: {message}")]
    SealKey { path: PathBuf, message: String },
    #[error("cannot listen on the control socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Terminal(#[from] crate::terminal::TerminalError),
    #[error(transparent)]
    Managers(#[from] ManagersError),
}

/// A started daemon: its control socket answers and its worker runs.
#[derive(Debug)]
pub struct Running {
    pub socket: PathBuf,
    pub queue: QueueHandle,
    shutdown: Trigger,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
    /// The resolver of unknown terminal payouts (`sync::lookup`), when a ZVT destination is set
    /// up; it holds a queue handle, so `stop` awaits it before waiting for the owner thread.
    lookups: Option<JoinHandle<()>>,
    terminal: Option<crate::terminal::Terminal>,
    /// The owner of the ZVT terminal's link, when `[terminal]` is a ZVT terminal.
    zvt_terminal: Option<crate::terminal::ecr::owner::EcrOwner>,
    /// Only under systemd with `WatchdogSec=`; it holds a queue handle, so `stop` awaits it
    /// before waiting for the owner thread.
    watchdog: Option<JoinHandle<()>>,
    owner: QueueOwner,
}

/// Builds the queue settings (policy and routes) from config.
pub fn queue_settings(config: &Config) -> QueueSettings {
    QueueSettings {
        policy: Policy {
            terminal_id: config.terminal_id.clone(),
            default_currency: config.default_currency,
            limits: config.limits.clone(),
            max_queue_len: config.max_queue_len,
            allow_unlinked: config.allow_unlinked,
        },
        router: Router::new(
            config.routes.clone(),
            config.destinations.iter().map(|d| d.name.clone()).collect(),
        ),
        max_pending_age_ms: config.max_pending_age.map(|d| d.as_millis() as i64),
        retention_ms: config.retention.map(|d| d.as_millis() as i64),
    }
}

/// Builds every configured connector, reading their secrets.
pub fn connectors(config: &Config) -> Result<HashMap<String, Connector>, StartError> {
    let client = http::client(&config.sync).map_err(|e| StartError::Http(e.to_string()))?;
    config.destinations.iter().map(|d| Ok((d.name.clone(), Connector::from_config(d, &client)?))).collect()
}

/// Reads the seal key.
pub fn sealer(config: &Config) -> Result<Sealer, StartError> {
    let key = config.seal_key()?;
    Sealer::new(key.expose().to_vec())
        .map_err(|e| StartError::SealKey { path: config.seal_key_file.clone(), message: e.to_string() })
}

/// Reads the managers file, when one is configured.
pub fn managers(config: &Config) -> Result<Option<Managers>, StartError> {
    Ok(config.managers_file.as_deref().map(Managers::load).transpose()?)
}

/// The TCP listener's guard: its own address, the token and the allowed origins.
fn tcp_guard(config: &Config, tcp: &tokio::net::TcpListener) -> Result<Guard, StartError> {
    let local = tcp.local_addr().map_err(|e| StartError::Socket {
        path: PathBuf::from(config.tcp.map(|a| a.to_string()).unwrap_or_default()),
        message: e.to_string(),
    })?;
    let missing = || ConfigError::Invalid {
        key: "control.tcp_token_file".into(),
        message: "is required when control.tcp is set".into(),
    };
    let token = crate::config::read_secret(config.tcp_token_file.as_deref().ok_or_else(missing)?)?;
    Ok(Guard::tcp(TcpRules::new(local, token.text()?, &config.allowed_origins)))
}

/// Starts everything; returns once the queue is open, recovery is done and the socket listens.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    // Ages (expiry, purge) are measured from here on a jump-safe time line (`clock` module doc).
    crate::clock::anchor();
    let sealer = sealer(config)?;
    let managers = managers(config)?;
    let connectors = Arc::new(connectors(config)?);
    let settings = queue_settings(config);
    let state_dir = config.state_dir.clone();
    let (queue, owner) = tokio::task::spawn_blocking(move || queue::start(&state_dir, sealer, settings))
        .await
        .map_err(|e| QueueError::Storage(e.to_string()))??;

    let dedup: HashMap<String, bool> =
        connectors.iter().map(|(k, c)| (k.clone(), c.capability().dedup)).collect();
    let recovery = queue.recover(move |dest| dedup.get(dest).copied().unwrap_or(false)).await?;
    if recovery.resent + recovery.unknown > 0 {
        tracing::warn!(
            resent = recovery.resent,
            unknown = recovery.unknown,
            "recovered deliveries interrupted by the last stop"
        );
    }

    let listener = server::bind_socket(&config.socket, config.socket_group.as_deref())
        .await
        .map_err(|e| StartError::Socket { path: config.socket.clone(), message: e.to_string() })?;
    let (shutdown, shutdown_rx) = Shutdown::new();
    let wake = Arc::new(Notify::new());
    let health = Arc::new(Mutex::new(HashMap::new()));
    let approver = Approver::new(managers, queue.clone());
    let terminal = match &config.terminal {
        Some(t) => Some(crate::terminal::spawn(
            t,
            queue.clone(),
            approver.clone(),
            wake.clone(),
            shutdown_rx.clone(),
        )?),
        None => None,
    };
    let zvt_status = crate::terminal::device::SharedStatus::default();
    let (zvt_terminal, card_reader) = match &config.zvt_terminal {
        Some(z) => {
            let (owner, handle) =
                crate::terminal::ecr::owner::spawn(z.clone(), zvt_status.clone(), shutdown_rx.clone())
                    .map_err(crate::terminal::TerminalError::Thread)?;
            (Some(owner), Some(handle))
        }
        None => (None, None),
    };
    let terminal_status = match (&terminal, &zvt_terminal) {
        (Some(t), _) => Some(t.status()),
        (None, Some(_)) => Some(zvt_status),
        (None, None) => None,
    };
    let app = server::router(AppState {
        queue: queue.clone(),
        wake: wake.clone(),
        health: health.clone(),
        clocks: connectors.iter().map(|(k, c)| (k.clone(), c.clock().clone())).collect(),
        started: Instant::now(),
        terminal_id: config.terminal_id.clone(),
        approver,
        terminal: terminal_status,
        card_reader,
    });
    let stop_rx = shutdown_rx.clone();
    let tcp = match config.tcp {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| StartError::Socket {
            path: PathBuf::from(addr.to_string()),
            message: e.to_string(),
        })?),
        None => None,
    };
    let tcp = match tcp {
        Some(tcp) => Some(tcp_guard(config, &tcp).map(|guard| (tcp, guard))?),
        None => None,
    };
    let server = tokio::spawn(async move {
        let unix = listen::serve(listener, app.clone(), Guard::unix(), stop_rx.clone());
        match tcp {
            Some((tcp, guard)) => {
                tokio::join!(unix, listen::serve(tcp, app, guard, stop_rx));
            }
            None => unix.await,
        }
    });
    let probe_targets =
        config.destinations.iter().filter_map(|d| Some((d.name.clone(), d.kind.probe_target()?))).collect();
    let lookups = Lookups { queue: queue.clone(), connectors: connectors.clone(), wake: wake.clone() };
    let lookups = lookups.any().then(|| tokio::spawn(lookups.run(shutdown_rx.clone())));
    let worker = Worker {
        queue: queue.clone(),
        connectors,
        settings: config.sync.clone(),
        wake,
        health,
        probe_targets: Arc::new(probe_targets),
    };
    let watchdog = crate::watchdog::spawn(queue.clone(), shutdown_rx.clone());
    let worker = tokio::spawn(worker.run(shutdown_rx));
    tracing::info!(socket = %config.socket.display(), state_dir = %config.state_dir.display(), "refund-agent ready");
    // Last, so systemd starts units ordered after us only once the socket answers.
    crate::watchdog::ready();
    Ok(Running {
        socket: config.socket.clone(),
        queue,
        shutdown,
        server,
        worker,
        lookups,
        terminal,
        zvt_terminal,
        watchdog,
        owner,
    })
}

impl Running {
    /// Stops taking requests, lets the worker finish or abandon its requests, and closes the
    /// queue cleanly.
    pub async fn stop(self) {
        crate::watchdog::stopping();
        self.shutdown.fire();
        if let Some(watchdog) = self.watchdog {
            let _ = watchdog.await;
        }
        let _ = self.server.await;
        let _ = self.worker.await;
        if let Some(lookups) = self.lookups {
            let _ = lookups.await;
        }
        if let Some(terminal) = self.terminal {
            terminal.stop().await;
        }
        if let Some(zvt_terminal) = self.zvt_terminal {
            zvt_terminal.stop().await;
        }
        drop(self.queue);
        let owner = self.owner;
        let _ = tokio::task::spawn_blocking(move || owner.join()).await;
        let _ = tokio::task::spawn_blocking(|| crate::watchdog::flush(Duration::from_secs(1))).await;
        tracing::info!("refund-agent stopped");
    }
}

/// `refund-agent run`: serves until SIGTERM or SIGINT, then stops cleanly.
pub async fn run(config: &Config) -> Result<(), StartError> {
    // Installed before anything starts: the socket answers (and READY=1 goes out) before `start`
    // returns, and a SIGTERM in that moment would otherwise meet the default action and kill
    // the process mid-start. A signal that comes during the start is kept and stops it at once.
    let signals = StopSignals::install();
    let running = start(config).await?;
    signals.wait().await;
    tracing::info!("stop requested; finishing work in flight");
    running.stop().await;
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => StopSignals(Some((term, int))),
            _ => {
                tracing::error!(
                    "cannot install signal handlers; the agent will stop as soon as it has started"
                );
                StopSignals(None)
            }
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else { return };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
