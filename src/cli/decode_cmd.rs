//! `refund-agent terminal decode`: a capture file (or stdin) to JSON lines. Needs no config and
//! no running agent, so a technician can run it on any machine.

use std::io::{Read, Write};
use std::path::Path;

use super::exit;
use crate::terminal::capture::{self, CaptureFraming};

/// Reads the whole capture, decodes it and prints one JSON object per line.
pub fn decode(framing: CaptureFraming, file: &Path) -> u8 {
    let mut bytes = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(file).map(|b| bytes = b)
    };
    if let Err(e) = read {
        eprintln!("error: cannot read {}: {e}", file.display());
        return exit::USAGE;
    }
    let mut out = std::io::stdout().lock();
    for value in capture::decode(framing, &bytes) {
        if writeln!(out, "{value}").is_err() {
            // The reader went away (a closed pipe); there is nobody left to tell.
            return exit::ERROR;
        }
    }
    exit::OK
}
