//! Power loss, measured: the real queue (group commit included) runs on a crash-simulating SQLite
//! VFS (`crates/crash-vfs`) that keeps, per file, what is durable (synced) apart from what is
//! only in the cache. Tills store refunds and a worker claims and records deliveries while the
//! power is cut after a seeded random number of writes and syncs; the disk then keeps only what
//! was synced (and, per cut, none, some, or a torn prefix of the rest), the `-shm` is lost, and
//! the files are reopened with the real VFS and checked against what every caller was told.
//!
//! A negative control runs the same workload on a disk whose syncs do nothing: it must lose
//! acknowledged refunds, or the checks could not fail. A third test fails an fsync with EIO.
//!
//! Replay a run with `POWER_LOSS_SEED=<seed>` (printed at the start). The cut points and losses
//! follow from the seed; which jobs share a group-commit batch depends on thread scheduling.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crash_vfs::{Disk, Loss};
use refund_agent::manager::Approval;
use refund_agent::queue::{
    self, AuditCaller, QueueHandle, QueueOwner, QueueSettings, Recorded, RefundView, Sealer, ViewState,
};
use refund_agent::refund::{CurrencyLimits, Policy, RefundDraft, RefundId};
use refund_agent::routing::{Route, Router};

/// Power cuts in the main run, and in the control.
const CUTS: usize = 200;
const CONTROL_CUTS: usize = 10;
/// Cuts before the main run starts over with a new queue.
const CUTS_PER_QUEUE: usize = 10;
/// The destination that deduplicates on the refund id (an in-flight delivery is sent again),
/// and the one that does not (an in-flight delivery becomes `unknown`).
const DEDUP: &str = "alpha";
const NO_DEDUP: &str = "beta";

fn settings() -> QueueSettings {
    let names = vec![DEDUP.to_string(), NO_DEDUP.to_string()];
    let usd = "USD".parse().expect("a currency");
    QueueSettings {
        policy: Policy {
            terminal_id: "till-1".into(),
            default_currency: usd,
            limits: CurrencyLimits::only(usd),
            max_queue_len: None,
            allow_unlinked: true,
        },
        router: Router::new(vec![Route { processor: "*".into(), destinations: names.clone() }], names),
        max_pending_age_ms: None,
        retention_ms: None,
    }
}

fn sealer() -> Sealer {
    Sealer::new(vec![7; 32]).expect("a key")
}

/// A small seeded generator, so that the cut points follow from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

type Delivery = (String, String);

/// What the queue's callers were told, across every power cut.
#[derive(Debug, Default)]
struct Told {
    /// Refunds whose caller heard "stored".
    acknowledged: HashSet<String>,
    /// Deliveries whose `Delivered` outcome was acknowledged.
    delivered: HashSet<Delivery>,
    /// Deliveries claimed (so sent) whose outcome was not acknowledged, with the outcome tried.
    in_flight: HashMap<Delivery, Option<&'static str>>,
    /// Refunds stored or claimed since the last check: their seals are verified after the cut.
    touched: HashSet<String>,
    /// Claims of a delivery already acknowledged as delivered: a second payment.
    duplicated: u64,
    keys: u64,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Told>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Told> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn draft(n: u64) -> RefundDraft {
    RefundDraft {
        receipt_id: Some(format!("R-{n}")),
        amount: Some(format!("{}.{:02}", 1 + n % 50, n % 100)),
        reason: "returned".into(),
        operator: "emp_1".into(),
        ..RefundDraft::default()
    }
}

/// The refunds are unlinked (no sale registered), so each carries a manager approval, as the
/// control API passes it once the PIN is verified.
fn approval() -> Option<Approval> {
    Some(Approval { manager: "mgr_1".into(), approved_at_ms: 1 })
}

/// A till: stores refunds until the storage fails (the power is off); after refund `limit`
/// it cuts the power itself.
async fn till(queue: QueueHandle, told: Shared, disk: Disk, limit: u64) {
    loop {
        let n = {
            let mut t = told.lock();
            t.keys += 1;
            t.keys
        };
        if n > limit {
            disk.cut();
        }
        match queue
            .create_approved(draft(n), Some(format!("key-{n}")), approval(), AuditCaller::agent())
            .await
        {
            Ok(Ok(created)) => {
                let mut t = told.lock();
                t.touched.insert(created.refund.id.clone());
                t.acknowledged.insert(created.refund.id);
            }
            Ok(Err(rejection)) => panic!("a valid refund was rejected: {rejection:?}"),
            Err(_) => return,
        }
    }
}

/// The sync worker: claims due deliveries, "sends" them and records the outcome. Half the
/// outcomes claim the next due delivery in the same transaction, as the agent's worker does
/// when a delivery ends.
async fn worker(queue: QueueHandle, told: Shared, seed: u64) {
    let mut rng = Rng(seed);
    let max_delay = Duration::from_secs(3600);
    let mut taken_up = Vec::new();
    loop {
        let claims = if taken_up.is_empty() {
            let Ok(claims) = queue.claim_due(8, Vec::new(), max_delay).await else { return };
            claims
        } else {
            std::mem::take(&mut taken_up)
        };
        if claims.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        for claim in claims {
            let id = claim.refund.id.to_string();
            let key = (id.clone(), claim.destination.clone());
            let deliver = rng.below(5) != 0;
            {
                let mut t = told.lock();
                t.touched.insert(id.clone());
                if t.delivered.contains(&key) {
                    t.duplicated += 1;
                }
                t.in_flight.insert(key.clone(), Some(if deliver { "delivered" } else { "pending" }));
            }
            let outcome = if deliver {
                Recorded::Delivered { remote_id: Some(format!("re_{id}")) }
            } else {
                Recorded::Retry { at_ms: 0, error: "HTTP 503".into() }
            };
            let refund_id: RefundId = id.parse().expect("a refund id");
            let stored = if rng.below(2) == 0 {
                queue
                    .record_then_claim(refund_id, claim.position, outcome, Vec::new(), max_delay)
                    .await
                    .map(|next| taken_up.extend(next))
            } else {
                queue.record(refund_id, claim.position, outcome).await
            };
            if stored.is_err() {
                return;
            }
            let mut t = told.lock();
            t.in_flight.remove(&key);
            if deliver {
                t.delivered.insert(key);
            }
        }
    }
}

async fn join(owner: QueueOwner) {
    tokio::task::spawn_blocking(move || owner.join()).await.expect("the owner thread ends");
}

/// One power-on of the queue on the crash disk: tills and worker run until the cut, then the
/// queue closes (everything after the cut fails) and the disk keeps what survived.
/// Says whether the cut fell inside a checkpoint (database-file writes were lost).
async fn run_until_cut(dir: &Path, disk: &Disk, told: &Shared, rng: &mut Rng) -> bool {
    let (queue, owner) = queue::start_on_vfs(dir, sealer(), settings(), disk.name())
        .expect("the queue opens on the crash disk");
    // Mostly a cut within the first few commits; one in ten inside a checkpoint (which comes
    // when the WAL reaches 1000 pages): the tills stop and the power goes at the latest after
    // `limit` refunds, in case no checkpoint wrote that many pages.
    let mut limit = told.lock().keys + 100;
    if rng.below(10) == 0 {
        disk.arm_in_checkpoint(rng.below(20));
        limit += 1000;
    } else {
        disk.arm(rng.below(400));
    }
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(till(queue.clone(), told.clone(), *disk, limit)))
        .chain([tokio::spawn(worker(queue.clone(), told.clone(), rng.next()))])
        .collect();
    for task in tasks {
        task.await.expect("a task of the workload ran");
    }
    assert!(disk.is_cut(), "the workload ended before the power was cut");
    drop(queue);
    join(owner).await;
    let loss = [Loss::All, Loss::Some, Loss::TornPrefix][rng.below(3) as usize];
    disk.restore(loss, rng.next()).expect("the disk restores").database_writes_lost > 0
}

/// What the files hold after a cut, against what the callers were told.
#[derive(Debug, Default)]
struct Findings {
    lost: u64,
    problems: Vec<String>,
}

/// Reopens the queue with the real VFS, runs start-up recovery and checks every promise.
async fn verify(dir: &Path, told: &Shared) -> Findings {
    let mut found = Findings::default();
    {
        let conn = rusqlite::Connection::open(dir.join("queue.db")).expect("open with the real VFS");
        let check: String =
            conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check runs");
        if check != "ok" {
            found.problems.push(format!("integrity_check: {check}"));
        }
    }
    let (queue, owner) = match queue::start(dir, sealer(), settings()) {
        Ok(started) => started,
        Err(e) => {
            found.lost = told.lock().acknowledged.len() as u64;
            found.problems.push(format!("the queue does not start: {e}"));
            return found;
        }
    };
    queue.recover(|d| d == DEDUP).await.expect("start-up recovery");
    let (acknowledged, delivered, in_flight, touched) = {
        let mut t = told.lock();
        let touched = std::mem::take(&mut t.touched);
        (t.acknowledged.clone(), t.delivered.clone(), std::mem::take(&mut t.in_flight), touched)
    };
    // The refunds written since the last check, read through the queue: seals verified (one
    // that fails is shown quarantined) and every delivery row there. Every refund is read so
    // once more at the end of the run (`check_all_seals`).
    for id in &touched {
        if let Some(view) = queue.refund(id.parse().expect("a refund id")).await.expect("a read") {
            check_view(&view, &mut found);
        }
    }
    let status = queue.status().await.expect("status");
    if status.quarantined != 0 {
        found.problems.push(format!("{} refunds quarantined", status.quarantined));
    }
    if status.deliveries.values().any(|by_state| by_state.get("in_flight").is_some_and(|n| *n > 0)) {
        found.problems.push("deliveries still in flight after recovery".into());
    }
    // Every refund ever acknowledged, and every delivery's state, from the file itself.
    let (present, states) = stored(dir);
    found.lost = acknowledged.difference(&present).count() as u64;
    for key in &delivered {
        match states.get(key).map(String::as_str) {
            Some("delivered") => {}
            other => found.problems.push(format!("{key:?} was acknowledged delivered, is now {other:?}")),
        }
    }
    for (key, tried) in &in_flight {
        let recovered = if key.1 == DEDUP { "pending" } else { "unknown" };
        match states.get(key).map(String::as_str) {
            Some(s) if s == recovered || Some(s) == *tried => {}
            None if !acknowledged.contains(&key.0) => {}
            other => found.problems.push(format!("{key:?} was in flight, is now {other:?} after recovery")),
        }
    }
    drop(queue);
    join(owner).await;
    found
}

fn check_view(view: &RefundView, found: &mut Findings) {
    if view.state == ViewState::Quarantined {
        found.problems.push(format!("refund {} is quarantined: its seal does not verify", view.id));
    }
    if view.deliveries.len() != 2 {
        found.problems.push(format!("refund {} has {} delivery rows, not 2", view.id, view.deliveries.len()));
    }
}

/// The refund ids and delivery states in the file, read with a plain connection beside the
/// queue's (WAL readers do not block it).
fn stored(dir: &Path) -> (HashSet<String>, HashMap<Delivery, String>) {
    let conn = rusqlite::Connection::open(dir.join("queue.db")).expect("open with the real VFS");
    let ids = conn
        .prepare("SELECT id FROM refunds")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect::<Result<HashSet<String>, _>>())
        .expect("refund ids");
    let states = conn
        .prepare("SELECT refund_id, destination, state FROM deliveries")
        .and_then(|mut s| {
            s.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
                .collect::<Result<HashMap<_, _>, _>>()
        })
        .expect("delivery states");
    (ids, states)
}

/// Reads every refund through the queue: every seal verifies and no delivery row is missing.
async fn check_all_seals(dir: &Path) -> Findings {
    let mut found = Findings::default();
    let (queue, owner) = queue::start(dir, sealer(), settings()).expect("the queue opens");
    for view in queue.list(None, i64::MAX).await.expect("every refund reads") {
        check_view(&view, &mut found);
    }
    drop(queue);
    join(owner).await;
    found
}

/// The real files are scratch (what survives is the crash disk's model), so they live in memory
/// where there is a tmpfs: hundreds of reopenings then cost no real fsyncs.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn seed() -> u64 {
    std::env::var("POWER_LOSS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0016)
}

/// Creates the queue with the real VFS, as an installation would.
fn fresh_queue(dir: &Path) {
    let (queue, owner) = queue::start(dir, sealer(), settings()).expect("a new queue");
    drop(queue);
    owner.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_refunds_survive_power_cuts_and_a_lying_disk_is_caught() {
    let seed = seed();
    eprintln!("power loss: seed={seed} (POWER_LOSS_SEED={seed} replays the cut points)");
    let mut rng = Rng(seed);
    let disk = Disk::register("crash-main").expect("register the crash VFS");

    let cuts: usize = std::env::var("POWER_LOSS_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(CUTS);
    let (mut acknowledged, mut lost, mut duplicated, mut in_checkpoint) = (0, 0, 0, 0);
    // A new queue every few cuts keeps the file small, so that each reopening (whose checks
    // read the whole file) stays cheap; within a queue, every cut is checked against everything
    // acknowledged since it was made.
    for generation in 0..cuts.div_ceil(CUTS_PER_QUEUE) {
        let dir = scratch_dir();
        fresh_queue(dir.path());
        let told = Shared::default();
        for cut in (generation * CUTS_PER_QUEUE..cuts).take(CUTS_PER_QUEUE) {
            in_checkpoint += u64::from(run_until_cut(dir.path(), &disk, &told, &mut rng).await);
            let found = verify(dir.path(), &told).await;
            lost += found.lost;
            assert!(
                found.lost == 0 && found.problems.is_empty(),
                "after power cut {cut} (seed {seed}): {} acknowledged refunds lost; {:?}",
                found.lost,
                found.problems
            );
        }
        let found = check_all_seals(dir.path()).await;
        assert!(
            found.problems.is_empty(),
            "at the end of queue {generation} (seed {seed}): {:?}",
            found.problems
        );
        let t = told.lock();
        acknowledged += t.acknowledged.len();
        duplicated += t.duplicated;
    }

    // The control: the same workload on a disk whose syncs make nothing durable.
    let control_dir = scratch_dir();
    fresh_queue(control_dir.path());
    disk.ignore_syncs(true);
    let control = Shared::default();
    let mut control_losses = 0;
    let mut control_refused = false;
    for _ in 0..CONTROL_CUTS {
        run_until_cut(control_dir.path(), &disk, &control, &mut rng).await;
        let found = verify(control_dir.path(), &control).await;
        control_losses += found.lost;
        // The lying disk lost committed batches, so the database may have gone back behind the
        // generation marker written after them: the agent then refuses to start on it (it looks
        // like an older copy put back). That is a loss caught by the agent itself; the control
        // cannot go on from there.
        if found.problems.iter().any(|p| p.starts_with("the queue does not start")) {
            control_refused = true;
            break;
        }
        // Each round starts from what the disk kept.
        let keys = control.lock().keys;
        *control.lock() = Told { keys, ..Told::default() };
    }
    disk.ignore_syncs(false);
    if control_refused {
        println!("power loss: the control's queue went back behind its generation marker; the agent refused to start on it");
    }

    println!(
        "power loss: cuts={cuts} acknowledged={acknowledged} lost={lost} duplicated={duplicated} control_losses={control_losses}"
    );
    eprintln!("power loss: {in_checkpoint} of the cuts fell inside a checkpoint");
    assert!(in_checkpoint > 0 || cuts < CUTS, "no cut fell inside a checkpoint");
    assert!(acknowledged > CUTS, "too few refunds acknowledged to mean anything: {acknowledged}");
    assert_eq!(duplicated, 0, "a delivery acknowledged as delivered was claimed again");
    assert!(control_losses > 0, "the control lost nothing: the checks cannot see a lost refund");
}

/// A failed fsync: the refund of that COMMIT is never acknowledged, the failure shows in the
/// storage status, and the queue goes on, on a connection read again from the disk, with what
/// it acknowledged afterwards surviving the next power cut. With `failed_syncs` 2 the sync of
/// the checkpoint SQLite tries when the suspect connection closes fails too, which leaves the
/// WAL holding frames of the failed COMMIT that are readable but not on disk. With one failed
/// sync, the reopened connection is also shown to ask for checkpoints.
async fn failed_fsync(vfs: &str, failed_syncs: u32) {
    let disk = Disk::register(vfs).expect("register the crash VFS");
    let dir = scratch_dir();
    fresh_queue(dir.path());
    let (queue, owner) =
        queue::start_on_vfs(dir.path(), sealer(), settings(), disk.name()).expect("the queue opens");
    let create =
        |n: u64| queue.create_approved(draft(n), Some(format!("key-{n}")), approval(), AuditCaller::agent());
    let before = create(1).await.expect("stored").expect("valid");

    disk.fail_syncs(failed_syncs);
    let failed = create(2).await;
    assert!(failed.is_err(), "a refund whose fsync failed was acknowledged: {failed:?}");
    let storage = queue.storage();
    assert!(storage.failing && storage.write_failures >= 1, "the failure is not shown: {storage:?}");

    let after = create(3).await.expect("the queue stores again after reopening").expect("valid");
    let storage = queue.storage();
    assert!(!storage.failing, "a stored refund clears the failure: {storage:?}");
    assert_eq!(storage.reopened, 1, "the suspect connection was not replaced: {storage:?}");

    // The reopened connection is watched for checkpoints as the first was: once its COMMITs
    // leave the WAL past the threshold (1,000 frames), the checkpoint thread copies it. Without
    // the WAL hook nothing would until the owner's restart at 10,000 frames. Only with one
    // failed sync: a second one may be the checkpoint thread's own, which then tries again
    // whenever the queue is quiet, with or without a hook asking.
    if failed_syncs == 1 {
        let mut n = 4;
        while wal_index(dir.path()).max_frame < 1100 {
            create(n).await.expect("stored").expect("valid");
            n += 1;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while wal_index(dir.path()).backfilled == 0 {
            let index = wal_index(dir.path());
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint copied the WAL of the reopened connection: {index:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    disk.cut();
    drop(queue);
    join(owner).await;
    disk.restore(Loss::All, 1).expect("the disk restores");
    let told = Shared::default();
    told.lock().acknowledged = HashSet::from([before.refund.id, after.refund.id]);
    let found = verify(dir.path(), &told).await;
    assert!(found.lost == 0 && found.problems.is_empty(), "after the power cut: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_the_queue_reopens_from_the_disk() {
    failed_fsync("crash-eio", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_frames_left_by_a_failed_fsync_do_not_cost_later_refunds() {
    failed_fsync("crash-eio-close", 2).await;
}

/// From the WAL index (`queue.db-shm`, SQLite's "WAL-mode File Format", in native byte order):
/// the frames in the WAL, and how many of them a checkpoint has copied into the database file.
#[derive(Debug)]
struct WalIndex {
    max_frame: u32,
    backfilled: u32,
}

fn wal_index(dir: &Path) -> WalIndex {
    let shm = std::fs::read(dir.join("queue.db-shm")).expect("read the WAL index");
    let word = |at: usize| u32::from_ne_bytes(shm[at..at + 4].try_into().expect("four bytes"));
    WalIndex { max_frame: word(16), backfilled: word(96) }
}
