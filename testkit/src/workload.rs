//! Connections with known outcomes: the socket options the workloads set, one loopback
//! connection, a refused connect, and the loop that repeats them bounded by a count, a
//! deadline and a rate.
use std::{
    io::{self, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use crate::error::Error;

/// `SO_COOKIE` (include/uapi/asm-generic/socket.h).
const SO_COOKIE: libc::c_int = 57;

/// The socket's cookie (`SO_COOKIE`): the value the kernel programs report for it.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = socklen::<u64>();
    // SAFETY: a valid fd and an out-pointer to a u64 with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER {on, 0 s}: close() aborts the connection with an RST (no FIN, no TIME_WAIT).
pub fn set_linger_zero(fd: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// TCP_SYNCNT: how many SYN retransmits before connect gives up.
pub fn set_syn_retries(fd: &impl AsRawFd, retries: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(retries).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, &v)
}

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a live value with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(v).cast(),
            socklen::<T>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The client closes first: FIN, TIME_WAIT on the client (reusable on loopback).
    Fin,
    /// SO_LINGER 0 on the client: close() sends an RST, no TIME_WAIT.
    Reset,
}

/// One connection to `listener` (on this host): connect, accept, one byte each way, close as
/// `close` says.
pub fn exchange(listener: &TcpListener, close: Close) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    let mut client =
        TcpStream::connect(addr).map_err(|e| Error::io(format!("connect {addr}"), e))?;
    let (mut server, _) = listener
        .accept()
        .map_err(|e| Error::io(format!("accept on {addr}"), e))?;
    let mut b = [0u8; 1];
    client
        .write_all(b"x")
        .and_then(|()| server.read_exact(&mut b))
        .and_then(|()| server.write_all(b"y"))
        .and_then(|()| client.read_exact(&mut b))
        .map_err(|e| Error::io(format!("one byte each way on {addr}"), e))?;
    if close == Close::Reset {
        set_linger_zero(&client).map_err(|e| Error::io("SO_LINGER 0", e))?;
    }
    // The client first (locals would drop in the reverse order).
    drop(client);
    drop(server);
    Ok(())
}

/// One connect to `addr`, where nothing listens: Ok when it is refused (an RST answers the
/// SYN), else [`Error::NotRefused`] with what happened instead.
pub fn connect_refused(addr: SocketAddr) -> Result<(), Error> {
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
        Ok(_) => Err(Error::NotRefused {
            addr,
            outcome: format!("connected (port {} is open)", addr.port()),
        }),
        Err(e) => Err(Error::NotRefused {
            addr,
            outcome: e.to_string(),
        }),
    }
}

/// How often a loop runs its step: at most `count` times (if set), until `until`, and at about
/// `rate` per second (if set; else back to back).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    count: Option<u64>,
    until: Instant,
    rate: Option<u32>,
}

impl Schedule {
    /// `count` steps back to back, stopping early at `deadline`.
    pub fn count(count: u64, deadline: Instant) -> Schedule {
        Schedule {
            count: Some(count),
            until: deadline,
            rate: None,
        }
    }

    /// About `rate` steps a second for `duration` (from now): step `i` is due `(i + 1) / rate`
    /// seconds after the loop starts; a late step runs at once.
    pub fn paced(rate: u32, duration: Duration) -> Schedule {
        Schedule {
            count: None,
            until: Instant::now() + duration,
            rate: Some(rate.max(1)),
        }
    }

    /// Runs `step` (given its index) as scheduled; returns how many steps ran, or the first
    /// error.
    pub fn run<E>(&self, mut step: impl FnMut(u64) -> Result<(), E>) -> Result<u64, E> {
        let start = Instant::now();
        let mut done = 0u64;
        while self.count.is_none_or(|c| done < c) {
            let now = Instant::now();
            if now >= self.until {
                break;
            }
            if let Some(rate) = self.rate {
                let due = start + Duration::from_secs_f64((done + 1) as f64 / f64::from(rate));
                if due > now {
                    thread::sleep(due.min(self.until) - now);
                    continue;
                }
            }
            step(done)?;
            done += 1;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::Ipv4Addr};

    use super::*;

    #[test]
    fn a_count_stops_the_loop_and_an_error_ends_it() {
        let far = Instant::now() + Duration::from_secs(60);
        let Ok(n) = Schedule::count(5, far).run(|_| Ok::<_, Infallible>(()));
        assert_eq!(n, 5);
        let e = Schedule::count(5, far).run(|i| if i == 2 { Err(i) } else { Ok(()) });
        assert_eq!(e, Err(2));
        let Ok(n) = Schedule::count(5, Instant::now()).run(|_| Ok::<_, Infallible>(()));
        assert_eq!(n, 0);
    }

    #[test]
    fn a_paced_loop_keeps_its_rate() {
        let start = Instant::now();
        let Ok(n) =
            Schedule::paced(100, Duration::from_millis(300)).run(|_| Ok::<_, Infallible>(()));
        assert!((15..=30).contains(&n), "{n}");
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn loopback_exchanges_and_a_refused_connect() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        exchange(&l, Close::Fin).unwrap();
        exchange(&l, Close::Reset).unwrap();
        assert_ne!(cookie(&l).unwrap(), 0);
        set_syn_retries(&l, 2).unwrap();
        let closed = crate::linkprobe::free_loopback_addr().unwrap();
        connect_refused(closed).unwrap();
        let open = l.local_addr().unwrap();
        let e = connect_refused(open).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{open}: connected (port {} is open)", open.port())
        );
    }
}
