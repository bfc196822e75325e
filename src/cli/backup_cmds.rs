//! `backup` and `restore`: they work on the state directory's files directly (the queue module
//! does the work), not through the control socket, so that they also work with the agent
//! stopped, and `restore` only then.

use std::path::Path;

use super::exit;
use crate::config::Config;
use crate::daemon;
use crate::queue::{self, BackupError, Replaced};

fn failed(e: &BackupError) -> u8 {
    eprintln!("error: {e}");
    match e {
        BackupError::Exists(_) => exit::USAGE,
        e if e.is_refusal() => exit::REFUSED,
        _ => exit::ERROR,
    }
}

/// `refund-agent backup PATH [--force]`.
pub fn backup(config: &Config, path: &Path, force: bool) -> u8 {
    match queue::backup(&config.state_dir, path, force) {
        Ok(r) => {
            println!(
                "Backup written to {}: queue {}, {} refund(s), generation {}, schema version {}, {} bytes.",
                r.path.display(),
                r.queue_id,
                r.refunds,
                r.generation,
                r.schema_version,
                r.bytes
            );
            exit::OK
        }
        Err(e) => failed(&e),
    }
}

/// `refund-agent restore PATH`: needs the seal key (the copy's seals are checked) and the
/// connectors' capabilities (which destinations deduplicate on the refund id).
pub fn restore(config: &Config, path: &Path, discard_current: bool) -> u8 {
    let setup = daemon::sealer(config).and_then(|s| daemon::connectors(config).map(|c| (s, c)));
    let (sealer, connectors) = match setup {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // A destination the configuration no longer names is treated as not deduplicating.
    let dedup = |name: &str| connectors.get(name).is_some_and(|c| c.capability().dedup);
    match queue::restore(&config.state_dir, path, &sealer, &dedup, discard_current) {
        Ok(r) => {
            let done = &r.restored;
            println!(
                "Restored {} into {} (queue {}, generation {} from now on).",
                path.display(),
                config.state_dir.display(),
                done.queue_id,
                done.generation
            );
            match &done.replaced {
                Replaced::Current => println!(
                    "The queue it replaced was intact and current: it is kept, nothing it knew is forgotten, \
                     and {} refund(s) only the copy knew were carried into it.",
                    done.carried
                ),
                Replaced::Absent => {}
                Replaced::Stale(why) => println!(
                    "The queue it replaced knew no more than a copy ({why}): {} refund(s) only it knew were \
                     carried over; refunds made after both copies are not known to the restored queue, nor \
                     their idempotency keys.",
                    done.carried
                ),
                Replaced::Damaged(why) => println!(
                    "The queue it replaced was not used, as it is damaged ({why}): refunds made after the copy \
                     was taken are not known to the restored queue, nor their idempotency keys."
                ),
            }
            if let Some(previous) = &r.previous {
                println!("The queue it replaced is kept as {}.", previous.display());
            }
            println!("{} deliveries set back to pending (their destination deduplicates).", done.pending);
            println!(
                "{} deliveries are now unknown: the copy cannot know whether they were sent after it was taken.",
                done.unknown
            );
            for id in &done.to_check {
                println!("  check at the destination, then `refund-agent refunds resolve {id}`");
            }
            exit::OK
        }
        Err(e) => failed(&e),
    }
}
