//! `refund-agent terminal decode` with the real binary: a ZVT serial capture from a file and a
//! ZVT TCP capture on stdin, each decoded to JSON lines with the card reduced to BIN + last 4.

use std::io::Write;
use std::process::{Command, Stdio};

use refund_agent::terminal::codec::zvt::encode_frame;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_refund-agent");

/// A Status-Information with a full test PAN (BMP 22) and its track 2 (BMP 23), then a completion.
fn status_with_card() -> Vec<u8> {
    let mut apdu = vec![0x04, 0x0F, 0x00, 0x27, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00];
    apdu.extend_from_slice(&[0x22, 0xF0, 0xF8, 0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]);
    apdu.extend_from_slice(&[
        0x23, 0xF1, 0xF2, 0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0xD2, 0x51, 0x22, 0x01,
    ]);
    apdu[2] = u8::try_from(apdu.len() - 3).expect("short APDU");
    apdu
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn check_card_output(out: &[Value], stdout: &[u8]) {
    let text = String::from_utf8_lossy(stdout);
    assert!(!text.contains("4111111111111111"), "full PAN in output: {text}");
    assert_eq!(out[0]["command"], "status_information");
    assert_eq!(out[0]["fields"][1]["value"], serde_json::json!({"minor_units": 500}));
    for field in [2, 3] {
        assert_eq!(out[0]["fields"][field]["value"]["masked"], "411111******1111");
    }
}

#[test]
fn serial_capture_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.bin");
    let mut capture = encode_frame(&status_with_card());
    capture.push(0x06);
    capture.extend(encode_frame(&[0x06, 0x0F, 0x00]));
    std::fs::write(&path, &capture).expect("write capture");
    let output =
        Command::new(BIN).args(["terminal", "decode", "--framing", "zvt"]).arg(&path).output().expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = lines(&output.stdout);
    check_card_output(&out, &output.stdout);
    assert_eq!(out[1], serde_json::json!({"link": "ack"}));
    assert_eq!(out[2]["command"], "completion");
    assert_eq!(out.len(), 3);
}

#[test]
fn tcp_capture_on_stdin() {
    let mut child = Command::new(BIN)
        .args(["terminal", "decode", "--framing", "zvt-apdu", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut capture = status_with_card();
    capture.extend_from_slice(&[0x80, 0x00, 0x00]);
    child.stdin.take().expect("stdin").write_all(&capture).expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = lines(&output.stdout);
    check_card_output(&out, &output.stdout);
    assert_eq!(out[1]["command"], "ack");
}

#[test]
fn unknown_framing_and_missing_file_are_usage_errors() {
    let bad =
        Command::new(BIN).args(["terminal", "decode", "--framing", "zvt_apdu", "-"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let missing = Command::new(BIN)
        .args(["terminal", "decode", "--framing", "lines", "/nonexistent/capture"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
}
