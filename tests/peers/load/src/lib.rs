//! What every flow8 benchmark measures with, shared by `tests/benches/step.rs` and the
//! peer benchmarks in `tests/peers/` (which cannot link flow8's host: Extism brings its
//! own wasmtime). One load shape, one CPU clock, one row format, so that rows printed by
//! two binaries in one `just bench-peers` run compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The median and 99th percentile of some samples.
pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
}

/// [`Stats`] of `samples` (at least one).
pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

/// Run `f` `iterations` times one after another (after a tenth as many to warm up).
pub async fn measure<F, Fut>(iterations: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 + 1 {
        f().await;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

/// A duration as the tables print it: `12.3 µs`.
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// One load phase: wall time, each request's latency, and the CPU time the whole
/// process (client, host, upstream server) spent meanwhile.
pub struct Load {
    pub total: Duration,
    pub latencies: Vec<Duration>,
    pub cpu: Duration,
}

impl Load {
    /// Print this run of `count` operations as a table row (`| label | per second |
    /// p50 | p99 | CPU per operation |`); its rate and latency statistics.
    pub fn print_row(&self, label: &str, count: usize) -> (f64, Stats) {
        let rate = count as f64 / self.total.as_secs_f64();
        let st = stats(self.latencies.clone());
        println!(
            "| {label} | {rate:.0} | {} | {} | {:.0} µs |",
            us(st.median),
            us(st.p99),
            self.cpu_per_operation_us(count)
        );
        (rate, st)
    }

    /// CPU per operation in microseconds.
    pub fn cpu_per_operation_us(&self, count: usize) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / count.max(1) as f64
    }

    /// Print this run as one line a peer summary reads back ([`PeerRow::parse`]).
    pub fn print_peer_row(&self, section: &str, label: &str, count: usize) {
        let st = stats(self.latencies.clone());
        let row = PeerRow {
            section: section.to_string(),
            label: label.to_string(),
            per_second: count as f64 / self.total.as_secs_f64(),
            p50_us: st.median.as_secs_f64() * 1e6,
            p99_us: st.p99.as_secs_f64() * 1e6,
            cpu_us: self.cpu_per_operation_us(count),
        };
        println!("{}", row.line());
    }
}

/// One measured path of a peer comparison, as one line of text between binaries:
/// `PEER|section|label|per second|p50 µs|p99 µs|CPU µs per operation`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub section: String,
    pub label: String,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
}

impl PeerRow {
    const PREFIX: &'static str = "PEER|";

    /// The row as one line.
    pub fn line(&self) -> String {
        format!(
            "{}{}|{}|{:.1}|{:.1}|{:.1}|{:.1}",
            Self::PREFIX,
            self.section,
            self.label,
            self.per_second,
            self.p50_us,
            self.p99_us,
            self.cpu_us
        )
    }

    /// A row from a line [`PeerRow::line`] printed; `None` for any other line.
    pub fn parse(line: &str) -> Option<PeerRow> {
        let mut fields = line.strip_prefix(Self::PREFIX)?.split('|');
        let mut text = || fields.next().map(str::to_string);
        let (section, label) = (text()?, text()?);
        let mut number = || text()?.parse::<f64>().ok();
        let row = PeerRow {
            section,
            label,
            per_second: number()?,
            p50_us: number()?,
            p99_us: number()?,
            cpu_us: number()?,
        };
        Some(row)
    }
}

/// CPU time (user + system) this process has used, all threads, from /proc. CPU per
/// request is steadier than requests per second on a shared machine.
pub fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Run `f` `requests` times from `concurrency` tasks: wall time, latencies, and this
/// process's CPU over the run.
pub async fn run_load<F, Fut>(requests: usize, concurrency: usize, f: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                f().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load task panicked"));
    }
    Load {
        total: start.elapsed(),
        latencies: all,
        cpu: process_cpu_time().saturating_sub(cpu_before),
    }
}

/// The upstream every HTTP path of a peer comparison calls: a loopback server answering
/// `GET /ping` with [`PING_BODY`] as JSON, the same in every binary. Answers the base URL
/// (`http://127.0.0.1:port`); the server runs until the process ends.
pub async fn start_ping_server() -> String {
    let app = axum::Router::new().route(
        "/ping",
        axum::routing::get(|| async { ([("content-type", "application/json")], PING_BODY) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A boxed future, as the load functions below make them.
pub type LoadFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A load function for [`run_load`]: `GET url`, checked to succeed, body read.
pub fn get_ok(
    client: reqwest::Client,
    url: String,
) -> impl Fn() -> LoadFuture + Clone + Send + 'static {
    move || {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            let r = client.get(&url).send().await.expect("the server answers");
            assert!(r.status().is_success(), "GET {url}: {}", r.status());
            r.bytes().await.expect("an answer body");
        })
    }
}

/// A load function for [`run_load`]: `POST body` (JSON) to `url`, with `token` as a
/// bearer token when given, checked to succeed and, with `expect`, to answer a body
/// holding that text (the upstream's answer made it through).
pub fn post_ok(
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    body: String,
    expect: Option<&'static str>,
) -> impl Fn() -> LoadFuture + Clone + Send + 'static {
    move || {
        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
        Box::pin(async move {
            let mut request = client.post(&url).header("content-type", "application/json");
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let r = request.body(body).send().await.expect("the server answers");
            let status = r.status();
            let answer = r.bytes().await.expect("an answer body");
            assert!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&answer)
            );
            if let Some(text) = expect {
                assert!(
                    answer.windows(text.len()).any(|w| w == text.as_bytes()),
                    "`{text}` is not in the answer: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        })
    }
}

/// The step body every HTTP path of a peer comparison sends: flow8's `POST
/// /api/v1/steps` body for an http-request GET of the upstream's `/ping`.
pub fn ping_step_body() -> String {
    r#"{"name":"bench","module_ref":"http-request","input_mapping":{"url":"/ping"},"bindings":{"request":"api"}}"#.to_string()
}

/// What [`start_ping_server`] answers.
pub const PING_BODY: &str = r#"{"method":"GET","path":"/ping","pong":true}"#;

/// A peer summary: the median of each (section, label) over every round, in first-seen
/// order, from rows gathered from any number of runs.
pub fn median_rows(rows: &[PeerRow]) -> Vec<PeerRow> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for row in rows {
        let key = (row.section.clone(), row.label.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(section, label)| {
            let same: Vec<&PeerRow> = rows
                .iter()
                .filter(|r| r.section == section && r.label == label)
                .collect();
            let median = |f: fn(&PeerRow) -> f64| {
                let mut values: Vec<f64> = same.iter().map(|r| f(r)).collect();
                values.sort_by(f64::total_cmp);
                let mid = values.len() / 2;
                if values.len() % 2 == 1 {
                    values[mid]
                } else {
                    (values[mid - 1] + values[mid]) / 2.0
                }
            };
            PeerRow {
                per_second: median(|r| r.per_second),
                p50_us: median(|r| r.p50_us),
                p99_us: median(|r| r.p99_us),
                cpu_us: median(|r| r.cpu_us),
                section,
                label,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, cpu: f64) -> PeerRow {
        PeerRow {
            section: "http".into(),
            label: label.into(),
            per_second: 1000.0,
            p50_us: 10.0,
            p99_us: 20.0,
            cpu_us: cpu,
        }
    }

    #[test]
    fn a_row_reads_back_as_printed_and_other_lines_are_not_rows() {
        let r = row("Extism, fresh plugin per call", 1220.5);
        assert_eq!(PeerRow::parse(&r.line()), Some(r));
        assert_eq!(PeerRow::parse("| native | 1 | 2 |"), None);
        assert_eq!(PeerRow::parse("PEER|http|short|1.0"), None);
    }

    #[test]
    fn the_summary_takes_each_paths_median_over_rounds_in_first_seen_order() {
        let rows = [
            row("b", 300.0),
            row("a", 10.0),
            row("b", 100.0),
            row("a", 30.0),
            row("b", 200.0),
        ];
        let summary = median_rows(&rows);
        let got: Vec<(&str, f64)> = summary
            .iter()
            .map(|r| (r.label.as_str(), r.cpu_us))
            .collect();
        assert_eq!(got, [("b", 200.0), ("a", 20.0)]);
    }
}
