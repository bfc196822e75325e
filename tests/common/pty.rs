//! A terminal on a pseudo-terminal: the test plays the terminal on the master side while the
//! agent opens the slave through a symlink, so "unplugging" is closing the master and
//! "replugging" is a new pty behind the same symlink.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// One plugged-in terminal: a pty pair, with a thread collecting what the agent writes.
pub struct Pty {
    master: Arc<OwnedFd>,
    /// Held so the pty lives exactly as long as this value, whoever else opens the slave.
    _slave: OwnedFd,
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Pty {
    /// A new pty whose slave `link` points to (atomically replacing an older target).
    pub fn plug(link: &Path) -> Pty {
        // Both ends are opened close-on-exec: otherwise every agent this test process spawns
        // would inherit the master, and closing it here would no longer unplug anything.
        let cloexec = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(cloexec).expect("posix_openpt");
        nix::pty::grantpt(&master).expect("grantpt");
        nix::pty::unlockpt(&master).expect("unlockpt");
        let target = nix::pty::ptsname_r(&master).expect("ptsname");
        let slave = nix::fcntl::open(target.as_str(), cloexec, Mode::empty()).expect("open the pty slave");
        // Raw from the start, so nothing the test writes is echoed back before the agent opens it.
        let mut termios = tcgetattr(&slave).expect("tcgetattr");
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios).expect("tcsetattr");
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
        std::fs::rename(&tmp, link).expect("re-point the device symlink");
        let master = Arc::new(OwnedFd::from(master));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, received, stop) = (master.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || read_master(&master, &received, &stop))
        };
        Pty { master, _slave: slave, received, stop, reader: Some(reader) }
    }

    pub fn write(&self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = nix::unistd::write(self.master.as_fd(), rest).expect("write to the pty master");
            rest = &rest[n..];
        }
    }

    /// Writes from a blocking thread: a big burst fills the pty buffer until the agent reads.
    pub async fn write_all(&self, bytes: Vec<u8>) {
        let master = self.master.clone();
        tokio::task::spawn_blocking(move || {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = nix::unistd::write(master.as_fd(), rest).expect("write to the pty master");
                rest = &rest[n..];
            }
        })
        .await
        .expect("writer");
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("lock").clone()
    }

    /// Closes the master: for the agent, the device was unplugged.
    pub fn unplug(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("reader thread");
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_master(master: &OwnedFd, received: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        // The short poll timeout is how promptly `unplug` can stop this thread.
        if poll(&mut fds, PollTimeout::from(20u16)).unwrap_or(0) == 0 {
            continue;
        }
        let readable = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        match nix::unistd::read(master.as_fd(), &mut chunk) {
            Ok(n) if readable && n > 0 => received.lock().expect("lock").extend_from_slice(&chunk[..n]),
            _ => std::thread::yield_now(),
        }
    }
}
