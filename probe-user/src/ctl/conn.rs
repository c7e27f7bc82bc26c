//! The CLI's connection to the daemon's API socket: one request line out, response lines in,
//! and one clear sentence (with the fix) for each way the connection can fail.
use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use crate::api::proto::{encode_line, Query, Reply, Request, Response, API_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(
        "no linkprobe daemon socket at {0}: start the daemon (`linkprobe daemon`), or point \
         --socket / LINKPROBE_SOCKET at the socket of the daemon you want (in Kubernetes: \
         kubectl exec into the linkprobe pod on that node)"
    )]
    Missing(PathBuf),
    #[error(
        "the linkprobe daemon is not running (stale socket {0}, nothing accepts on it): start \
         it with `linkprobe daemon`"
    )]
    NotRunning(PathBuf),
    #[error(
        "{path} is {what}, not a socket: point --socket / LINKPROBE_SOCKET at the daemon's \
         api.sock (in its --run-dir, /run/linkprobe/api.sock by default)"
    )]
    NotSocket { path: PathBuf, what: &'static str },
    #[error(
        "permission denied on {0}: run as root (sudo linkprobe …) or add yourself to the group \
         the daemon was started with (`linkprobe daemon --api-group GROUP`)"
    )]
    Denied(PathBuf),
    #[error("connecting to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection (it stopped, or dropped this client); run `linkprobe status` to check it")]
    Closed,
    #[error("the daemon sent something this CLI cannot read ({0}); are both the same version?")]
    Decode(String),
    #[error("the daemon speaks API version {0}, this CLI {API_VERSION}: use matching versions")]
    Version(u32),
}

/// What `path` is when it is not a socket (`None` for a socket, or what cannot be looked at).
fn not_a_socket(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_socket() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_file() {
        Some("a regular file")
    } else {
        Some("not a socket (a device or a pipe)")
    }
}

pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn open(path: &Path) -> Result<Conn, ConnError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ConnError::Missing(path.to_owned()),
            // Refused also when the path is no socket at all: only a socket is "stale".
            io::ErrorKind::ConnectionRefused => match not_a_socket(path) {
                Some(what) => ConnError::NotSocket {
                    path: path.to_owned(),
                    what,
                },
                None => ConnError::NotRunning(path.to_owned()),
            },
            io::ErrorKind::PermissionDenied => ConnError::Denied(path.to_owned()),
            _ => ConnError::Connect {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let writer = stream.try_clone()?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn send(&mut self, query: Query) -> Result<(), ConnError> {
        let line = encode_line(&Request {
            v: API_VERSION,
            req: query,
        });
        match self.writer.write_all(line.as_bytes()) {
            // A refused client (too many connections) is told why in one line and closed
            // before its request is read: the reply still waits to be read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            other => other.map_err(ConnError::from),
        }
    }

    /// The next response line, decoded, with the raw line (for `-o json` pass-through).
    pub fn next_raw(&mut self) -> Result<(Reply, String), ConnError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ConnError::Closed);
        }
        let resp: Response =
            serde_json::from_str(&line).map_err(|e| ConnError::Decode(e.to_string()))?;
        if resp.v != API_VERSION {
            return Err(ConnError::Version(resp.v));
        }
        Ok((resp.reply, line))
    }

    pub fn reply(&mut self) -> Result<Reply, ConnError> {
        self.next_raw().map(|(r, _)| r)
    }

    /// One request, one answer.
    pub fn ask(path: &Path, query: Query) -> Result<Reply, ConnError> {
        let mut c = Conn::open(path)?;
        c.send(query)?;
        c.reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory or a regular file given as --socket is said to be one, not a stale socket.
    #[test]
    fn a_path_that_is_no_socket_says_what_it_is() {
        let dir = std::env::temp_dir().join(format!("lp-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        for (path, what) in [(&dir, "a directory"), (&file, "a regular file")] {
            let Err(e) = Conn::open(path) else {
                panic!("{} opened", path.display())
            };
            let said = e.to_string();
            assert!(said.contains(&format!("is {what}, not a socket")), "{said}");
            assert!(!said.contains("stale"), "{said}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
