//! Test harness: the real `refund-agent` binary against a real sandbox server on a loopback
//! port, with a real SQLite file in a temporary directory. Waiting is always on a condition
//! with a deadline, never a bare sleep.

#![allow(dead_code)]

pub mod pty;

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use refund_agent::control::client::ControlClient;
use refund_agent::queue::RefundView;
use tempfile::TempDir;
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_refund-agent");
pub const API_KEY: &str = "test-finalpos-key";
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The managers file every agent gets: `mgr_1` with PIN 4321 and `mgr_7` with PIN 9999, hashed
/// with low argon2id parameters (m=8, t=1, p=1) so tests stay fast, by the argon2 reference
/// implementation's command line: `echo -n 4321 | argon2 harnesssalt01 -id -t 1 -k 8 -p 1 -e`.
pub const MANAGERS: &str = "# test managers\n\
mgr_1 $argon2id$v=19$m=8,t=1,p=1$aGFybmVzc3NhbHQwMQ$Md1KZZj5CmkwrbZVKkqMLJfJZQtnjVI6eCA70O2BGfU\n\
mgr_7 $argon2id$v=19$m=8,t=1,p=1$aGFybmVzc3NhbHQwMg$KT6t/tBM9+Al9rLcOhKd0sFCllxorSUuDfMEA4uas6M\n";
pub const MANAGER: &str = "mgr_1";
pub const PIN: &str = "4321";

/// `mgr_1`'s approval as the API and the terminal take it.
pub fn approval() -> serde_json::Value {
    serde_json::json!({ "manager": MANAGER, "pin": PIN })
}

/// The example receipt of SPEC section 3.
pub const RECEIPT: &str = r#"{"receipt_id":"RCP-2025-001","transaction_id":"txn_123","order_id":"507f1f77bcf86cd799439013",
 "session_id":"507f1f77bcf86cd799439012","currency":"USD","total":"100.00","subtotal":"90.00","tax":"10.00",
 "discount":"0.00","payment_method":"credit_card","processor":"gateway","processor_payment_id":"882",
 "masked_pan":"530957******2257","captured_at":"2026-11-20T10:15:00Z",
 "items":[{"name":"Sweet Tea","quantity":2,"price":"5.00","total":"10.00","product_id":"p1","variant_id":"v1","sku":"SKU-001"},{"name":"Coffee Grinder","quantity":1,"price":"90.00","total":"90.00","product_id":"p2","variant_id":"v2","sku":"SKU-002"}]}"#;

/// Polls `check` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One agent installation: config, secrets, state dir, and (while started) the process.
pub struct Agent {
    pub dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Whether `start` points `limits.managers_file` at the harness's managers file.
    pub managers: bool,
}

impl Agent {
    /// Writes a config pointing Final POS at `url`; `extra` is appended to the TOML.
    pub fn new(url: &str, extra: &str) -> Agent {
        let dir = tempfile::Builder::new().prefix("ra-test-").tempdir().expect("temp dir");
        let socket = dir.path().join("control.sock");
        let text = format!(
            r#"
[agent]
terminal_id = "till-test"
state_dir = "{state}"
seal_key_file = "seal.key"

[control]
socket = "{socket}"

[sync]
request_timeout = "5s"
connect_timeout = "1s"
backoff_initial = "20ms"
backoff_max = "200ms"

[destinations.finalpos]
kind = "finalpos"
base_url = "{url}"
api_key_file = "finalpos.key"
{extra}
"#,
            state = dir.path().join("state").display(),
            socket = socket.display(),
        );
        let config = dir.path().join("config.toml");
        fs::write(&config, text).expect("write config");
        let agent = Agent { dir, config, socket, child: None, starts: 0, managers: true };
        agent.write_secret("seal.key", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        agent.write_secret("finalpos.key", API_KEY);
        agent.write_secret("managers", MANAGERS);
        agent
    }

    /// Writes a secret file next to the config, private as the agent requires.
    pub fn write_secret(&self, name: &str, value: &str) {
        let path = self.dir.path().join(name);
        fs::write(&path, value).expect("write secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    }

    /// Starts the agent with a backoff so long that, after a refund's first failed attempt,
    /// only the connectivity probe (once its destination is back) sends it again. Tests that
    /// change a refund between attempts use it so that no attempt is in flight meanwhile.
    pub async fn start_parked(&mut self) {
        self.start_with_env(&[
            ("REFUND_AGENT__SYNC__BACKOFF_INITIAL", "1000h"),
            ("REFUND_AGENT__SYNC__BACKOFF_MAX", "1000h"),
        ])
        .await
    }

    /// Waits until the refund's first delivery has failed once and is pending again.
    pub async fn wait_first_failure(&self, id: &str) -> RefundView {
        eventually("the first attempt to fail", DEADLINE, || async {
            self.refund(id)
                .await
                .filter(|r| r.deliveries[0].attempts == 1 && r.deliveries[0].state == "pending")
        })
        .await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state").join("queue.db")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts `refund-agent run` and waits until `/healthz` answers.
    pub async fn start(&mut self) {
        self.start_with_env(&[]).await
    }

    pub async fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "debug");
        if self.managers {
            cmd.env("REFUND_AGENT__LIMITS__MANAGERS_FILE", "managers");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.kill_on_drop(true).spawn().expect("spawn agent");
        self.child = Some(child);
        self.starts += 1;
        let client = self.client();
        let logs = self.log_path();
        let child = self.child.as_mut().expect("just set");
        eventually("the agent to answer /healthz", DEADLINE, || {
            let client = client.clone();
            let exited = child.try_wait().ok().flatten();
            let logs = logs.clone();
            async move {
                if let Some(status) = exited {
                    panic!(
                        "agent exited early with {status}: {}",
                        fs::read_to_string(logs).unwrap_or_default()
                    );
                }
                let a = client.request("GET", "/healthz", None, &[]).await.ok()?;
                (a.status == 200).then_some(())
            }
        })
        .await;
    }

    /// `kill -9`: no chance to clean up.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("reap");
        }
    }

    /// Waits for the agent to end by itself (a test hook killed it).
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        tokio::time::timeout(DEADLINE, child.wait()).await.expect("agent ends").expect("reap")
    }

    /// The running agent's process id, to send it a signal of the test's choosing.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let pid = child.id().expect("pid") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("agent stops within the deadline")
            .expect("reap")
    }

    pub fn client(&self) -> ControlClient {
        ControlClient::new(&self.socket)
    }

    /// Runs the CLI against this agent.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().await.expect("run CLI")
    }

    /// The binary with this agent's config (and its managers file, as `start` gives it).
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config);
        if self.managers {
            cmd.env("REFUND_AGENT__LIMITS__MANAGERS_FILE", "managers");
        }
        cmd
    }

    /// Runs the CLI with `stdin` on its standard input (a manager's PIN).
    pub async fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run CLI");
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(stdin.as_bytes()).await.expect("write stdin");
        drop(input);
        child.wait_with_output().await.expect("CLI output")
    }

    /// The CLI as `mgr_1`: `args` followed by `--manager mgr_1`, the PIN on stdin.
    pub async fn cli_manager(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--manager", MANAGER]);
        self.cli_stdin(&all, &format!("{PIN}\n")).await
    }

    pub async fn add_receipt(&self, json: &str) {
        let a = self
            .client()
            .request("POST", "/v1/receipts", Some(json.as_bytes().to_vec()), &[])
            .await
            .expect("receipt");
        assert!(a.status == 201 || a.status == 200, "receipt refused: {}", String::from_utf8_lossy(&a.body));
    }

    /// A POST over the socket with `headers`: the status and the JSON answer (`null` if none).
    pub async fn post_json(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let a =
            self.client().request("POST", path, Some(body.to_vec()), headers).await.expect("agent answers");
        (a.status, serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null))
    }

    pub async fn refund(&self, id: &str) -> Option<RefundView> {
        let a = self.client().request("GET", &format!("/v1/refunds/{id}"), None, &[]).await.ok()?;
        (a.status == 200).then(|| serde_json::from_slice(&a.body).expect("refund JSON"))
    }

    pub async fn list(&self) -> Vec<RefundView> {
        let a = self.client().request("GET", "/v1/refunds?limit=10000", None, &[]).await.expect("list");
        serde_json::from_slice(&a.body).expect("list JSON")
    }

    /// Waits until the refund's state is `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> RefundView {
        eventually(&format!("refund {id} to be {state}"), DEADLINE, || async {
            self.refund(id).await.filter(|r| r.state == state)
        })
        .await
    }

    /// `refunds show ID --json`, as a technician would read it.
    pub async fn show(&self, id: &str) -> RefundView {
        let out = self.cli(&["refunds", "show", id, "--json"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("refund JSON")
    }

    /// Waits for `state`, then returns the only delivery's `last_error` as `refunds show` prints
    /// it.
    pub async fn ends(&self, id: &str, state: &str) -> String {
        self.wait_state(id, state).await;
        let shown = self.show(id).await;
        assert_eq!(shown.deliveries[0].state, state, "{shown:?}");
        shown.deliveries[0].last_error.clone().unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A decimal from a literal in a test.
pub fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().expect("decimal")
}

/// `refund create` through the CLI; returns the output.
/// An agent whose every refund goes to the card gateway at `url` only, with Bearer `token`;
/// `limits` is the body of its `[limits]` section (may be empty).
pub fn gateway_agent(url: &str, token: &str, limits: &str) -> Agent {
    let extra = format!(
        r#"
[destinations.gateway]
kind = "gateway"
base_url = "{url}"
token_file = "gateway.token"
terminal_id = 24

[[routes]]
processor = "*"
destinations = ["gateway"]

[limits]
{limits}
"#
    );
    let agent = Agent::new(url, &extra);
    agent.write_secret("gateway.token", token);
    agent
}

/// An agent whose every refund goes to the card gateway at `gateway_url` (bearer `token`) and
/// then to Final POS at `finalpos_url`.
pub fn gateway_then_finalpos(gateway_url: &str, finalpos_url: &str, token: &str) -> Agent {
    let extra = format!(
        "[destinations.gateway]\nkind = \"gateway\"\nbase_url = \"{gateway_url}\"\ntoken_file = \"gateway.token\"\nterminal_id = 24\n\n\
         [[routes]]\nprocessor = \"*\"\ndestinations = [\"gateway\", \"finalpos\"]\n"
    );
    let agent = Agent::new(finalpos_url, &extra);
    agent.write_secret("gateway.token", token);
    agent
}

/// A 5.00 refund on a paper receipt the ledger does not know (`RCP-PAPER-ONLY`), approved by
/// manager mgr_7 (PIN on stdin); the agent must allow unlinked refunds.
pub async fn cli_unlinked_refund(agent: &Agent) -> Output {
    let args = [
        "refund",
        "create",
        "--receipt",
        "RCP-PAPER-ONLY",
        "--amount",
        "5.00",
        "--reason",
        "Receipt from the old till",
        "--operator",
        "emp_42",
        "--manager",
        "mgr_7",
        "--json",
    ];
    agent.cli_stdin(&args, "9999\n").await
}

pub async fn cli_refund(agent: &Agent, amount: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "refund",
        "create",
        "--receipt",
        "RCP-2025-001",
        "--amount",
        amount,
        "--reason",
        "Customer returned item",
        "--operator",
        "emp_42",
        "--json",
    ];
    args.extend_from_slice(extra);
    agent.cli(&args).await
}

/// The refund id in a successful `--json` create.
pub fn created_id(out: &Output) -> String {
    assert!(
        out.status.success(),
        "create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: RefundView = serde_json::from_slice(&out.stdout).expect("refund JSON on stdout");
    v.id
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
