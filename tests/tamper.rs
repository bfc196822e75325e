//! Rows deleted from the queue file behind the agent's back, with the real binary: a missing
//! refund refuses the start (and `doctor` names it), a missing delivery row quarantines its
//! refund while the others deliver, and ordinary restarts and purges raise no alarm.

mod common;

use std::process::Output;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

/// Exit code of a refused start (storage refusals), and of a failed `doctor`.
const REFUSED_START: i32 = 1;
const DOCTOR_FAILED: i32 = 6;

/// Deletes rows as someone with access to the file would, while the agent is stopped.
fn delete(agent: &Agent, sql: &str, id: &str) {
    let db = rusqlite::Connection::open(agent.db_path()).expect("open the queue file");
    assert_eq!(db.execute(sql, [id]).expect("delete"), 1, "{sql} {id}");
}

/// `refund-agent run` on a queue it must refuse; returns its output once it has exited.
async fn run_refused(agent: &Agent) -> Output {
    let run = tokio::process::Command::new(BIN).arg("--config").arg(&agent.config).arg("run").output();
    let out =
        tokio::time::timeout(DEADLINE, run).await.expect("a refused start ends").expect("run the agent");
    assert_eq!(out.status.code(), Some(REFUSED_START), "{}", stderr(&out));
    out
}

fn doctor_line(out: &Output, subject: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines().filter(|l| l.contains(&format!("  {subject}: ")));
    let line = lines.next().unwrap_or_else(|| panic!("no {subject} line: {text}")).to_string();
    assert!(lines.next().is_none(), "{text}");
    line
}

/// An agent that has taken and delivered `n` refunds of 1.00, then stopped.
async fn delivered_refunds(fp: &FinalPosSandbox, n: usize) -> (Agent, Vec<String>) {
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(created_id(&cli_refund(&agent, "1.00", &[]).await));
    }
    for id in &ids {
        agent.wait_state(id, "delivered").await;
    }
    assert_eq!(agent.terminate().await.code(), Some(0));
    (agent, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_deleted_from_the_middle_refuses_the_start_and_doctor_names_it() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let (agent, ids) = delivered_refunds(&fp, 3).await;
    delete(&agent, "DELETE FROM refunds WHERE id = ?1", &ids[1]);

    let out = run_refused(&agent).await;
    let text = stderr(&out);
    assert!(text.contains("altered outside the agent"), "{text}");
    assert!(text.contains("1 refund(s) are missing: sequence number(s) 2 (of 1-3)"), "{text}");
    assert!(text.contains("Refunds missing from the queue"), "names the recovery path: {text}");

    let doctor = agent.cli(&["doctor"]).await;
    assert_eq!(doctor.status.code(), Some(DOCTOR_FAILED));
    let line = doctor_line(&doctor, "queue rows");
    assert!(line.starts_with("FAIL") && line.contains("sequence number(s) 2 (of 1-3)"), "{line}");
    assert!(doctor_line(&doctor, "queue").starts_with("PASS"), "the file itself is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_refund_refuses_the_start() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let (agent, ids) = delivered_refunds(&fp, 2).await;
    delete(&agent, "DELETE FROM refunds WHERE id = ?1", &ids[1]);
    let text = stderr(&run_refused(&agent).await);
    assert!(text.contains("sequence number(s) 2 (of 1-2)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_delivery_row_quarantines_its_refund_while_the_others_deliver() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let hit = created_id(&cli_refund(&agent, "1.00", &[]).await);
    let other = created_id(&cli_refund(&agent, "2.00", &[]).await);
    for id in [&hit, &other] {
        eventually("a first attempt to fail", DEADLINE, || async {
            agent.refund(id).await.filter(|r| r.deliveries[0].attempts >= 1)
        })
        .await;
    }
    assert_eq!(agent.terminate().await.code(), Some(0));
    delete(&agent, "DELETE FROM deliveries WHERE refund_id = ?1", &hit);

    fp.go_online().await.unwrap();
    agent.start().await;
    agent.wait_state(&other, "delivered").await;
    let shown = agent.refund(&hit).await.unwrap();
    assert_eq!(shown.state, "quarantined");
    assert!(shown.quarantine_reason.unwrap().contains("should have 1 delivery row(s) but has 0"));
    let sent: Vec<String> =
        fp.refunds().iter().map(|r| r["externalId"].as_str().unwrap().to_string()).collect();
    assert_eq!(sent, [other], "the refund that lost its delivery row is never sent");
    let doctor = agent.cli(&["doctor"]).await;
    let line = doctor_line(&doctor, "queue rows");
    assert!(line.starts_with("WARN") && line.contains(&hit), "{line}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_kills_and_purges_with_many_refunds_raise_no_alarm() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let (mut agent, mut ids) = delivered_refunds(&fp, 12).await;
    agent.start().await;
    for _ in 0..6 {
        ids.push(created_id(&cli_refund(&agent, "1.00", &[]).await));
    }
    agent.kill9().await;
    agent.start().await;
    for id in &ids {
        agent.wait_state(id, "delivered").await;
    }
    assert_eq!(agent.terminate().await.code(), Some(0));

    // Retention of 1 ms: the sweep at start purges every delivered refund.
    agent.start_with_env(&[("REFUND_AGENT__AGENT__RETENTION", "1ms")]).await;
    eventually("the sweep to purge the delivered refunds", DEADLINE, || async {
        agent.list().await.is_empty().then_some(())
    })
    .await;
    let last = created_id(&cli_refund(&agent, "1.00", &[]).await);
    agent.wait_state(&last, "delivered").await;
    assert_eq!(agent.terminate().await.code(), Some(0));

    agent.start().await;
    assert!(agent.refund(&last).await.is_some());
    let doctor = agent.cli(&["doctor"]).await;
    let line = doctor_line(&doctor, "queue rows");
    assert!(line.starts_with("PASS") && line.contains("1-19"), "{line}");
    assert_eq!(agent.terminate().await.code(), Some(0));
    let mut sent: Vec<String> =
        fp.refunds().iter().map(|r| r["externalId"].as_str().unwrap().to_string()).collect();
    sent.sort();
    ids.push(last);
    ids.sort();
    assert_eq!(sent, ids, "each refund sent exactly once");
}
