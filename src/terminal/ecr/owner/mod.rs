//! The owner of the link to the ZVT terminal of `[terminal]`: one blocking thread holds the
//! connection, registers at the terminal, keeps the link alive, reconnects with backoff, and
//! runs the commands others ask for one at a time (the shape of the queue owner: one thread
//! owns the resource, others talk to it through a channel and a oneshot answer).
//!
//! The thread's life, over and over until shutdown:
//!
//! 1. connect (TCP or serial); on failure wait with [`Backoff`] and try again;
//! 2. register (`06 00` with the password, currency and service byte); a link that does not
//!    complete its registration is closed and counts as a failed connect;
//! 3. serve: a [`Job`] is run on the link; while idle the link is watched (a TCP peer that
//!    closes is seen at once) and every `keepalive` a Status Enquiry (`05 01`) checks that the
//!    terminal still answers; a command that loses the link, or a keepalive without a
//!    completion, ends the connection and the thread goes back to 1. What the terminal sends
//!    while idle is answered as the protocol asks and dropped.
//!
//! No command that moves no money holds the link without end: Read Card, registration and
//! Status Enquiry have a total bound however often the terminal speaks, and a Read Card is also
//! aborted (`06 B0`) when its asker is gone or the agent stops; a terminal that does not end an
//! aborted command loses its link. Payouts never run here.
//!
//! Status goes to the same [`TerminalStatus`] the serial terminal reports, so `/v1/status`,
//! metrics and the CLI show it alike: `connected` only while the link is registered.
//! A job asked while the terminal is not connected is answered at once with
//! [`JobError::NotConnected`], never held until the terminal returns: the cashier is waiting.

use std::io;
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::link::{connect_tcp, open_serial, Link, Mode, Wire};
use super::{Lost, Outcome, Request, RequestError, ACK_TIMEOUT};
use crate::config::ZvtTerminalSettings;
use crate::destinations::zvt::ZvtEndpoint;
use crate::lock::lock;
use crate::sale::CardRef;
use crate::shutdown::Shutdown;
use crate::terminal::device::{Backoff, SharedStatus};

/// How long one idle wait on the link lasts; it bounds how late a job or a stop is seen.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long connecting to the terminal's TCP port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a registration or a status enquiry may take once acknowledged.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the terminal waits for a card in Read Card (its `06 C0` timeout byte, seconds).
pub const READ_CARD_TIMEOUT_S: u8 = 30;
/// A connection that lasted this long was healthy; the next reconnect starts from the first delay.
const STABLE: Duration = Duration::from_secs(2);

/// A command for the link owner. Each runs alone on the link, in the order asked.
#[derive(Debug)]
pub enum Job {
    /// One command and everything the terminal sends until it is finished. A refund paid out
    /// over this link later is a job of its own (it needs the link for its lookup too).
    /// `bound` caps the whole command however often the terminal speaks (each message restarts
    /// `completion_timeout`); past it, or once the asker is gone or the agent stops, the command
    /// is aborted on the terminal. `None` only for a command that may move money.
    Run {
        request: Request,
        completion_timeout: Duration,
        bound: Option<Duration>,
        answer: oneshot::Sender<Result<Outcome, JobError>>,
    },
    /// Shutdown: the thread ends after the job it is running.
    Stop,
}

/// Why a job did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the ZVT terminal is not connected")]
    NotConnected,
    #[error("the agent is stopping")]
    Stopped,
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why no card came out of Read Card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadCardError {
    #[error("the card reader is unavailable: {0}")]
    Unavailable(JobError),
    #[error("the terminal read no card: {0}")]
    NotRead(&'static str),
}

impl ReadCardError {
    /// The control API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ReadCardError::Unavailable(_) => "card_reader_unavailable",
            ReadCardError::NotRead(_) => "card_not_read",
        }
    }
}

/// The card of a Read Card's outcome, already reduced to BIN + last 4 by the codec. Pure.
pub fn card_of(outcome: &Outcome) -> Result<CardRef, ReadCardError> {
    match outcome {
        Outcome::Completed(result) if result.result_code.unwrap_or(0) != 0 => {
            Err(ReadCardError::NotRead("the terminal reported an error"))
        }
        Outcome::Completed(result) => {
            result.card.clone().ok_or(ReadCardError::NotRead("the terminal's answer carried no card"))
        }
        Outcome::Aborted { .. } => {
            Err(ReadCardError::NotRead("the terminal ended the read (timeout or cancel)"))
        }
        Outcome::Refused { .. } => Err(ReadCardError::NotRead("the terminal refused to read a card")),
        Outcome::Lost { why: Lost::Abandoned, .. } => {
            Err(ReadCardError::NotRead("the terminal did not finish the read in time"))
        }
        Outcome::Lost { .. } => Err(ReadCardError::NotRead("the link to the terminal broke during the read")),
    }
}

/// Whether the link may stay open after a command's outcome: a lost exchange leaves the
/// conversation in an unknown place, so the link is closed and registered anew. Pure.
pub fn link_survives(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Lost { .. })
}

/// The handle others use to reach the link owner.
#[derive(Debug, Clone)]
pub struct EcrHandle {
    jobs: std_mpsc::Sender<Job>,
}

impl EcrHandle {
    /// Runs one command on the terminal.
    pub async fn run(
        &self,
        request: Request,
        completion_timeout: Duration,
        bound: Option<Duration>,
    ) -> Result<Outcome, JobError> {
        let (answer, answered) = oneshot::channel();
        let job = Job::Run { request, completion_timeout, bound, answer };
        self.jobs.send(job).map_err(|_| JobError::Stopped)?;
        answered.await.map_err(|_| JobError::Stopped)?
    }

    /// Read Card (`06 C0`): the card the customer presents, as BIN + last 4.
    pub async fn read_card(&self) -> Result<CardRef, ReadCardError> {
        self.read_card_within(READ_CARD_TIMEOUT_S).await
    }

    /// Read Card with the terminal's timeout byte `timeout_s`. The terminal ends the read itself
    /// after that time; the margin covers its answer, and the same total is the read's bound: a
    /// terminal that keeps sending intermediate status (each one restarts the completion
    /// timeout) does not hold the cashier, or the link, for longer.
    pub async fn read_card_within(&self, timeout_s: u8) -> Result<CardRef, ReadCardError> {
        let request = Request::ReadCard { timeout_s };
        let limit = Duration::from_secs(u64::from(timeout_s)) + ACK_TIMEOUT;
        let outcome = self.run(request, limit, Some(limit)).await.map_err(ReadCardError::Unavailable)?;
        card_of(&outcome)
    }
}

/// The running link owner.
#[derive(Debug)]
pub struct EcrOwner {
    thread: thread::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl EcrOwner {
    /// Waits for the thread after shutdown was signalled (it finishes the job it is running).
    pub async fn stop(self) {
        let _ = self.watcher.await;
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Starts the owner thread; it connects in the background, so the terminal need not be there.
pub fn spawn(
    settings: ZvtTerminalSettings,
    status: SharedStatus,
    shutdown: Shutdown,
) -> io::Result<(EcrOwner, EcrHandle)> {
    let (jobs, inbox) = std_mpsc::channel();
    {
        let mut s = lock(&status);
        s.device = endpoint_name(&settings.link.endpoint);
        s.framing = "zvt".into();
    }
    let thread = thread::Builder::new().name("zvt-terminal".into()).spawn({
        let shutdown = shutdown.clone();
        move || Owner { settings, status, inbox, shutdown }.run()
    })?;
    let stop = jobs.clone();
    let mut shutdown = shutdown;
    let watcher = tokio::spawn(async move {
        shutdown.recv().await;
        let _ = stop.send(Job::Stop);
    });
    Ok((EcrOwner { thread, watcher }, EcrHandle { jobs }))
}

/// How status shows where the terminal is.
pub fn endpoint_name(endpoint: &ZvtEndpoint) -> String {
    match endpoint {
        ZvtEndpoint::Tcp(addr) => addr.to_string(),
        ZvtEndpoint::Serial { device, .. } => device.display().to_string(),
    }
}

/// The link, over whichever wire the terminal is on.
type AnyLink = Link<Box<dyn Wire>>;

impl Wire for Box<dyn Wire> {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        (**self).read_within(buf, timeout)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).write_bytes(bytes)
    }
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

struct Owner {
    settings: ZvtTerminalSettings,
    status: SharedStatus,
    inbox: std_mpsc::Receiver<Job>,
    /// Seen between the messages of a running command, so a stop aborts a card read at once.
    shutdown: Shutdown,
}

impl Owner {
    fn run(self) {
        let mut backoff = Backoff::new();
        let mut was_connected = false;
        // Only the first failure of a streak is a warning, as for the serial terminal.
        let mut failing = false;
        loop {
            match self.connect() {
                Ok(mut link) => {
                    {
                        let mut s = lock(&self.status);
                        s.connected = true;
                        if was_connected {
                            s.reconnects += 1;
                        }
                    }
                    tracing::info!(terminal = %endpoint_name(&self.settings.link.endpoint), reconnect = was_connected, "ZVT terminal registered");
                    was_connected = true;
                    failing = false;
                    let since = Instant::now();
                    let end = self.serve(&mut link);
                    lock(&self.status).connected = false;
                    match end {
                        End::Stop => return,
                        End::Lost(error) => {
                            tracing::warn!(error = %error, "ZVT terminal link lost; reconnecting with backoff");
                            lock(&self.status).last_error = Some(error);
                        }
                    }
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                Err(error) => {
                    if failing {
                        tracing::debug!(error = %error, "ZVT terminal still unavailable");
                    } else {
                        tracing::warn!(error = %error, "cannot reach or register at the ZVT terminal; retrying with backoff");
                    }
                    failing = true;
                    lock(&self.status).last_error = Some(error);
                }
            }
            if self.wait_disconnected(backoff.next_delay()) {
                return;
            }
        }
    }

    /// Opens the link and registers.
    fn connect(&self) -> Result<AnyLink, String> {
        let link: AnyLink = match &self.settings.link.endpoint {
            ZvtEndpoint::Tcp(addr) => {
                let link = connect_tcp(*addr, CONNECT_TIMEOUT).map_err(|e| format!("cannot connect: {e}"))?;
                Link::new(Box::new(link.into_wire()), Mode::Apdu)
            }
            ZvtEndpoint::Serial { device, baud } => {
                let link = open_serial(device, *baud).map_err(|e| format!("cannot open: {e}"))?;
                Link::new(Box::new(link.into_wire()), Mode::Serial)
            }
        };
        let mut link = link;
        let s = &self.settings.link;
        let registration = Request::Registration {
            password: s.password.clone(),
            currency: s.currency_number,
            service_byte: s.service_byte,
        };
        match link.run_abortable(&registration, ADMIN_TIMEOUT, self.give_up_after(ADMIN_TIMEOUT)) {
            Ok(Outcome::Completed(result)) if result.result_code.unwrap_or(0) == 0 => Ok(link),
            Ok(outcome) => Err(format!("registration not completed: {}", describe(&outcome))),
            Err(e) => Err(format!("registration not sent: {e}")),
        }
    }

    /// Runs jobs and keeps the link alive until it is lost or the agent stops.
    fn serve(&self, link: &mut AnyLink) -> End {
        let mut last_heard = Instant::now();
        loop {
            match self.inbox.try_recv() {
                Ok(Job::Stop) | Err(TryRecvError::Disconnected) => return End::Stop,
                Ok(Job::Run { answer, .. }) if self.shutdown.is_shutdown() => {
                    // A job still waiting at the stop is not started: it would only be aborted.
                    let _ = answer.send(Err(JobError::Stopped));
                    continue;
                }
                Ok(Job::Run { answer, .. }) if answer.is_closed() => {
                    // Its asker left while it waited (the HTTP request was dropped): nobody would
                    // see its outcome, so the terminal is not asked at all.
                    continue;
                }
                Ok(Job::Run { request, completion_timeout, bound, answer }) => {
                    let outcome = match bound {
                        None => link.run(&request, completion_timeout),
                        Some(bound) => {
                            let since = Instant::now();
                            link.run_abortable(&request, completion_timeout, || {
                                since.elapsed() >= bound || answer.is_closed() || self.shutdown.is_shutdown()
                            })
                        }
                    };
                    let outcome = match outcome {
                        // A command ended by the stop is answered as such, whatever the terminal
                        // said last, so the waiting client learns why.
                        Ok(_) if bound.is_some() && self.shutdown.is_shutdown() => Err(JobError::Stopped),
                        other => other.map_err(JobError::from),
                    };
                    let lost = match &outcome {
                        Ok(outcome) if !link_survives(outcome) => Some(describe(outcome)),
                        _ => None,
                    };
                    // The asker may have gone (its request was dropped); nothing waits for it.
                    let _ = answer.send(outcome);
                    if let Some(why) = lost {
                        return End::Lost(why);
                    }
                    last_heard = Instant::now();
                    continue;
                }
                Err(TryRecvError::Empty) => {}
            }
            if last_heard.elapsed() >= self.settings.keepalive {
                let enquiry = Request::StatusEnquiry { password: self.settings.link.password.clone() };
                match link.run_abortable(&enquiry, ADMIN_TIMEOUT, self.give_up_after(ADMIN_TIMEOUT)) {
                    Ok(Outcome::Completed(_)) => last_heard = Instant::now(),
                    Ok(outcome) => return End::Lost(format!("status enquiry: {}", describe(&outcome))),
                    Err(e) => return End::Lost(format!("status enquiry not sent: {e}")),
                }
                continue;
            }
            // Idle: a terminal rarely sends unasked, so a read here mostly notices a closed link.
            // What it does send is answered as the protocol asks and otherwise dropped; a flood
            // is read and answered at the pace it comes, with the decoder's bounded buffer.
            match link.recv(Instant::now() + IDLE_POLL) {
                Ok(None) => {}
                Ok(Some(apdu)) => {
                    tracing::debug!(
                        command = apdu.command(),
                        "ZVT terminal sent a message while idle; answered and dropped"
                    );
                    if let Err(e) = link.answer_unsolicited(&apdu) {
                        return End::Lost(e.to_string());
                    }
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
    }

    /// When an administrative command (registration, status enquiry) is given up: after its
    /// total bound, however often the terminal speaks, or at the stop.
    fn give_up_after(&self, bound: Duration) -> impl FnMut() -> bool + '_ {
        let since = Instant::now();
        move || since.elapsed() >= bound || self.shutdown.is_shutdown()
    }

    /// Waits out a reconnect delay, answering jobs at once meanwhile. Returns true on stop.
    fn wait_disconnected(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.inbox.recv_timeout(left) {
                Ok(Job::Run { answer, .. }) => {
                    let _ = answer.send(Err(JobError::NotConnected));
                }
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

/// An outcome in words for status and logs; it never carries card data.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed(r) => format!("completed with result code {}", r.result_code.unwrap_or(0)),
        Outcome::Aborted { code, .. } => format!("aborted with result code {}", code.unwrap_or(0)),
        Outcome::Refused { code } => format!("refused with code {code:#04x}"),
        Outcome::Lost { why, .. } => format!("lost ({why:?})"),
    }
}

#[cfg(test)]
mod tests;
