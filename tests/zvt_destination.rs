//! End-to-end with a payment terminal as the destination that moves the money: the real binary,
//! a real SQLite file, the ZVT terminal simulator on a loopback TCP port, and the Final POS
//! sandbox as the back office that records the refund after the terminal paid it.

mod common;

use common::*;
use refund_agent::queue::RefundView;
use refund_agent::sandbox::zvt::{Endpoint, ZvtSimulator};
use refund_agent::sandbox::FinalPosSandbox;

/// Starts the simulator, the back office, and an agent that routes the example sale (processor
/// `gateway`, card present) to the terminal first and Final POS second.
async fn setup() -> (ZvtSimulator, FinalPosSandbox, Agent) {
    let sim = ZvtSimulator::start_tcp().expect("start the terminal simulator");
    let Endpoint::Tcp(addr) = sim.endpoint().clone() else { panic!("a TCP simulator has a TCP endpoint") };
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let extra = format!(
        r#"
[destinations.terminal]
kind = "zvt"
zvt_address = "{addr}"
password = "000000"
currency = "USD"

[[routes]]
processor = "gateway"
destinations = ["terminal", "finalpos"]
"#
    );
    let mut agent = Agent::new(&fp.url(), &extra);
    agent.start().await;
    // The sale was paid with the card the simulated terminal reads (its refunds go back to it):
    // a later lookup reads the card of the terminal's last transaction against the sale's.
    agent.add_receipt(&RECEIPT.replace("530957******2257", "411111******1111")).await;
    (sim, fp, agent)
}

/// How many `06 31` the terminal received.
fn refund_commands(sim: &ZvtSimulator) -> usize {
    sim.commands().into_iter().filter(|c| *c == 0x0631).count()
}

/// The terminal's record the agent stored for a delivered refund.
fn terminal_record(view: &RefundView) -> serde_json::Value {
    assert_eq!(view.deliveries[0].destination, "terminal", "{view:?}");
    let id = view.deliveries[0].remote_id.as_deref().expect("a paid refund keeps the terminal's record");
    serde_json::from_str(id).expect("the record is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_pays_once_and_the_back_office_records_it_after() {
    let (sim, fp, agent) = setup().await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    let record = terminal_record(&done);
    assert_eq!(record["trace"], "000001");
    assert_eq!(record["amount_minor"], 500);
    assert_eq!(record["card_last4"], "1111");
    assert_eq!(record["looked_up"], false);
    assert!(
        record["receipt"].as_array().is_some_and(|lines| lines.iter().any(|l| l == "GUTSCHRIFT")),
        "{record}"
    );
    assert_eq!(sim.refunds().len(), 1);
    assert_eq!(sim.refunds()[0].amount_minor, 500);
    assert_eq!(refund_commands(&sim), 1, "exactly one 06 31 left the agent");
    assert_eq!(fp.refunds().len(), 1, "the back office recorded it once");
    // No full card number ever reaches the logs.
    assert!(!agent.logs().contains("4111111111111111"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_outcome_is_looked_up_at_the_terminal_never_paid_twice() {
    let (sim, fp, agent) = setup().await;

    // The terminal pays, then the link dies before the result comes back.
    sim.drop_after_next_refund();
    let id = created_id(&cli_refund(&agent, "7.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    let record = terminal_record(&done);
    assert_eq!((record["trace"].as_str(), record["looked_up"].as_bool()), (Some("000001"), Some(true)));
    assert_eq!(sim.refunds().len(), 1, "one refund at the terminal");
    assert_eq!(refund_commands(&sim), 1, "the lookup did not send 06 31 again");
    assert_eq!(
        sim.commands().iter().filter(|c| **c == 0x0620).count(),
        2,
        "one repeat before, one lookup after"
    );
    assert_eq!(fp.refunds().len(), 1);

    // The link dies before the terminal moved money: the lookup shows the last transaction is
    // still the one before, so the refund is declined, not paid and not sent again.
    sim.drop_before_next_refund();
    let id = created_id(&cli_refund(&agent, "3.00", &[]).await);
    let declined = agent.wait_state(&id, "declined").await;
    let error = declined.deliveries[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("did not pay"), "{error}");
    assert_eq!(sim.refunds().len(), 1);
    assert_eq!(refund_commands(&sim), 2, "one 06 31 per refund");
    assert_eq!(fp.refunds().len(), 1, "the back office never hears of an unpaid refund");
}

/// A first refund paid in full, so that the terminal has a last transaction (trace 1) for the
/// next refund to note before its `06 31`.
async fn warm_up(sim: &ZvtSimulator, agent: &Agent) {
    let id = created_id(&cli_refund(agent, "1.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    assert_eq!(sim.refunds().len(), 1);
}

/// Waits until the refund's terminal delivery is `unknown`, and checks its note is on it.
async fn wait_unknown(agent: &Agent, id: &str) -> RefundView {
    let view = agent.wait_state(id, "unknown").await;
    let note = view.deliveries[0].remote_id.as_deref().expect("the trace number before is noted");
    let note: serde_json::Value = serde_json::from_str(note).expect("the note is JSON");
    assert_eq!(note["zvt_before"]["trace"], "000001", "{note}");
    view
}

/// The refund's audit rows show the agent's lookup and what it found.
fn assert_lookup_audited(view: &RefundView, detail: &str) {
    let rows = view.audit.as_deref().unwrap_or_default();
    assert!(
        rows.iter().any(|a| a.action == "lookup" && a.actor == "agent" && a.detail.starts_with(detail)),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_away_for_the_whole_attempt_is_looked_up_when_it_returns() {
    let (sim, fp, agent) = setup().await;
    warm_up(&sim, &agent).await;

    // The terminal pays, the line dies, and every lookup within the attempt finds it gone.
    sim.drop_after_next_refund();
    sim.go_away_after_next_cut();
    let id = created_id(&cli_refund(&agent, "7.00", &[]).await);
    let unknown = wait_unknown(&agent, &id).await;
    assert_eq!(unknown.deliveries[1].state, "pending", "the back office waits for the terminal");
    assert_eq!(fp.refunds().len(), 1, "only the warm-up reached the back office");

    sim.come_back();
    let done = agent.wait_state(&id, "delivered").await;
    let record = terminal_record(&done);
    assert_eq!((record["trace"].as_str(), record["looked_up"].as_bool()), (Some("000002"), Some(true)));
    assert_eq!(record["amount_minor"], 700);
    assert_eq!(sim.refunds().len(), 2, "one payout per refund at the terminal");
    assert_eq!(refund_commands(&sim), 2, "the lookup never sent 06 31 again");
    assert_eq!(fp.refunds().len(), 2, "the back office recorded it after the lookup");
    assert_lookup_audited(&done, "terminal: paid: trace 000002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_06_31_left_looks_the_payout_up_after_the_restart() {
    let (sim, fp, mut agent) = setup().await;
    warm_up(&sim, &agent).await;

    // The terminal pays and falls silent; the agent dies before it hears anything.
    sim.stall_after_next_refund();
    let id = created_id(&cli_refund(&agent, "6.00", &[]).await);
    eventually("the terminal to pay", DEADLINE, || async { (sim.refunds().len() == 2).then_some(()) }).await;
    agent.kill9().await;

    agent.start().await;
    let done = agent.wait_state(&id, "delivered").await;
    let record = terminal_record(&done);
    assert_eq!((record["trace"].as_str(), record["looked_up"].as_bool()), (Some("000002"), Some(true)));
    assert_eq!(refund_commands(&sim), 2, "one 06 31 per refund, none after the restart");
    assert_eq!(fp.refunds().len(), 2);
    assert!(
        agent.logs().contains("recovered deliveries interrupted by the last stop"),
        "start-up made it unknown first"
    );
    assert_lookup_audited(&done, "terminal: paid: trace 000002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_06_31_that_never_ran_is_declined_by_the_later_lookup_never_sent_again() {
    let (sim, fp, agent) = setup().await;
    warm_up(&sim, &agent).await;

    // The line dies before the terminal moved money, and the terminal stays away meanwhile.
    sim.drop_before_next_refund();
    sim.go_away_after_next_cut();
    let id = created_id(&cli_refund(&agent, "3.00", &[]).await);
    wait_unknown(&agent, &id).await;

    sim.come_back();
    let declined = agent.wait_state(&id, "declined").await;
    let error = declined.deliveries[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("did not pay"), "{error}");
    assert_eq!(declined.deliveries[1].state, "cancelled", "the back office never hears of it");
    assert_lookup_audited(&declined, "terminal: not paid");
    assert_eq!(sim.refunds().len(), 1, "only the warm-up was paid");
    assert_eq!(refund_commands(&sim), 2, "one 06 31 per refund");
    assert_eq!(fp.refunds().len(), 1);

    // A later refund runs as usual, and the declined one is still never sent.
    let next = created_id(&cli_refund(&agent, "2.00", &[]).await);
    agent.wait_state(&next, "delivered").await;
    assert_eq!(refund_commands(&sim), 3);
    assert_eq!(agent.refund(&id).await.expect("the declined refund").state, "declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_right_after_the_terminal_returns_leaves_the_unknown_one_settled_and_pays_once() {
    let (sim, fp, agent) = setup().await;
    warm_up(&sim, &agent).await;
    sim.drop_after_next_refund();
    sim.go_away_after_next_cut();
    let lost = created_id(&cli_refund(&agent, "7.00", &[]).await);
    wait_unknown(&agent, &lost).await;

    // Whichever reads the terminal first (the resolver, or the next payout's own Repeat Receipt
    // before its 06 31), the lost payout is settled as the terminal's last transaction then.
    sim.come_back();
    let next = created_id(&cli_refund(&agent, "2.00", &[]).await);
    let settled = agent.wait_state(&lost, "delivered").await;
    let paid = agent.wait_state(&next, "delivered").await;
    assert_eq!(terminal_record(&settled)["trace"], "000002");
    assert_eq!(terminal_record(&paid)["trace"], "000003");
    assert_eq!(refund_commands(&sim), 3, "one 06 31 per refund");
    assert_eq!(sim.refunds().len(), 3);
    assert_eq!(fp.refunds().len(), 3);
}
