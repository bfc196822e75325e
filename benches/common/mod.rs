//! What the agent benchmarks share: the release binary and a config for a card-gateway
//! stand-in.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use refund_agent::control::client::ControlClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_refund-agent");

/// Writes secrets and a config whose one destination is a card gateway at `url`, with the
/// given refund backoff (initial, max) and no return jitter (one agent alone has no herd to
/// spread; benches/fleet.rs sets it per run); returns the config path.
pub fn write_config(dir: &Path, url: &str, (initial, max): (&str, &str)) -> PathBuf {
    for (name, value) in [("seal.key", "cd".repeat(32)), ("gw.token", "t".to_string())] {
        let p = dir.join(name);
        std::fs::write(&p, value).expect("secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let text = format!(
        "[agent]\nterminal_id = \"bench\"\nstate_dir = \"{}\"\nseal_key_file = \"seal.key\"\n\
         [control]\nsocket = \"{}\"\n[sync]\nbackoff_initial = \"{initial}\"\nbackoff_max = \"{max}\"\nreturn_jitter = \"0s\"\n\
         [destinations.gateway]\nkind = \"gateway\"\nbase_url = \"{url}\"\ntoken_file = \"gw.token\"\nterminal_id = 24\n",
        dir.join("state").display(),
        dir.join("control.sock").display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Starts the release agent on `config` (state in `dir`) and waits until it answers.
pub async fn start_agent(dir: &Path, config: &Path) -> (tokio::process::Child, ControlClient) {
    let agent = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("agent");
    let client = ControlClient::new(&dir.join("control.sock"));
    while client.request("GET", "/healthz", None, &[]).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (agent, client)
}
