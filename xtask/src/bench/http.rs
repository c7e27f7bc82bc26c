//! A minimal HTTP/1.1 client for the daemon's exporter: one `GET`, `Connection: close`, the
//! whole body. Enough for `/metrics`, with every step bounded so a stuck server fails the bench.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Bounds each step of one request (connect, write, read).
const TIMEOUT: Duration = Duration::from_secs(10);

/// One GET: the round trip (connect to the last byte) and the body. Anything but a 200 is an
/// error.
pub fn get(addr: SocketAddr, path: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path}"))?;
    let mut raw = Vec::with_capacity(512 * 1024);
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("answer without a header end: {text:.200}"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {path} answered {status}: {head}\n{body:.500}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("GET {path} answered with a chunked body; this client only reads plain bodies");
    }
    Ok((elapsed, body.to_owned()))
}

/// A loopback address with a port free now (bound, read, released) for a daemon's exporter.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port for /metrics")?;
    Ok(l.local_addr()?)
}
