//! Prometheus metrics in the text exposition format: steps by module and outcome, a
//! step-latency histogram, and sandbox limit hits. Kept by hand: a handful of counters
//! does not need a metrics framework. A panic elsewhere while a lock is held leaves
//! whole counters behind, so a poisoned lock is taken over, never a reason to fail.
//!
//! A label holds only what the host resolved (a module that loaded, a catalogue error
//! name), never a caller's raw text, and the module labels are bounded: a flood of
//! junk `module_ref`s grew the page to 17 MB before. The page is the operator's
//! (`routes::ops::metrics` asks for the metrics token): it names every company's modules.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};

/// Distinct module labels kept; steps of further modules count under [`OTHER`].
pub const MAX_MODULE_LABELS: usize = 256;
/// The label of steps whose module did not resolve.
pub const UNRESOLVED: &str = "(unresolved)";
/// The label of steps of modules past [`MAX_MODULE_LABELS`].
pub const OTHER: &str = "(other)";

const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// The host's metrics.
#[derive(Default)]
pub struct Metrics {
    steps: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    limit_hits: Mutex<BTreeMap<String, u64>>,
    webhooks: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    deliveries: Mutex<BTreeMap<&'static str, u64>>,
    usage_alerts: Mutex<BTreeMap<&'static str, u64>>,
}

/// The provider labels of webhook counts (anything else counts as [`OTHER`]).
const WEBHOOK_PROVIDERS: &[&str] = &["slack", "quickbooks", "microsoft", "google"];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Record one finished step: the name of the module that ran (None when the
    /// `module_ref` did not resolve) and its outcome (`ok` or the error's name).
    pub fn step(&self, module: Option<&str>, outcome: &str, seconds: f64) {
        let mut lat = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let module = match module {
            None => UNRESOLVED,
            Some(m) if lat.contains_key(m) || lat.len() < MAX_MODULE_LABELS => m,
            Some(_) => OTHER,
        };
        *self
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((module.into(), outcome.into()))
            .or_default() += 1;
        let h = lat.entry(module.into()).or_insert_with(|| Histogram {
            counts: vec![0; BUCKETS.len()],
            ..Default::default()
        });
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
        if matches!(
            outcome,
            "deadline_exceeded" | "memory_limit_exceeded" | "output_too_large" | "limit_exceeded"
        ) {
            *self
                .limit_hits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(outcome.into())
                .or_default() += 1;
        }
    }

    /// Count one inbound webhook by provider and verdict (`accepted`, `duplicate`,
    /// `handshake`, `unrouted`, or the refusal: `unsigned`, `bad_signature`, ...).
    pub fn webhook(&self, provider: &str, verdict: &'static str) {
        let provider = WEBHOOK_PROVIDERS
            .iter()
            .find(|p| **p == provider)
            .copied()
            .unwrap_or(OTHER);
        *self
            .webhooks
            .lock()
            .expect("metrics lock")
            .entry((provider, verdict))
            .or_default() += 1;
    }

    /// Count one delivery attempt of an event to its company's endpoint by outcome
    /// (`delivered`, `failed` (retried later), `parked`, `no_endpoint`).
    pub fn delivery(&self, outcome: &'static str) {
        *self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
    }

    /// Count one token-usage alert by kind (`new_module`, `rate`, `idle`).
    pub fn usage_alert(&self, kind: &'static str) {
        *self
            .usage_alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP flow8_steps_total Flow steps run, by module and outcome.\n# TYPE flow8_steps_total counter\n");
        for ((m, o), n) in self
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "flow8_steps_total{{module=\"{}\",outcome=\"{}\"}} {n}",
                escape(m),
                escape(o)
            );
        }
        out.push_str("# HELP flow8_step_duration_seconds Step latency, by module.\n# TYPE flow8_step_duration_seconds histogram\n");
        for (m, h) in self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let m = escape(m);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "flow8_step_duration_seconds_bucket{{module=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "flow8_step_duration_seconds_bucket{{module=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "flow8_step_duration_seconds_sum{{module=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "flow8_step_duration_seconds_count{{module=\"{m}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP flow8_sandbox_limit_hits_total Steps stopped by a sandbox limit.\n# TYPE flow8_sandbox_limit_hits_total counter\n");
        for (l, n) in self
            .limit_hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "flow8_sandbox_limit_hits_total{{limit=\"{}\"}} {n}",
                escape(l)
            );
        }
        out.push_str("# HELP flow8_webhooks_total Inbound provider webhooks, by provider and verdict.\n# TYPE flow8_webhooks_total counter\n");
        for ((p, v), n) in self.webhooks.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "flow8_webhooks_total{{provider=\"{p}\",verdict=\"{v}\"}} {n}"
            );
        }
        out.push_str("# HELP flow8_event_deliveries_total Attempts to deliver events to companies' endpoints, by outcome.\n# TYPE flow8_event_deliveries_total counter\n");
        for (o, n) in self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(out, "flow8_event_deliveries_total{{outcome=\"{o}\"}} {n}");
        }
        out.push_str("# HELP flow8_usage_alerts_total Unusual uses of credentials, by kind.\n# TYPE flow8_usage_alerts_total counter\n");
        for (k, n) in self
            .usage_alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(out, "flow8_usage_alerts_total{{kind=\"{k}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_resolved_names_and_bounded() {
        let m = Metrics::default();
        for i in 0..10_000 {
            m.step(None, "module_not_found", 0.001);
            m.step(Some(&format!("module-{i}")), "ok", 0.001);
        }
        let text = m.render();
        assert!(
            text.contains(
                "flow8_steps_total{module=\"(unresolved)\",outcome=\"module_not_found\"} 10000"
            ),
            "{text}"
        );
        assert!(text.contains("module=\"module-0\""));
        assert!(text.contains("flow8_steps_total{module=\"(other)\",outcome=\"ok\"}"));
        assert!(!text.contains("module-9999"));
        // 256 modules, each with a histogram of 16 lines: tens of kilobytes, not megabytes.
        assert!(text.len() < 512 * 1024, "{}", text.len());
    }

    /// A panic while a metrics lock is held (a handler bug on another request) poisons
    /// it; later steps are still counted and the page still renders.
    #[test]
    fn a_panic_holding_a_lock_does_not_stop_the_metrics() {
        let m = std::sync::Arc::new(Metrics::default());
        m.step(Some("a"), "ok", 0.01);
        let held = m.clone();
        let panicked = std::thread::spawn(move || {
            let _steps = held.steps.lock();
            let _latency = held.latency.lock();
            panic!("a bug while counting");
        })
        .join();
        assert!(panicked.is_err() && m.steps.is_poisoned() && m.latency.is_poisoned());
        m.step(Some("a"), "ok", 0.01);
        let text = m.render();
        assert!(
            text.contains("flow8_steps_total{module=\"a\",outcome=\"ok\"} 2"),
            "{text}"
        );
    }
}
