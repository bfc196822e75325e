//! The serial port itself: opened, read and written in dedicated std threads, reopened when the
//! device disappears.
//!
//! Serial I/O is blocking, so it lives outside the async runtime in two threads that share the
//! open port:
//! * the **reader** opens the port, reads with a short timeout and hands every chunk to the async
//!   side through a bounded channel (so a slow queue slows the reader instead of growing memory).
//!   When the device goes away (EOF, EIO, a hang-up: USB unplugged, the pty closed) it closes the
//!   port and reopens it with capped exponential backoff. While the device is absent it sleeps on
//!   the stop channel, so it never spins and still stops at once on shutdown.
//! * the **writer** takes encoded replies from the async side and writes them to whatever port is
//!   currently open. A reply for a device that is gone is dropped: the terminal resends its
//!   request after reconnecting, and a resent refund is answered from the queue's idempotency key.
//!
//! [`TerminalStatus`] is the shared, serializable view of all this for `GET /v1/status`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serialport::{DataBits, FlowControl, Parity, SerialPort, StopBits};
use tokio::sync::mpsc;

use crate::lock::lock;

/// How long one read waits for bytes; it bounds how late the reader notices a stop request.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// The first reopen delay after the device went away or could not be opened.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest reopen delay, so a replugged terminal works again within seconds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy; the next reopen starts from the first delay.
/// A device that opens and fails at once keeps backing off instead of being reopened 10×/s.
const STABLE: Duration = Duration::from_secs(2);

/// What the terminal link looks like from outside, for `/v1/status` and diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TerminalStatus {
    /// The configured device path.
    pub device: String,
    pub framing: String,
    /// Whether the port is open right now.
    pub connected: bool,
    /// How often the port was reopened after it was lost.
    pub reconnects: u64,
    /// The last open or read error, kept after a reconnect for the technician.
    pub last_error: Option<String>,
    /// Valid events received.
    pub frames_ok: u64,
    /// Frames thrown away: bad framing, checksum, UTF-8, JSON or event fields.
    pub frames_dropped: u64,
    /// The `DropReason`/event error code of the last dropped frame.
    pub last_drop: Option<String>,
    /// The receipt id of the last scan, so a kiosk UI can offer it (a scanner cannot read replies).
    pub last_scan: Option<String>,
}

/// The status shared by the device threads, the link task and the control API.
pub type SharedStatus = Arc<Mutex<TerminalStatus>>;

/// Port settings from `[terminal]`; always 8 data bits, 1 stop bit, no flow control (8N1).
#[derive(Debug, Clone)]
pub struct PortSettings {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
}

/// What the reader tells the async side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The port was (re)opened: whatever was half-received before belongs to no frame.
    Connected,
    Bytes(Vec<u8>),
    /// The port was lost.
    Disconnected,
}

/// The running device threads.
#[derive(Debug)]
pub struct Device {
    stop: std_mpsc::Sender<()>,
    reader: thread::JoinHandle<()>,
    writer: thread::JoinHandle<()>,
}

type Port = Box<dyn SerialPort>;

/// The port currently open, shared with the writer; `None` while the device is absent.
type Slot = Arc<Mutex<Option<Port>>>;

/// Starts the reader and writer threads. They end when [`Device::join`] is called, or when the
/// async side drops its ends of the channels.
pub fn start(
    settings: PortSettings,
    status: SharedStatus,
    events: mpsc::Sender<DeviceEvent>,
    replies: mpsc::Receiver<Vec<u8>>,
) -> io::Result<Device> {
    let slot: Slot = Arc::new(Mutex::new(None));
    let (stop, stopped) = std_mpsc::channel();
    let reader_slot = slot.clone();
    let reader = thread::Builder::new()
        .name("terminal-reader".into())
        .spawn(move || read_loop(&settings, &status, &events, &reader_slot, &stopped))?;
    let writer =
        thread::Builder::new().name("terminal-writer".into()).spawn(move || write_loop(replies, &slot))?;
    Ok(Device { stop, reader, writer })
}

impl Device {
    /// Stops the reader (within one read timeout) and waits for both threads. The writer ends once
    /// the async side has dropped its reply sender, i.e. after the link task ended.
    pub fn join(self) {
        drop(self.stop);
        let _ = self.reader.join();
        let _ = self.writer.join();
    }
}

/// Capped exponential backoff for reopening the port.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { next: BACKOFF_INITIAL }
    }

    /// The delay to wait now; each call doubles the next one up to [`BACKOFF_MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

fn open(settings: &PortSettings) -> Result<(Port, Port), serialport::Error> {
    let port = serialport::new(settings.path.to_string_lossy(), settings.baud)
        .parity(settings.parity)
        .data_bits(DataBits::Eight)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .timeout(READ_TIMEOUT)
        .open()?;
    // The writer gets its own handle on the same open file, so a reply never waits for a read.
    let writer = port.try_clone()?;
    Ok((port, writer))
}

fn read_loop(
    settings: &PortSettings,
    status: &SharedStatus,
    events: &mpsc::Sender<DeviceEvent>,
    slot: &Slot,
    stopped: &std_mpsc::Receiver<()>,
) {
    let device = settings.path.display().to_string();
    let mut backoff = Backoff::new();
    let mut was_connected = false;
    // Only the first failure of a streak is a warning; repeating it every 5 s would flood the
    // journal of a till whose terminal is simply switched off.
    let mut failing = false;
    loop {
        match open(settings) {
            Ok((mut port, writer)) => {
                *lock(slot) = Some(writer);
                {
                    let mut s = lock(status);
                    s.connected = true;
                    if was_connected {
                        s.reconnects += 1;
                    }
                }
                tracing::info!(device = %device, reconnect = was_connected, "terminal device connected");
                was_connected = true;
                failing = false;
                if events.blocking_send(DeviceEvent::Connected).is_err() {
                    return;
                }
                let since = Instant::now();
                let end = read_until_lost(port.as_mut(), events, stopped);
                lock(slot).take();
                drop(port);
                match end {
                    End::Stop => return,
                    End::Lost(error) => {
                        tracing::warn!(device = %device, error = %error, "terminal device lost; reopening with backoff");
                        let mut s = lock(status);
                        s.connected = false;
                        s.last_error = Some(error);
                    }
                }
                if events.blocking_send(DeviceEvent::Disconnected).is_err() {
                    return;
                }
                if since.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
            Err(error) => {
                if failing {
                    tracing::debug!(device = %device, error = %error, "terminal device still unavailable");
                } else {
                    tracing::warn!(device = %device, error = %error, "cannot open the terminal device; retrying with backoff");
                }
                failing = true;
                lock(status).last_error = Some(format!("cannot open: {error}"));
            }
        }
        match stopped.recv_timeout(backoff.next_delay()) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Reads until the device is lost or a stop is requested.
fn read_until_lost(
    port: &mut dyn SerialPort,
    events: &mpsc::Sender<DeviceEvent>,
    stopped: &std_mpsc::Receiver<()>,
) -> End {
    let mut buf = [0u8; 4096];
    loop {
        match stopped.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(()) | Err(TryRecvError::Disconnected) => return End::Stop,
        }
        match port.read(&mut buf) {
            // A tty returns 0 only when the other end is gone (the pty master closed).
            Ok(0) => return End::Lost("end of file".into()),
            Ok(n) => {
                if events.blocking_send(DeviceEvent::Bytes(buf[..n].to_vec())).is_err() {
                    return End::Stop;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            // EIO, a hang-up (reported as a broken pipe) or anything else: the device is gone.
            Err(e) => return End::Lost(e.to_string()),
        }
    }
}

fn write_loop(mut replies: mpsc::Receiver<Vec<u8>>, slot: &Slot) {
    while let Some(bytes) = replies.blocking_recv() {
        let mut port = lock(slot);
        match port.as_mut() {
            Some(port) => {
                if let Err(error) = port.write_all(&bytes) {
                    // The reader notices a lost device on its own; only the reply is lost here.
                    tracing::warn!(error = %error, len = bytes.len(), "reply to the terminal not written");
                }
            }
            None => tracing::debug!(len = bytes.len(), "terminal absent; reply dropped"),
        }
    }
}

/// Parses the configured parity.
pub fn parity(name: &str) -> Option<Parity> {
    match name {
        "none" => Some(Parity::None),
        "even" => Some(Parity::Even),
        "odd" => Some(Parity::Odd),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_INITIAL);
    }

    #[test]
    fn parity_names() {
        assert_eq!(parity("none"), Some(Parity::None));
        assert_eq!(parity("even"), Some(Parity::Even));
        assert_eq!(parity("odd"), Some(Parity::Odd));
        assert_eq!(parity("mark"), None);
    }

    #[tokio::test]
    async fn an_absent_device_is_retried_without_spinning_and_stops_promptly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = PortSettings { path: dir.path().join("absent"), baud: 9600, parity: Parity::None };
        let status = SharedStatus::default();
        let (events, mut received) = mpsc::channel(8);
        let (replies_tx, replies) = mpsc::channel(8);
        let device = start(settings, status.clone(), events, replies).expect("threads start");
        // Wait (with a deadline) until the first open failed and was recorded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&status).last_error.is_none() {
            assert!(Instant::now() < deadline, "the open failure was never recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!lock(&status).connected);
        assert!(received.try_recv().is_err(), "nothing is reported for a device never opened");
        drop(replies_tx);
        let stopping = Instant::now();
        tokio::task::spawn_blocking(move || device.join()).await.expect("join");
        assert!(stopping.elapsed() < Duration::from_secs(2), "stop waited for the backoff");
    }
}
