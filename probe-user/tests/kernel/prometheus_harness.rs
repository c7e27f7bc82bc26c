//! Self-test of the Prometheus harness (`common::prometheus`, `common::http`) against a tiny
//! exporter of our own: a real Prometheus scrapes it, PromQL sees the value the test set, and
//! promtool accepts or rejects exposition texts. No root and no `KERNEL` lock needed.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::common::{
    http::{self, parse_response, url_encode},
    prometheus::{prometheus_available, promtool_check_metrics, PromServer, JOB},
};

/// A one-counter exporter on 127.0.0.1:0, one std thread, one request per connection.
/// Routes: `/metrics` (Content-Length), `/chunked` (same text, chunked), else 404.
struct DemoExporter {
    addr: SocketAddr,
    value: Arc<AtomicU64>,
    /// `GET /metrics` requests answered: Prometheus cannot have scraped more often.
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn exposition(value: u64) -> String {
    format!(
        "# HELP demo_total Things the demo exporter counted.\n\
         # TYPE demo_total counter\n\
         demo_total{{path=\"/x\"}} {value}\n"
    )
}

impl DemoExporter {
    fn start(value: u64) -> DemoExporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind demo exporter");
        let addr = listener.local_addr().expect("addr");
        let value = Arc::new(AtomicU64::new(value));
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (value, served, stop) = (value.clone(), served.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        serve(conn, &value, &served);
                    }
                }
            })
        };
        DemoExporter {
            addr,
            value,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, v: u64) {
        self.value.store(v, Ordering::SeqCst);
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for DemoExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, value: &AtomicU64, served: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    let text = exposition(value.load(Ordering::SeqCst));
    let ctype = "Content-Type: text/plain; version=0.0.4; charset=utf-8";
    let response = match path {
        "/metrics" => {
            served.fetch_add(1, Ordering::SeqCst);
            format!(
                "HTTP/1.1 200 OK\r\n{ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n\
                 {text}",
                text.len()
            )
        }
        "/chunked" => {
            // Three chunks, one with an extension, then a trailer.
            let (a, rest) = text.split_at(10);
            let (b, c) = rest.split_at(rest.len() / 2);
            format!(
                "HTTP/1.1 200 OK\r\n{ctype}\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n{:x}\r\n{a}\r\n{:X};ext=1\r\n{b}\r\n{:x}\r\n{c}\r\n\
                 0\r\nX-Trailer: t\r\n\r\n",
                a.len(),
                b.len(),
                c.len()
            )
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
            .to_owned(),
    };
    let _ = conn.write_all(response.as_bytes());
}

#[test]
fn prometheus_scrapes_a_counter_that_changes_between_scrapes() {
    if !prometheus_available("prometheus_scrapes_a_counter") {
        return;
    }
    let exporter = DemoExporter::start(3);
    let prom = PromServer::start(exporter.addr, 500);
    eprintln!(
        "== prometheus start-up: {:.0} ms",
        prom.startup.as_secs_f64() * 1000.0
    );
    assert_eq!(
        http::get(prom.addr(), "/-/healthy")
            .expect("GET /-/healthy")
            .status,
        200
    );

    prom.wait_for_scrapes(1);
    let first = prom.query("demo_total");
    assert_eq!(first.len(), 1, "{first:?}");
    let (labels, v) = &first[0];
    assert_eq!(*v, 3.0);
    assert_eq!(labels["__name__"], "demo_total");
    assert_eq!(labels["job"], JOB);
    assert_eq!(labels["instance"], exporter.addr.to_string());
    assert_eq!(labels["path"], "/x");
    assert_eq!(
        prom.query_scalar(&format!("up{{job=\"{JOB}\"}}")),
        Some(1.0)
    );

    let changed = Instant::now();
    exporter.set(7);
    // Two: the first may have started before the change.
    prom.wait_for_scrapes(2);
    assert_eq!(prom.query_scalar("demo_total"), Some(7.0));
    eprintln!(
        "== value 7 visible to PromQL {:.0} ms after the change",
        changed.elapsed().as_secs_f64() * 1000.0
    );
    // The counter went 3 → 7 with no reset: PromQL's own view of the change.
    let delta = prom.wait_until(
        "max_over_time(demo_total[1h]) - min_over_time(demo_total[1h])",
        |d| d >= 4.0,
        Duration::from_secs(10),
    );
    assert_eq!(delta, 4.0);
    // A scalar result comes back as one unlabelled entry.
    let scalar = prom.query("scalar(demo_total) * 2");
    assert_eq!(scalar.len(), 1);
    assert!(scalar[0].0.is_empty());
    assert_eq!(scalar[0].1, 14.0);

    // Oracle: Prometheus recorded no more scrapes than the exporter answered.
    let recorded = prom
        .query_scalar(&format!("count_over_time(up{{job=\"{JOB}\"}}[1h])"))
        .unwrap_or(0.0) as u64;
    let served = exporter.served();
    eprintln!("== scrapes: prometheus recorded {recorded}, exporter served {served}");
    assert!(recorded >= 3, "recorded {recorded}");
    assert!(recorded <= served, "recorded {recorded} > served {served}");

    // A bad query fails with Prometheus's own error.
    let err = prom.try_query("demo_total{").expect_err("bad query");
    assert!(
        err.contains("HTTP 400") && err.contains("bad_data"),
        "{err}"
    );
    eprintln!("== bad query: {err}");
    // Special values parse.
    let inf = prom.query("demo_total / 0");
    assert!(inf[0].1.is_infinite() && inf[0].1 > 0.0, "{inf:?}");
}

#[test]
fn prometheus_promtool_accepts_valid_text_and_reports_lint_problems() {
    if !prometheus_available("prometheus_promtool") {
        return;
    }
    let exporter = DemoExporter::start(5);
    let served = http::get(exporter.addr, "/metrics").expect("GET /metrics");
    assert_eq!(promtool_check_metrics(&served.text()), Ok(()));

    // What promtool 2.42 reports (exit status 3, on stderr).
    let no_total = "# HELP demo Things.\n# TYPE demo counter\ndemo 3\n";
    let err = promtool_check_metrics(no_total).expect_err("counter without _total");
    assert!(
        err.contains("demo counter metrics should have \"_total\" suffix"),
        "{err}"
    );

    let no_help = "# TYPE demo_total counter\ndemo_total 3\n";
    let err = promtool_check_metrics(no_help).expect_err("metric without HELP");
    assert!(err.contains("demo_total no help text"), "{err}");

    // Not the text format at all (exit status 1).
    let err = promtool_check_metrics("demo_total{ 3\n").expect_err("parse error");
    assert!(err.contains("error while linting"), "{err}");
}

#[test]
fn prometheus_http_client_reads_length_and_chunked_bodies() {
    let exporter = DemoExporter::start(11);
    let want = exposition(11);

    let plain = http::get(exporter.addr, "/metrics").expect("GET /metrics");
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("Content-Length"),
        Some(&*want.len().to_string())
    );
    assert!(plain
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    assert_eq!(plain.text(), want);

    let chunked = http::get(exporter.addr, "/chunked").expect("GET /chunked");
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.text(), want);

    let missing = http::get(exporter.addr, "/readyz").expect("GET /readyz");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "not found\n");
    assert_eq!(exporter.served(), 1, "only /metrics counts");

    // Malformed answers are errors, not panics or silent truncation.
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err()
    );
    assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    assert!(http::get(closed, "/metrics").is_err());

    assert_eq!(
        url_encode("sum(rate(up{job=\"x\"}[1m])) + 1"),
        "sum%28rate%28up%7Bjob%3D%22x%22%7D%5B1m%5D%29%29%20%2B%201"
    );
}
