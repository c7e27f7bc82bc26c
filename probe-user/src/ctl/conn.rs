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

pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn open(path: &Path) -> Result<Conn, ConnError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ConnError::Missing(path.to_owned()),
            io::ErrorKind::ConnectionRefused => ConnError::NotRunning(path.to_owned()),
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
