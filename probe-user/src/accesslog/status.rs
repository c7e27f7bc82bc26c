//! What the reader reports: per configured path and as a whole (`linkprobe status`, metrics).

/// One configured path as `status` shows it (also the API's row: `api::proto::EnvoyRow`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SourceStatus {
    pub path: String,
    /// `following N files`, `missing: …`, `unreadable: …`.
    pub state: String,
    /// The path exists and every file under it could be read at the last poll.
    pub ok: bool,
    pub files: usize,
    pub lines: u64,
    pub requests: u64,
    pub malformed: u64,
    /// CRI-wrapped lines that are not JSON objects: the container's other output (the proxy's
    /// own log), skipped.
    pub other: u64,
    /// Lines longer than `max_line_bytes` (joined CRI lines included), skipped.
    pub overlong: u64,
    pub rotations: u64,
    pub truncations: u64,
    /// The latest error (a malformed line, an unreadable file), kept after recovery.
    pub last_error: Option<String>,
}

/// The reader as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderStatus {
    pub sources: Vec<SourceStatus>,
    /// Requests the full queue did not take.
    pub queue_full: u64,
    /// Files the last listing found but did not follow: `max_files` reached.
    pub files_over_cap: u64,
}
