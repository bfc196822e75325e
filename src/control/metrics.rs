//! `GET /metrics`: the figures of `GET /v1/status` in the Prometheus text exposition format
//! (version 0.0.4), so a node exporter or a Prometheus agent on the kiosk can scrape them.
//!
//! Rendering is a pure function of a [`StatusBody`] and the retry count, so the format is
//! unit-tested without a queue or a socket. Everything is a gauge: apart from the queue's failed
//! writes since start, the agent keeps no counters of its own, it reports what the queue holds
//! right now.

use std::fmt::Write as _;

use super::api::StatusBody;
use crate::sync::Connectivity;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the metrics. `retries` is the number of delivery attempts beyond the first over the
/// deliveries the queue still holds (`None` when it could not be read; the metric is then left
/// out rather than reported as zero).
pub fn render(status: &StatusBody, retries: Option<u64>) -> String {
    let mut out = Out::default();
    let q = &status.queue;

    out.header("refund_agent_refunds", "Refunds in the queue, by state.");
    for (state, n) in &q.refunds {
        out.sample("refund_agent_refunds", &[("state", state)], *n as f64);
    }

    out.header("refund_agent_quarantined", "Refunds quarantined because their seal did not verify.");
    out.sample("refund_agent_quarantined", &[], q.quarantined as f64);

    // Absent when nothing is pending: a zero would read as "a refund just arrived".
    if let Some(age) = q.oldest_pending_age_s {
        out.header(
            "refund_agent_oldest_pending_age_seconds",
            "Age of the oldest refund still waiting for delivery.",
        );
        out.sample("refund_agent_oldest_pending_age_seconds", &[], age as f64);
    }

    out.header(
        "refund_agent_pending_amount",
        "Undelivered amount per currency, in major units. A float for graphs only; the exact \
         decimal is in GET /v1/status.",
    );
    for (currency, amount) in &q.pending_amount {
        // The queue wrote this string from a Decimal, so it always parses; NaN would be visible.
        let value = amount.parse::<f64>().unwrap_or(f64::NAN);
        out.sample("refund_agent_pending_amount", &[("currency", currency)], value);
    }

    out.header("refund_agent_deliveries", "Deliveries by destination and state.");
    for (destination, states) in &q.deliveries {
        for (state, n) in states {
            out.sample(
                "refund_agent_deliveries",
                &[("destination", destination), ("state", state)],
                *n as f64,
            );
        }
    }

    if let Some(retries) = retries {
        out.header(
            "refund_agent_delivery_retries",
            "Delivery attempts beyond the first, summed over the deliveries the queue holds.",
        );
        out.sample("refund_agent_delivery_retries", &[], retries as f64);
    }

    // Sorted so the output is stable between scrapes (the map is a HashMap).
    let mut destinations: Vec<_> = status.destinations.iter().collect();
    destinations.sort_by(|a, b| a.0.cmp(b.0));
    out.header(
        "refund_agent_destination_up",
        "1 when the destination's last request got an answer, 0 when it failed or none was made yet.",
    );
    for (name, health) in &destinations {
        let up = if health.connectivity == Connectivity::Reachable { 1.0 } else { 0.0 };
        out.sample("refund_agent_destination_up", &[("destination", name)], up);
    }
    // With `destination_up`, tells a destination that keeps failing from one not asked yet.
    out.header(
        "refund_agent_destination_consecutive_failures",
        "Requests to the destination that failed in a row since its last answer.",
    );
    for (name, health) in &destinations {
        out.sample(
            "refund_agent_destination_consecutive_failures",
            &[("destination", name)],
            health.consecutive_failures as f64,
        );
    }
    out.header(
        "refund_agent_destination_clock_offset_seconds",
        "The destination's clock minus the agent's, from its Date headers (only once measured).",
    );
    for (name, health) in &destinations {
        if let Some(ms) = health.clock_offset_ms {
            out.sample(
                "refund_agent_destination_clock_offset_seconds",
                &[("destination", name)],
                ms as f64 / 1000.0,
            );
        }
    }

    if let Some(terminal) = &status.terminal {
        out.header(
            "refund_agent_terminal_connected",
            "1 when the terminal's link is up: the serial port open, or the ZVT terminal registered.",
        );
        let up = if terminal.connected { 1.0 } else { 0.0 };
        out.sample("refund_agent_terminal_connected", &[("device", &terminal.device)], up);
    }

    out.header(
        "refund_agent_storage_failing",
        "1 while the queue cannot store anything (a full disk): new refunds are refused.",
    );
    out.sample("refund_agent_storage_failing", &[], if q.storage.failing { 1.0 } else { 0.0 });
    out.header(
        "refund_agent_storage_write_failures",
        "Queue transactions that could not be stored since the agent started.",
    );
    out.sample("refund_agent_storage_write_failures", &[], q.storage.write_failures as f64);

    out.header(
        "refund_agent_audit_chain_broken",
        "1 when a row of the audit log was deleted, edited, moved or added outside the agent.",
    );
    out.sample("refund_agent_audit_chain_broken", &[], if q.audit.broken { 1.0 } else { 0.0 });
    out.header(
        "refund_agent_queue_file_damaged",
        "1 when the queue file failed its integrity check after start: nothing is sent until it is restored.",
    );
    out.sample("refund_agent_queue_file_damaged", &[], if q.file.damaged { 1.0 } else { 0.0 });

    out.header("refund_agent_uptime_seconds", "Seconds since the agent started.");
    out.sample("refund_agent_uptime_seconds", &[], status.uptime_s as f64);
    // A restart (systemd's watchdog or `Restart=`) shows as a change of this value, which
    // Prometheus' `changes()` counts.
    out.header("refund_agent_start_time_seconds", "When the agent started, in seconds since the Unix epoch.");
    out.sample("refund_agent_start_time_seconds", &[], status.started_at_s as f64);
    out.header("refund_agent_build_info", "Always 1; the agent's version is in its label.");
    out.sample("refund_agent_build_info", &[("version", &status.version)], 1.0);
    out.text
}

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn header(&mut self, name: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} gauge");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// Prometheus spells the special values `NaN`, `+Inf` and `-Inf`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Label values escape backslash, double quote and newline (destination names come from the
/// config and device paths from the filesystem, so neither is trusted to be tame).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::control::api::DestinationHealthBody;
    use crate::queue::QueueStatus;

    fn status() -> StatusBody {
        let mut queue =
            QueueStatus { quarantined: 1, oldest_pending_age_s: Some(42), ..QueueStatus::default() };
        queue.refunds.insert("queued".into(), 2);
        queue.refunds.insert("delivered".into(), 5);
        queue.pending_amount.insert("USD".into(), "12.50".into());
        let mut fp = BTreeMap::new();
        fp.insert("delivered".to_string(), 5);
        fp.insert("pending".to_string(), 2);
        queue.deliveries.insert("finalpos".into(), fp);
        let mut destinations = HashMap::new();
        destinations.insert(
            "finalpos".to_string(),
            DestinationHealthBody {
                connectivity: Connectivity::Reachable,
                last_success_at: None,
                last_error: None,
                consecutive_failures: 0,
                clock_offset_ms: Some(-1500),
            },
        );
        destinations.insert(
            "gate\"way".to_string(),
            DestinationHealthBody {
                connectivity: Connectivity::Unknown,
                last_success_at: None,
                last_error: None,
                consecutive_failures: 0,
                clock_offset_ms: None,
            },
        );
        StatusBody {
            version: "0.1.0".into(),
            terminal_id: "till-01".into(),
            uptime_s: 7,
            started_at_s: 1_796_000_000,
            queue,
            destinations,
            terminal: None,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_every_queue_figure() {
        let text = render(&status(), Some(3));
        let samples = lines(&text);
        for want in [
            "refund_agent_refunds{state=\"queued\"} 2",
            "refund_agent_refunds{state=\"delivered\"} 5",
            "refund_agent_quarantined 1",
            "refund_agent_oldest_pending_age_seconds 42",
            "refund_agent_pending_amount{currency=\"USD\"} 12.5",
            "refund_agent_deliveries{destination=\"finalpos\",state=\"pending\"} 2",
            "refund_agent_delivery_retries 3",
            "refund_agent_destination_up{destination=\"finalpos\"} 1",
            "refund_agent_destination_up{destination=\"gate\\\"way\"} 0",
            "refund_agent_destination_clock_offset_seconds{destination=\"finalpos\"} -1.5",
            "refund_agent_storage_failing 0",
            "refund_agent_storage_write_failures 0",
            "refund_agent_audit_chain_broken 0",
            "refund_agent_queue_file_damaged 0",
            "refund_agent_uptime_seconds 7",
            "refund_agent_start_time_seconds 1796000000",
            "refund_agent_build_info{version=\"0.1.0\"} 1",
            "refund_agent_destination_consecutive_failures{destination=\"finalpos\"} 0",
        ] {
            assert!(samples.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("terminal_connected"), "no terminal configured");
        assert!(!text.contains("clock_offset_seconds{destination=\"gate"), "unmeasured offset left out");
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let text = render(&status(), Some(0));
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
                typed.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(typed.last().map(String::as_str), Some(name), "sample before its TYPE: {line}");
            }
        }
    }

    #[test]
    fn a_broken_audit_chain_is_an_alarm() {
        let mut s = status();
        s.queue.audit.broken = true;
        assert!(lines(&render(&s, None)).contains(&"refund_agent_audit_chain_broken 1"));
    }

    #[test]
    fn a_damaged_queue_file_is_an_alarm() {
        let mut s = status();
        s.queue.file.damaged = true;
        assert!(lines(&render(&s, None)).contains(&"refund_agent_queue_file_damaged 1"));
    }

    #[test]
    fn optional_figures_are_left_out_not_zeroed() {
        let mut s = status();
        s.queue.oldest_pending_age_s = None;
        let text = render(&s, None);
        assert!(!text.contains("oldest_pending_age"));
        assert!(!text.contains("delivery_retries"));
    }

    #[test]
    fn terminal_link_is_reported_when_configured() {
        let mut s = status();
        s.terminal = Some(crate::terminal::device::TerminalStatus {
            device: "/dev/ttyUSB0".into(),
            connected: true,
            ..Default::default()
        });
        let text = render(&s, None);
        assert!(
            lines(&text).contains(&"refund_agent_terminal_connected{device=\"/dev/ttyUSB0\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn special_values_and_labels_are_escaped() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    /// The shipped alerting rules and dashboard (monitoring/) name only metrics the agent
    /// renders: a renamed metric would otherwise silence an alert without a word.
    #[test]
    fn the_shipped_rules_and_dashboard_use_only_rendered_metrics() {
        let mut s = status();
        s.terminal = Some(crate::terminal::device::TerminalStatus {
            device: "/dev/ttyUSB0".into(),
            ..Default::default()
        });
        let text = render(&s, Some(1));
        let rendered: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let dashboard = include_str!("../../monitoring/grafana-dashboard.json");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10), "the dashboard has its panels");
        for (file, source) in [
            ("monitoring/alerts.yml", include_str!("../../monitoring/alerts.yml")),
            ("monitoring/grafana-dashboard.json", dashboard),
        ] {
            let mut used = 0;
            for (at, _) in source.match_indices("refund_agent_") {
                let name: String = source[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                assert!(
                    rendered.contains(name.as_str()),
                    "{file} uses {name}, which the agent does not render"
                );
                used += 1;
            }
            assert!(used > 5, "{file} names only {used} metrics");
        }
    }
}
