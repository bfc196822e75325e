//! Terminal input throughput: frames/s through each codec (pure, in memory), and events/s end to
//! end over a real pseudo-terminal into the durable queue (the daemon started in-process).
//!
//! Run: `cargo bench --bench terminal` (env `BENCH_N` = events per end-to-end run, default 2000;
//! `BENCH_DIR` = where the databases go, default the system temp dir). Prints Markdown tables.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use refund_agent::config::Config;
use refund_agent::daemon;
use refund_agent::terminal::codec::zvt::{self, Apdu, ApduDecoder, FrameDecoder, Unit};
use refund_agent::terminal::codec::{lrc, Decoder, Framing, Item, ETX, STX};
use refund_agent::terminal::event::{parse_event_detailed, scan_event};

const REFUND: &str = r#"{"type":"refund","seq":7,"receipt_id":"RCP-2025-001","amount":"5.00","reason":"Customer returned item","operator":"emp_42","request_id":"till01-000123"}"#;
const RECEIPTS: usize = 200;

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let base = std::env::var("BENCH_DIR").map(Into::into).unwrap_or_else(|_| std::env::temp_dir());

    println!("| codec | frames | frames/s | MB/s | + parse & sanitize (events/s) |");
    println!("|---|---|---|---|---|");
    for framing in Framing::ALL {
        codec(framing, 100_000);
    }
    zvt_codec(false, 100_000);
    zvt_codec(true, 100_000);

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!();
    println!("| end to end over a pty | framing | events | events/s | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    for framing in [Framing::Ndjson, Framing::StxEtx] {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        rt.block_on(end_to_end(dir.path(), framing, n));
    }
}

fn frame(framing: Framing, payload: &str) -> Vec<u8> {
    match framing {
        Framing::Ndjson => format!("{payload}\n").into_bytes(),
        Framing::StxEtx => [&[STX][..], payload.as_bytes(), &[ETX, lrc(payload.as_bytes())]].concat(),
        Framing::Lines => format!("{payload}\r\n").into_bytes(),
    }
}

fn codec(framing: Framing, n: usize) {
    let payload = if framing == Framing::Lines { "RCP-2025-001" } else { REFUND };
    let stream: Vec<u8> = (0..n).flat_map(|_| frame(framing, payload)).collect();
    let mut frames = Vec::with_capacity(n);
    let start = Instant::now();
    let mut decoder = Decoder::new(framing);
    // Serial reads return a few KiB at most; 4 KiB is what the device thread reads at once.
    for chunk in stream.chunks(4096) {
        decoder.push(chunk);
        while let Some(item) = decoder.next_item() {
            if let Item::Frame(text) = item {
                frames.push(text);
            }
        }
    }
    let decode = start.elapsed().as_secs_f64();
    assert_eq!(frames.len(), n);
    let start = Instant::now();
    let parsed = frames
        .iter()
        .filter(|f| match framing {
            Framing::Lines => scan_event(f).is_ok(),
            _ => parse_event_detailed(f).result.is_ok(),
        })
        .count();
    let parse = start.elapsed().as_secs_f64();
    assert_eq!(parsed, n);
    println!(
        "| {framing} | {n} | {:.0} | {:.1} | {:.0} |",
        n as f64 / decode,
        stream.len() as f64 / decode / 1e6,
        n as f64 / (decode + parse)
    );
}

/// A refund's Status-Information as a terminal sends it (amount, trace, time, date, masked PAN,
/// terminal id, currency, receipt number, card name): 64 bytes of APDU.
const ZVT_STATUS: [u8; 64] = [
    0x04, 0x0F, 0x3D, 0x27, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x12, 0x50, 0x0B, 0x00, 0x00, 0x42, 0x0C,
    0x22, 0x39, 0x53, 0x0D, 0x10, 0x06, 0x22, 0xF0, 0xF8, 0x41, 0x11, 0x11, 0xEE, 0xEE, 0xEE, 0x11, 0x11,
    0x29, 0x52, 0x00, 0x12, 0x33, 0x49, 0x09, 0x78, 0x87, 0x00, 0x07, 0x8B, 0xF1, 0xF6, b'D', b'e', b'b',
    b'i', b't', b' ', b'M', b'a', b's', b't', b'e', b'r', b'c', b'a', b'r', b'd',
];

/// ZVT frames/s: serial frames (`over_tcp = false`: DLE framing, CRC, link units) or APDUs back to
/// back (`true`), then every APDU decoded into its fields with the card reduced.
fn zvt_codec(over_tcp: bool, n: usize) {
    let one = if over_tcp { ZVT_STATUS.to_vec() } else { zvt::encode_frame(&ZVT_STATUS) };
    let stream: Vec<u8> = (0..n).flat_map(|_| one.iter().copied()).collect();
    let mut apdus = Vec::with_capacity(n);
    let start = Instant::now();
    let (mut frames, mut tcp) = (FrameDecoder::new(), ApduDecoder::new());
    for chunk in stream.chunks(4096) {
        if over_tcp {
            tcp.push(chunk);
            apdus.extend(std::iter::from_fn(|| tcp.next_apdu()).filter_map(Result::ok));
        } else {
            frames.push(chunk);
            while let Some(unit) = frames.next_unit() {
                if let Unit::Frame(bytes) = unit {
                    apdus.extend(Apdu::parse(&bytes).ok());
                }
            }
        }
    }
    let decode = start.elapsed().as_secs_f64();
    assert_eq!(apdus.len(), n);
    let start = Instant::now();
    let cards = apdus.iter().filter(|apdu| zvt::decode(apdu).card().is_some()).count();
    let parse = start.elapsed().as_secs_f64();
    assert_eq!(cards, n);
    let name = if over_tcp { "zvt-apdu" } else { "zvt" };
    println!(
        "| {name} | {n} | {:.0} | {:.1} | {:.0} |",
        n as f64 / decode,
        stream.len() as f64 / decode / 1e6,
        n as f64 / (decode + parse)
    );
}

/// A pty pair: the bench writes to the master, the agent opens the slave through `link`.
fn pty(link: &Path) -> (OwnedFd, OwnedFd) {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags).expect("posix_openpt");
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let name = nix::pty::ptsname_r(&master).expect("ptsname");
    let slave = nix::fcntl::open(name.as_str(), flags, Mode::empty()).expect("open slave");
    let mut termios = tcgetattr(&slave).expect("tcgetattr");
    cfmakeraw(&mut termios);
    tcsetattr(&slave, SetArg::TCSANOW, &termios).expect("tcsetattr");
    std::os::unix::fs::symlink(&name, link).expect("symlink");
    (OwnedFd::from(master), slave)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = nix::unistd::write(fd.as_fd(), bytes).expect("write");
        bytes = &bytes[n..];
    }
}

/// Counts replies as they arrive (one `\n` or `ETX` each) and records when each arrived.
fn count_replies(
    master: Arc<OwnedFd>,
    framing: Framing,
    want: usize,
    seen: Arc<AtomicUsize>,
) -> Vec<Instant> {
    let end = if framing == Framing::StxEtx { ETX } else { b'\n' };
    let mut at = Vec::with_capacity(want);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(300);
    while at.len() < want && Instant::now() < deadline {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
            continue;
        }
        let n = nix::unistd::read(master.as_fd(), &mut buf).unwrap_or(0);
        let now = Instant::now();
        for _ in buf[..n].iter().filter(|&&b| b == end) {
            at.push(now);
        }
        seen.store(at.len(), Ordering::Relaxed);
    }
    at
}

async fn end_to_end(dir: &Path, framing: Framing, n: usize) {
    let secret = |name: &str, value: &str| {
        let p = dir.join(name);
        std::fs::write(&p, value).expect("secret");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    };
    secret("seal.key", &"ab".repeat(32));
    secret("fp.key", "k");
    let link = dir.join("terminal");
    let (master, _slave) = pty(&link);
    let master = Arc::new(master);
    // As in the enqueue bench, the destination is unreachable with a long backoff: the queue only
    // fills, as it does offline, and the sync worker stays out of the measurement.
    let text = format!(
        "[agent]\nterminal_id = \"bench\"\nstate_dir = \"{}\"\nseal_key_file = \"seal.key\"\n\
         [control]\nsocket = \"{}\"\n[sync]\nbackoff_initial = \"1h\"\nbackoff_max = \"1h\"\n\
         [terminal]\ndevice = \"{}\"\nframing = \"{framing}\"\n\
         [destinations.finalpos]\nkind = \"finalpos\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_file = \"fp.key\"\n",
        dir.join("state").display(),
        dir.join("control.sock").display(),
        link.display(),
    );
    let config = Config::from_toml(&text, &dir.join("config.toml"), std::iter::empty()).expect("config");
    let running = daemon::start(&config).await.expect("start");

    let receipts: Vec<String> = (0..RECEIPTS)
        .map(|r| format!(
            r#"{{"type":"receipt","seq":{r},"receipt_id":"R{r}","transaction_id":"T{r}","currency":"USD","total":"1000.00","subtotal":"1000.00","masked_pan":"530957******2257"}}"#
        ))
        .collect();
    let refunds: Vec<String> = (0..n)
        .map(|i| format!(
            r#"{{"type":"refund","seq":{i},"receipt_id":"R{}","amount":"0.01","reason":"benchmark","operator":"bench","request_id":"b-{i}"}}"#,
            i % RECEIPTS
        ))
        .collect();
    for (what, events) in [("receipt", receipts), ("refund", refunds)] {
        let seen = Arc::new(AtomicUsize::new(0));
        let want = events.len();
        let reader = {
            let (master, seen) = (master.clone(), seen.clone());
            std::thread::spawn(move || count_replies(master, framing, want, seen))
        };
        let bytes: Vec<u8> = events.iter().flat_map(|e| frame(framing, e)).collect();
        let start = Instant::now();
        let writer = master.clone();
        tokio::task::spawn_blocking(move || write_all(&writer, &bytes)).await.expect("writer");
        let at = tokio::task::spawn_blocking(move || reader.join().expect("reader")).await.expect("join");
        assert_eq!(at.len(), want, "every {what} answered");
        let elapsed = start.elapsed().as_secs_f64();
        // Gaps between consecutive replies: the per-event service time under a full pipe.
        let mut gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0).collect();
        gaps.sort_by(f64::total_cmp);
        let pct = |p: f64| gaps.get(((gaps.len() as f64 * p) as usize).min(gaps.len().saturating_sub(1)));
        println!(
            "| {what} events | {framing} | {want} | {:.0} | {:.2} | {:.2} |",
            want as f64 / elapsed,
            pct(0.50).copied().unwrap_or(0.0),
            pct(0.99).copied().unwrap_or(0.0)
        );
    }
    running.stop().await;
}
