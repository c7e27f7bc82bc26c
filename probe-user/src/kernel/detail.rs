//! `--detail`: which flows get a record for every hook hit (the kernel's default is one
//! summary per flow plus exceptions). `linkprobe trace` defaults to every flow, the daemon to
//! none; a filter narrows it to the flows under investigation.
use std::{net::IpAddr, path::PathBuf};

use probe_common::{detail_mode, kernel::net, DetailFilter};

/// A parsed `--detail` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DetailSpec {
    /// Summaries and exceptions only.
    #[default]
    Off,
    /// Every hook hit of every flow in scope.
    All,
    /// Every hook hit of the flows matching all of these.
    Match {
        peer: Option<(IpAddr, Option<u16>)>,
        port: Option<u16>,
        cookie: Option<u64>,
        cgroup: Option<PathBuf>,
    },
}

impl DetailSpec {
    /// `all`, `off`, or `key=value[,key=value…]` with keys `peer` (IP or IP:PORT), `port` (either
    /// end), `cookie` (decimal or 0x-hex) and `cgroup` (a cgroup v2 directory).
    pub fn parse(s: &str) -> Result<DetailSpec, String> {
        match s.trim() {
            "all" => return Ok(DetailSpec::All),
            "off" | "none" => return Ok(DetailSpec::Off),
            _ => {}
        }
        let (mut peer, mut port, mut cookie, mut cgroup) = (None, None, None, None);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: expected all, off, or key=value with keys peer, port, cookie, cgroup")
            })?;
            match key.trim() {
                "peer" => {
                    peer =
                        Some(crate::event::parse::peer(value.trim()).map_err(|e| e.to_string())?);
                }
                "port" => {
                    port = Some(
                        value
                            .trim()
                            .parse::<u16>()
                            .map_err(|_| format!("port={value:?}: not a port number (1-65535)"))?,
                    );
                }
                "cookie" => {
                    cookie =
                        Some(crate::event::parse::cookie(value.trim()).map_err(|e| e.to_string())?)
                }
                "cgroup" => cgroup = Some(PathBuf::from(value.trim())),
                other => {
                    return Err(format!(
                        "{other:?} is not a --detail key; use peer, port, cookie or cgroup"
                    ))
                }
            }
        }
        Ok(DetailSpec::Match {
            peer,
            port,
            cookie,
            cgroup,
        })
    }

    /// The kernel's filter; `cgroup_id` is the resolved id of the `cgroup` criterion.
    pub fn filter(&self, cgroup_id: Option<u64>) -> DetailFilter {
        match self {
            DetailSpec::Off => DetailFilter::default(),
            DetailSpec::All => DetailFilter {
                mode: detail_mode::ALL,
                ..DetailFilter::default()
            },
            DetailSpec::Match {
                peer, port, cookie, ..
            } => {
                let mut f = DetailFilter {
                    mode: detail_mode::MATCH,
                    cookie: cookie.unwrap_or(0),
                    cgroup_id: cgroup_id.unwrap_or(0),
                    ..DetailFilter::default()
                };
                if let Some((addr, peer_port)) = peer {
                    match addr {
                        IpAddr::V4(v4) => {
                            f.family = net::AF_INET;
                            f.addr[..4].copy_from_slice(&v4.octets());
                        }
                        IpAddr::V6(v6) => {
                            f.family = net::AF_INET6;
                            f.addr = v6.octets();
                        }
                    }
                    f.port = peer_port.unwrap_or(0);
                }
                if let Some(p) = port {
                    f.port = *p;
                }
                f
            }
        }
    }

    /// `off`, `all` or `match`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            DetailSpec::Off => "off",
            DetailSpec::All => "all",
            DetailSpec::Match { .. } => "match",
        }
    }

    /// The `cgroup` criterion, to resolve to an id.
    pub fn cgroup(&self) -> Option<&PathBuf> {
        match self {
            DetailSpec::Match { cgroup, .. } => cgroup.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_filters() {
        assert_eq!(DetailSpec::parse("all"), Ok(DetailSpec::All));
        assert_eq!(DetailSpec::parse("off"), Ok(DetailSpec::Off));
        let spec = DetailSpec::parse("peer=10.0.0.5:443,cookie=0x10").unwrap();
        let f = spec.filter(None);
        assert_eq!(f.mode, detail_mode::MATCH);
        assert_eq!(f.family, net::AF_INET);
        assert_eq!(&f.addr[..4], &[10, 0, 0, 5]);
        assert_eq!(f.port, 443);
        assert_eq!(f.cookie, 16);
        let f = DetailSpec::parse("port=8080").unwrap().filter(Some(9));
        assert_eq!((f.port, f.family, f.cgroup_id), (8080, 0, 9));
    }

    #[test]
    fn rejects_with_the_reason() {
        let e = DetailSpec::parse("host=x").unwrap_err();
        assert!(e.contains("peer, port, cookie or cgroup"), "{e}");
        assert!(DetailSpec::parse("port=99999")
            .unwrap_err()
            .contains("port"));
        assert!(DetailSpec::parse("peer=nope").is_err());
        assert!(DetailSpec::parse("everything").is_err());
    }
}
