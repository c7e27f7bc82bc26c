//! The CRI log wrapper the kubelet's runtimes write around each line a container prints:
//! `<RFC 3339 nano time> <stdout|stderr> <P|F>[:tags] <line>`. `P` (partial) lines are pieces
//! of one long line the runtime split (containerd at 16 KiB); the `F` piece ends it. A line
//! that is not so wrapped is passed through as it is (a plain Envoy log file).

/// What one raw line is.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrapped<'a> {
    /// Not a CRI line: the line itself.
    Plain(&'a str),
    /// A CRI line's content; `partial` for a `P` piece.
    Cri {
        stream: Stream,
        partial: bool,
        content: &'a str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Splits off the CRI wrapper, when the line has one.
pub fn unwrap(line: &str) -> Wrapped<'_> {
    let plain = Wrapped::Plain(line);
    // Cheap first: a CRI line starts with a digit, a JSON line with `{`.
    if !line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return plain;
    }
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return plain;
    };
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return plain,
    };
    let partial = match tag.split(':').next() {
        Some("P") => true,
        Some("F") => false,
        _ => return plain,
    };
    if crate::clock::parse_rfc3339(time).is_none() {
        return plain;
    }
    Wrapped::Cri {
        stream,
        partial,
        content: parts.next().unwrap_or(""),
    }
}

/// Joins `P` pieces to their `F` piece, per stream, within `max` bytes: a joined line longer
/// than that is dropped whole (counted by the caller), never cut.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: [Pending; 2],
}

#[derive(Debug, Default)]
struct Pending {
    buf: String,
    /// The pieces so far passed the bound: drop until the `F` piece.
    overlong: bool,
}

/// What one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined<'a> {
    /// A complete line (borrowed when it was not pieced together); `cri`: it came wrapped.
    Line {
        line: std::borrow::Cow<'a, str>,
        cri: bool,
    },
    /// A piece was kept; the line is not complete yet.
    Pending,
    /// The line, joined, passed `max` bytes and was dropped.
    Overlong,
}

impl Joiner {
    pub fn push<'a>(&mut self, line: &'a str, max: usize) -> Joined<'a> {
        let (stream, partial, content) = match unwrap(line) {
            Wrapped::Plain(l) => {
                return Joined::Line {
                    line: l.into(),
                    cri: false,
                }
            }
            Wrapped::Cri {
                stream,
                partial,
                content,
            } => (stream, partial, content),
        };
        let p = &mut self.pending[stream as usize];
        if !p.overlong && p.buf.len() + content.len() > max {
            p.overlong = true;
            p.buf = String::new();
        }
        if partial {
            if !p.overlong {
                p.buf.push_str(content);
            }
            return Joined::Pending;
        }
        if std::mem::take(&mut p.overlong) {
            return Joined::Overlong;
        }
        if p.buf.is_empty() {
            return Joined::Line {
                line: content.into(),
                cri: true,
            };
        }
        let mut whole = std::mem::take(&mut p.buf);
        whole.push_str(content);
        Joined::Line {
            line: whole.into(),
            cri: true,
        }
    }

    /// After a truncation or a new file: pieces of the old content never get their end.
    pub fn reset(&mut self) {
        *self = Joiner::default();
    }
}
