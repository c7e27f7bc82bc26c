//! Reading what the container printed: `linkprobe probes -o json`, `linkprobe flows -o json`
//! and the container's mount table.
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use serde_json::Value;

/// What `linkprobe probes -o json` reported.
#[derive(Debug, PartialEq, Eq)]
pub struct ProbeCount {
    pub attached: usize,
    pub total: usize,
    /// Probes not attached (and not skipped as unneeded): name and why.
    pub off: Vec<(String, String)>,
    /// Attached probe names.
    pub on: Vec<String>,
    /// Probes this kernel does not need (`not needed: …`).
    pub not_needed: Vec<String>,
    /// Why loading failed as a whole.
    pub error: Option<String>,
}

impl ProbeCount {
    pub fn parse(json: &str) -> Result<ProbeCount> {
        let v: Value = serde_json::from_str(json.trim()).with_context(|| {
            format!("`linkprobe probes -o json` printed no JSON report: {json}")
        })?;
        let count = |key: &str| -> Result<usize> {
            v[key]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| format!("the probes report has no `{key}` count"))
        };
        let rows = v["probes"].as_array().cloned().unwrap_or_default();
        let name = |p: &Value| p["name"].as_str().unwrap_or("?").to_owned();
        Ok(ProbeCount {
            attached: count("attached")?,
            total: count("total")?,
            off: rows
                .iter()
                .filter(|p| p["attached"] != Value::Bool(true) && p["skipped"] != Value::Bool(true))
                .map(|p| (name(p), p["reason"].as_str().unwrap_or("").to_owned()))
                .collect(),
            on: rows
                .iter()
                .filter(|p| p["attached"] == Value::Bool(true))
                .map(name)
                .collect(),
            not_needed: rows
                .iter()
                .filter(|p| p["skipped"] == Value::Bool(true))
                .map(name)
                .collect(),
            error: v["error"].as_str().map(str::to_owned),
        })
    }

    /// `7 of 7 attached` / `6 of 7 attached; off: lp_sock_ops (why)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} of {} attached", self.attached, self.total);
        if !self.off.is_empty() && !self.on.is_empty() {
            s.push_str(&format!(" ({})", self.on.join(", ")));
        }
        if !self.not_needed.is_empty() {
            s.push_str(&format!(
                "; not needed here: {}",
                self.not_needed.join(", ")
            ));
        }
        for (name, why) in &self.off {
            s.push_str(&format!("; off: {name} ({why})"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("; load failed: {e}"));
        }
        s
    }

    /// Whether the sock_ops probe is among the attached.
    pub fn sock_ops_attached(&self) -> bool {
        self.on.iter().any(|n| is_sock_ops(n))
    }

    /// Every probe of the report, whatever became of it.
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = self.on.iter().chain(&self.not_needed).cloned().collect();
        all.extend(self.off.iter().map(|(n, _)| n.clone()));
        all.sort();
        all
    }
}

pub fn is_sock_ops(probe: &str) -> bool {
    probe.contains("sock_ops")
}

/// The flow `comm` opened to `remote`, in `linkprobe flows -o json`'s array.
pub fn find_flow<'a>(flows: &'a [Value], remote: SocketAddr, comm: &str) -> Option<&'a Value> {
    let remote = remote.to_string();
    flows
        .iter()
        .find(|f| f["remote"].as_str() == Some(&remote) && f["comm"].as_str() == Some(comm))
}

/// One line per flow: cookie, comm, local → remote, state, close.
pub fn flow_line(f: &Value) -> String {
    format!(
        "cookie {} {} {} → {} state {} close {}",
        f["cookie"],
        f["comm"].as_str().unwrap_or("-"),
        f["local"].as_str().unwrap_or("?"),
        f["remote"].as_str().unwrap_or("?"),
        f["state"].as_str().unwrap_or("?"),
        f["close"].as_str().unwrap_or("-")
    )
}

/// Whether the mount at `point` in a /proc/<pid>/mountinfo is read-only (None: no such mount;
/// the last one at that point counts, as the kernel shows the top of a stack).
pub fn read_only_at(mountinfo: &str, point: &str) -> Option<bool> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(point))
        .and_then(|l| l.split(' ').nth(5))
        .map(|opts| opts.split(',').any(|o| o == "ro"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"type":"probes","kernel":"6.18","ok":true,"attached":6,"total":7,
        "probes":[{"name":"lp_sock_ops","attached":false,"skipped":false,"reason":"EPERM"},
                  {"name":"lp_state","attached":true,"skipped":false,"reason":null},
                  {"name":"lp_iter","attached":false,"skipped":true,"reason":"not needed"}],
        "error":null}"#;

    #[test]
    fn a_probes_report_counts_and_names() {
        let c = ProbeCount::parse(REPORT).unwrap();
        assert_eq!((c.attached, c.total), (6, 7));
        assert_eq!(c.off, [("lp_sock_ops".to_owned(), "EPERM".to_owned())]);
        assert_eq!(c.on, ["lp_state"]);
        assert_eq!(c.not_needed, ["lp_iter"]);
        assert_eq!(c.all(), ["lp_iter", "lp_sock_ops", "lp_state"]);
        assert!(!c.sock_ops_attached());
        assert_eq!(
            c.summary(),
            "6 of 7 attached (lp_state); not needed here: lp_iter; off: lp_sock_ops (EPERM)"
        );
        assert!(ProbeCount::parse("error: not privileged").is_err());
        assert!(ProbeCount::parse("{}").is_err());
    }

    #[test]
    fn flows_are_found_by_peer_and_program() {
        let flows: Vec<Value> = serde_json::from_str(
            r#"[{"cookie":1,"comm":"curl","local":"127.0.0.1:5000","remote":"127.0.0.1:9476","state":"CLOSE","close":"fin"},
                {"cookie":2,"comm":"linkprobe","local":"127.0.0.1:9476","remote":"127.0.0.1:5000","state":"CLOSE","close":"fin"}]"#,
        )
        .unwrap();
        let f = find_flow(&flows, "127.0.0.1:9476".parse().unwrap(), "curl").unwrap();
        assert_eq!(f["cookie"], 1);
        assert!(find_flow(&flows, "127.0.0.1:9476".parse().unwrap(), "wget").is_none());
        assert_eq!(
            flow_line(f),
            "cookie 1 curl 127.0.0.1:5000 → 127.0.0.1:9476 state CLOSE close fin"
        );
    }

    #[test]
    fn mount_flags_are_read() {
        let info = "600 500 0:80 / / ro,relatime - overlay overlay rw\n\
                    601 600 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                    602 600 0:27 / /run/linkprobe rw,relatime - ext4 /dev/vda rw\n";
        assert_eq!(read_only_at(info, "/"), Some(true));
        assert_eq!(read_only_at(info, "/sys/fs/cgroup"), Some(true));
        assert_eq!(read_only_at(info, "/run/linkprobe"), Some(false));
        assert_eq!(read_only_at(info, "/proc"), None);
    }
}
