//! End-to-end: the queue's files are private to the agent, both when it creates them and when
//! an existing installation left them readable by others.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn assert_private(state: &Path) {
    assert_eq!(mode(state), 0o700, "state directory");
    for name in ["queue.db", "queue.db-wal", "queue.db-shm", "queue.id"] {
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_files_are_created_private_and_loose_modes_are_corrected_at_start() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    let state = agent.db_path().parent().expect("state dir").to_path_buf();
    assert_private(&state);

    // Stopped with a WAL left behind by a crash, then loosened as an older version or a copy
    // would leave them.
    agent.kill9().await;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["queue.db", "queue.db-wal", "queue.db-shm", "queue.id"] {
        let path = state.join(name);
        if path.exists() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    agent.start().await;
    assert_private(&state);
    assert_eq!(agent.refund(&id).await.expect("still there").state, "delivered");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
