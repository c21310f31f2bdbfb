//! One connection type and one acceptor type over both transports, chosen by [`Endpoint`].
//!
//! Where it sits: the primary's relay links, the relay's listener and its standby link hold
//! an [`AnyConnection`] (an enum, so the reactor's poll is a match, not a virtual call) and
//! the relay an [`AnyAcceptor`] (a TCP listener and, when asked, an RDMA one: a relay takes
//! primaries over both at once). Without the `rdma` feature the RDMA variants do not exist
//! and an `rdma://` endpoint is refused with [`TransportError::RdmaNotBuilt`].

use core::ops::Deref;
use std::net::SocketAddr;

use crate::endpoint::Endpoint;
#[cfg(feature = "rdma")]
use crate::rdma::{RdmaAcceptor, RdmaConfig, RdmaConnection};
use crate::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use crate::transport::{ConnState, ConnStats, Connection, OutFrame, SendCompletion, SendError, TransportError};
use crate::wire::{Frame, HeaderBuf};

/// A TCP or RDMA connection.
pub enum AnyConnection<B> {
    /// Over TCP.
    Tcp(TcpConnection<B>),
    /// Over RDMA verbs (boxed: its completion array makes it large).
    #[cfg(feature = "rdma")]
    Rdma(Box<RdmaConnection<B>>),
}

/// Why an RDMA link is refused in a process whose links must be encrypted.
fn rdma_unencrypted() -> TransportError {
    TransportError::Tls(crate::tls::TlsError::Config(
        "this process encrypts its replication links (TLS) and RDMA links are not encrypted: \
         use a tcp:// address, or run without TLS credentials"
            .into(),
    ))
}

/// True when this build has the RDMA transport.
pub const RDMA_BUILT: bool = cfg!(feature = "rdma");

/// Refuses an RDMA endpoint in a build without the feature (Ok otherwise, or for TCP).
pub fn check_endpoint(ep: &Endpoint) -> Result<(), TransportError> {
    match ep {
        Endpoint::Rdma(addr) if !RDMA_BUILT => Err(TransportError::RdmaNotBuilt { addr: *addr }),
        _ => Ok(()),
    }
}

impl<B: Deref<Target = [u8]>> AnyConnection<B> {
    /// Starts a non-blocking connect to `ep` with each transport's default settings.
    pub fn connect(ep: Endpoint) -> Result<Self, TransportError> {
        match ep {
            Endpoint::Tcp(a) => TcpConnection::connect(a, TcpConfig::default()).map(AnyConnection::Tcp),
            #[cfg(feature = "rdma")]
            Endpoint::Rdma(a) => {
                RdmaConnection::connect(a, RdmaConfig::default()).map(|c| AnyConnection::Rdma(Box::new(c)))
            }
            #[cfg(not(feature = "rdma"))]
            Endpoint::Rdma(addr) => Err(TransportError::RdmaNotBuilt { addr }),
        }
    }

    /// As [`AnyConnection::connect`], under the process's TLS identity when one is installed
    /// ([`crate::tls::process`]): a TCP link then runs TLS 1.3 and accepts only a peer of
    /// role `expect`; an RDMA link is refused, since nothing encrypts it (docs/security.md).
    pub fn connect_as(ep: Endpoint, expect: crate::tls::Role) -> Result<Self, TransportError> {
        let Some(tls) = crate::tls::process() else {
            return Self::connect(ep);
        };
        match ep {
            Endpoint::Tcp(a) => {
                TcpConnection::connect_tls(a, TcpConfig::default(), tls, expect).map(AnyConnection::Tcp)
            }
            Endpoint::Rdma(_) => Err(rdma_unencrypted()),
        }
    }

    /// The socket descriptor of a TCP connection (for [`crate::readiness::Readiness`]);
    /// None for RDMA, whose completion queues are polled on every pass (a memory read).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            AnyConnection::Tcp(c) => c.raw_fd(),
            #[cfg(feature = "rdma")]
            AnyConnection::Rdma(_) => None,
        }
    }

    /// What the connection waits for while idle (see [`TcpConnection::wait_interest`]);
    /// None for RDMA (completion queues have no descriptor here) and once closed.
    pub fn wait_interest(&self) -> Option<(std::os::fd::RawFd, engine::reactor::Interest)> {
        match self {
            AnyConnection::Tcp(c) => c.wait_interest(),
            #[cfg(feature = "rdma")]
            AnyConnection::Rdma(_) => None,
        }
    }

    /// Whether whole received frames wait to be delivered.
    pub fn has_buffered(&self) -> bool {
        match self {
            AnyConnection::Tcp(c) => c.has_buffered(),
            #[cfg(feature = "rdma")]
            AnyConnection::Rdma(c) => c.has_buffered(),
        }
    }

    /// Local address, once connected.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            AnyConnection::Tcp(c) => c.local_addr(),
            #[cfg(feature = "rdma")]
            AnyConnection::Rdma(c) => c.local_addr(),
        }
    }

    /// True over RDMA.
    pub fn is_rdma(&self) -> bool {
        !matches!(self, AnyConnection::Tcp(_))
    }
}

macro_rules! each {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            AnyConnection::Tcp($c) => $e,
            #[cfg(feature = "rdma")]
            AnyConnection::Rdma($c) => $e,
        }
    };
}

#[allow(clippy::result_large_err)]
impl<B: Deref<Target = [u8]>> Connection<B> for AnyConnection<B> {
    fn send(&mut self, frame: OutFrame<B>) -> Result<(), SendError<B>> {
        each!(self, c => c.send(frame))
    }
    fn send_capacity(&self) -> usize {
        each!(self, c => c.send_capacity())
    }
    fn poll_send(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        each!(self, c => c.poll_send(done))
    }
    fn poll_recv(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError> {
        each!(self, c => c.poll_recv(on_frame))
    }
    fn state(&self) -> ConnState {
        each!(self, c => c.state())
    }
    fn close(&mut self) {
        each!(self, c => c.close())
    }
    fn send_last(&mut self, header: HeaderBuf) -> bool {
        each!(self, c => c.send_last(header))
    }
    fn stats(&self) -> ConnStats {
        each!(self, c => c.stats())
    }
}

/// A TCP listener and optionally an RDMA one, accepted from in turn.
pub struct AnyAcceptor {
    tcp: Option<TcpAcceptor>,
    #[cfg(feature = "rdma")]
    rdma: Option<RdmaAcceptor>,
}

impl AnyAcceptor {
    /// Adds the listening sockets an idle reactor should wake for to `out`; false when an
    /// RDMA listener is among them (its connection requests are polled, not signalled).
    pub fn wait_fds(&self, out: &mut Vec<(std::os::fd::RawFd, engine::reactor::Interest)>) -> bool {
        if let Some(t) = &self.tcp {
            out.push((t.raw_fd(), engine::reactor::Interest::READABLE));
        }
        #[cfg(feature = "rdma")]
        if self.rdma.is_some() {
            return false;
        }
        true
    }

    /// Listens on each endpoint given (at most one per transport; later ones of the same
    /// transport are refused).
    pub fn bind(eps: &[Endpoint]) -> Result<Self, (Endpoint, TransportError)> {
        let mut a = AnyAcceptor {
            tcp: None,
            #[cfg(feature = "rdma")]
            rdma: None,
        };
        for ep in eps {
            let dup = || {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "one listener per transport");
                (
                    *ep,
                    TransportError::Io {
                        op: "listen",
                        source: e,
                    },
                )
            };
            match *ep {
                Endpoint::Tcp(addr) => {
                    if a.tcp.is_some() {
                        return Err(dup());
                    }
                    a.tcp = Some(TcpAcceptor::bind(addr, TcpConfig::default()).map_err(|e| (*ep, e))?);
                }
                #[cfg(feature = "rdma")]
                Endpoint::Rdma(addr) => {
                    if a.rdma.is_some() {
                        return Err(dup());
                    }
                    a.rdma = Some(RdmaAcceptor::bind(addr, RdmaConfig::default()).map_err(|e| (*ep, e))?);
                }
                #[cfg(not(feature = "rdma"))]
                Endpoint::Rdma(addr) => return Err((*ep, TransportError::RdmaNotBuilt { addr })),
            }
        }
        Ok(a)
    }

    /// TCP connections accepted from now on use the process's TLS identity whenever one is
    /// installed, accepting peers of role `expect` ([`TcpAcceptor::follow_process_tls`]);
    /// RDMA connections are then closed at once (they are not encrypted).
    pub fn follow_process_tls(&mut self, expect: crate::tls::Role) {
        if let Some(t) = self.tcp.as_mut() {
            t.follow_process_tls(expect);
        }
    }

    /// The bound endpoints (ports resolved), TCP first.
    pub fn local_endpoints(&self) -> Vec<Endpoint> {
        let mut v = Vec::new();
        if let Some(t) = &self.tcp {
            v.push(Endpoint::Tcp(t.local_addr()));
        }
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            v.push(Endpoint::Rdma(r.local_addr()));
        }
        v
    }

    /// The TCP listener's bound address, else the first listener's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_endpoints()
            .first()
            .map(|e| e.addr())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts one pending connection from either listener, if any (setup path). An error
    /// of one listener does not hide the other's connections.
    pub fn poll_accept<B: Deref<Target = [u8]>>(
        &self,
    ) -> Result<Option<(AnyConnection<B>, SocketAddr)>, TransportError> {
        let mut err = None;
        if let Some(t) = &self.tcp {
            match t.poll_accept() {
                Ok(Some((c, peer))) => return Ok(Some((AnyConnection::Tcp(c), peer))),
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        }
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            match r.poll_accept::<B>() {
                Ok(Some((mut c, peer))) if crate::tls::process().is_some() => {
                    c.close();
                    err = Some(rdma_unencrypted());
                    let _ = peer;
                }
                Ok(Some((c, peer))) => return Ok(Some((AnyConnection::Rdma(Box::new(c)), peer))),
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdma_is_refused_clearly_without_the_feature() {
        let ep = Endpoint::parse("rdma://192.0.2.1:4500").unwrap();
        if RDMA_BUILT {
            assert!(check_endpoint(&ep).is_ok());
            return;
        }
        let e = check_endpoint(&ep).unwrap_err().to_string();
        assert!(e.contains("lacks RDMA support") && e.contains("`rdma`"), "{e}");
        let Err(e) = AnyConnection::<Vec<u8>>::connect(ep) else {
            panic!("connected")
        };
        assert!(matches!(e, TransportError::RdmaNotBuilt { .. }));
        let Err((bad, e)) = AnyAcceptor::bind(&[Endpoint::parse("127.0.0.1:0").unwrap(), ep]) else {
            panic!("bound")
        };
        assert_eq!(bad, ep);
        assert!(matches!(e, TransportError::RdmaNotBuilt { .. }));
    }

    #[test]
    fn tcp_through_the_enum() {
        let acc = AnyAcceptor::bind(&[Endpoint::parse("127.0.0.1:0").unwrap()]).unwrap();
        let ep = acc.local_endpoints()[0];
        let mut c = AnyConnection::<Vec<u8>>::connect(ep).unwrap();
        assert!(!c.is_rdma());
        let start = std::time::Instant::now();
        let (mut s, _) = loop {
            if let Some(x) = acc.poll_accept::<Vec<u8>>().unwrap() {
                break x;
            }
            assert!(start.elapsed().as_secs() < 5);
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let hb = crate::wire::encode_heartbeat(&crate::wire::Heartbeat {
            nonce: 5,
            time_ns: 1,
            is_reply: false,
        });
        c.send(OutFrame::control(hb, 9)).unwrap();
        let mut got = 0;
        while got == 0 {
            c.poll_send(&mut |_| {}).unwrap();
            got += s
                .poll_recv(&mut |f| assert!(matches!(f, Frame::Heartbeat(h) if h.nonce == 5)))
                .unwrap();
            assert!(start.elapsed().as_secs() < 5);
        }
    }
}
