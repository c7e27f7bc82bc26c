//! Socket operations with known outcomes. Each returns the socket cookies it created
//! (`SO_COOKIE`, the same value the kernel programs report). The socket options and the loops
//! are [`testkit::workload`]'s, shared with xtask's bench.
use std::{
    convert::Infallible,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use testkit::workload::{self as kit, exchange, Close, Schedule};

pub fn cookie(fd: &impl AsRawFd) -> u64 {
    kit::cookie(fd).unwrap_or_else(|e| panic!("SO_COOKIE: {e}"))
}

/// A TCP socket with its cookie taken before connect, so the kernel events carry it.
pub fn client_socket() -> (Socket, u64) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let c = cookie(&s);
    (s, c)
}

/// Connects `n` times to a port nobody listens on; every attempt must be refused.
pub fn refused_connects(port: u16, n: usize) -> Vec<u64> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    (0..n)
        .map(|_| {
            let (s, c) = client_socket();
            let err = s
                .connect(&addr.into())
                .expect_err("connect to a closed port");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
            c
        })
        .collect()
}

/// Accepts `n` connections and aborts each with SO_LINGER 0 (an RST instead of a FIN).
/// Returns (client cookies, server cookies).
pub fn linger_zero_aborts(n: usize) -> (Vec<u64>, Vec<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        let (s, c) = client_socket();
        s.connect(&addr.into()).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        servers.push(cookie(&accepted));
        let accepted = Socket::from(accepted);
        accepted
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(accepted);
        // The client sees the reset on its next read.
        let mut stream: TcpStream = s.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        let err = stream.read(&mut buf).expect_err("read after RST");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        clients.push(c);
    }
    (clients, servers)
}

/// Connects to a port whose SYNs are dropped; TCP_SYNCNT limits the retries so the connect
/// times out after `syn_retries` retransmits. Runs the attempts concurrently.
pub fn syn_timeouts(port: u16, n: usize, syn_retries: u32) -> Vec<u64> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let sockets: Vec<(Socket, u64)> = (0..n)
        .map(|_| {
            let (s, c) = client_socket();
            kit::set_syn_retries(&s, syn_retries).unwrap_or_else(|e| panic!("TCP_SYNCNT: {e}"));
            (s, c)
        })
        .collect();
    std::thread::scope(|scope| {
        for (s, _) in &sockets {
            scope.spawn(move || {
                let err = s
                    .connect(&addr.into())
                    .expect_err("connect with SYNs dropped");
                assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
            });
        }
    });
    sockets.into_iter().map(|(_, c)| c).collect()
}

/// A connected pair on loopback: (client, client cookie, server, server cookie).
pub fn connected_pair(listener: &TcpListener) -> (TcpStream, u64, TcpStream, u64) {
    let addr = listener.local_addr().expect("addr");
    let (s, c) = client_socket();
    s.connect(&addr.into()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let sc = cookie(&server);
    (s.into(), c, server, sc)
}

/// Sends `data` from `from` and reads it fully on `to`.
pub fn transfer(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) {
    from.write_all(data).expect("write");
    to.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut got = vec![0u8; data.len()];
    to.read_exact(&mut got).expect("read");
    assert_eq!(got, data);
}

/// Refused connects at about `rate` per second for `duration`; returns how many were made.
pub fn refused_storm(port: u16, rate: u32, duration: Duration) -> u64 {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(made) = Schedule::paced(rate, duration).run(|_| {
        let (s, _) = client_socket();
        let err = s
            .connect(&addr.into())
            .expect_err("connect to a closed port");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        Ok::<_, Infallible>(())
    });
    made
}

/// Normal connect / 1 byte each way / close to `listener`, at about `rate` per second.
pub fn background_traffic(listener: &TcpListener, rate: u32, duration: Duration) -> u64 {
    Schedule::paced(rate, duration)
        .run(|_| exchange(listener, Close::Fin))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends one bare TCP ACK (no connection behind it) from 127.0.0.1:`from_port` to
/// 127.0.0.1:`to_port` through a raw socket. A listener on `to_port` answers it with an RST of
/// its own (`tcp_send_reset` with the listening socket), and stays listening: the way to give
/// one socket several RSTs.
pub fn stray_ack(from_port: u16, to_port: u16) {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::TCP))
        .expect("raw socket (needs CAP_NET_RAW)");
    let loopback = [127u8, 0, 0, 1];
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&from_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&to_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    tcp[12] = 5 << 4; // header length: 5 words
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    // Checksum over the pseudo header (source, destination, protocol, length) and the header.
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&loopback);
    pseudo.extend_from_slice(&loopback);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let to: SocketAddr = (loopback, 0).into();
    let sent = s.send_to(&tcp, &to.into()).expect("send the stray ACK");
    assert_eq!(sent, tcp.len());
}
