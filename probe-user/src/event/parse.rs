//! The text forms users type for event vocabulary (`--peer`, cookies), parsed the same way by
//! the command line, `--detail` and the API's filters.
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not an IP address or IP:port")]
    Peer(String),
    #[error("{0:?} is not a socket cookie (a number, decimal or 0x-hex)")]
    Cookie(String),
}

/// `10.0.0.5` or `10.0.0.5:80` (IPv6: `[::1]:80`).
pub fn peer(p: &str) -> Result<(IpAddr, Option<u16>), ParseError> {
    if let Ok(sa) = p.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let ip = p
        .parse::<IpAddr>()
        .map_err(|_| ParseError::Peer(p.to_owned()))?;
    Ok((ip, None))
}

/// A socket cookie, decimal or `0x`-hex.
pub fn cookie(s: &str) -> Result<u64, ParseError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| ParseError::Cookie(s.to_owned()))
}
