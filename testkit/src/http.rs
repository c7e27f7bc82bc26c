//! A tiny blocking HTTP/1.1 client: `GET` with `Connection: close` over a `TcpStream`, every
//! step bounded, status + headers + body, `Transfer-Encoding: chunked` decoded. Enough for the
//! daemon's `/metrics`, `/healthz`, `/readyz` and Prometheus's API; no TLS, no redirects.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Connect, write and read timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// A request that got no usable response. Any HTTP status is a response, not an error.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("GET {path} from {addr}: {step}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("GET {path} from {addr}: {source}")]
    Malformed {
        addr: SocketAddr,
        path: String,
        #[source]
        source: Malformed,
    },
}

/// What is wrong with a response's bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` (with its query string, already encoded) from `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, HttpError> {
    get_timed(addr, path).map(|(_, r)| r)
}

/// [`get`] and its round trip: from the connect to the last byte read (before parsing).
pub fn get_timed(addr: SocketAddr, path: &str) -> Result<(Duration, Response), HttpError> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| HttpError::Connect { addr, source })?;
    let io = |step| {
        move |source| HttpError::Io {
            addr,
            path: path.to_owned(),
            step,
            source,
        }
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(io("socket timeouts"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: linkprobe-testkit\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io("write"))?;
    let mut raw = Vec::with_capacity(64 * 1024);
    stream.read_to_end(&mut raw).map_err(io("read"))?;
    let elapsed = start.elapsed();
    let response = parse_response(&raw).map_err(|source| HttpError::Malformed {
        addr,
        path: path.to_owned(),
        source,
    })?;
    Ok((elapsed, response))
}

/// Parses a whole HTTP/1.1 response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, Malformed> {
    let bad = |s: String| Malformed(s);
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|e| bad(format!("headers: {e}")))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line: {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line: {l:?}")))?;
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect::<Result<_, Malformed>>()?;
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        if rest.len() < len {
            return Err(bad(format!(
                "body cut short: {} of {len} bytes (content-length)",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a `Transfer-Encoding: chunked` body (chunk extensions and trailers are ignored).
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut body = Vec::new();
    loop {
        let line_end =
            find(data, b"\r\n").ok_or_else(|| Malformed("chunk size line without CRLF".into()))?;
        let line =
            std::str::from_utf8(&data[..line_end]).map_err(|e| Malformed(format!("chunk: {e}")))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| Malformed(format!("bad chunk size {size_hex:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return Err(Malformed(format!(
                "chunk of {size} bytes cut short or not CRLF-terminated"
            )));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, net::TcpListener};

    use super::*;

    #[test]
    fn chunked_and_sized_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b \r\n\r\n\
              3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        assert_eq!(r.header("x-a"), Some("b"));
        let r =
            parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nnot more").unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "not"));
        let e = parse_response(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").unwrap_err();
        assert_eq!(e.to_string(), "bad header line: \"broken\"");
    }

    #[test]
    fn get_from_a_one_shot_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            // The whole request, so that closing sends a FIN, not an RST.
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            first
        });
        let (elapsed, r) = get_timed(addr, "/metrics?x=1").unwrap();
        assert_eq!(server.join().unwrap(), "GET /metrics?x=1 HTTP/1.1\r\n");
        assert_eq!(r.text(), "ok");
        assert!(elapsed > Duration::ZERO);
        drop(r);
        let closed = crate::linkprobe::free_loopback_addr().unwrap();
        let e = get(closed, "/").unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }
}
