//! Where a replication connection goes: a TCP address (`HOST:PORT`, or `tcp://HOST:PORT`)
//! or an RDMA one (`rdma://ADDR:PORT`, reached through rdma_cm over RoCE or InfiniBand).
//!
//! Where it sits: every place that takes a relay's or a standby's address (the primary's
//! relay list, `baton relay --listen`, the relay's standby link) parses it with
//! [`Endpoint::parse`], and [`crate::any::AnyConnection::connect`] picks the transport. A
//! build without the `rdma` feature parses `rdma://` addresses (so configurations stay
//! portable) but refuses to connect or listen on them with
//! [`crate::TransportError::RdmaNotBuilt`].

use core::fmt;
use core::str::FromStr;
use std::net::SocketAddr;

/// URL scheme of an RDMA address.
pub const RDMA_SCHEME: &str = "rdma://";
/// URL scheme of a TCP address (optional: a bare `HOST:PORT` is TCP).
pub const TCP_SCHEME: &str = "tcp://";

/// A transport and an IP address with port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// Non-blocking TCP sockets ([`crate::tcp`]).
    Tcp(SocketAddr),
    /// RDMA verbs over an RC queue pair set up by rdma_cm (`rdma` feature).
    Rdma(SocketAddr),
}

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The part after the scheme is not `IP:PORT`.
    #[error("{input:?} is not an address: expected IP:PORT, tcp://IP:PORT or rdma://IP:PORT")]
    BadAddress {
        /// What was given.
        input: String,
    },
    /// A scheme other than `tcp://` or `rdma://`.
    #[error("{input:?}: unknown scheme (expected tcp:// or rdma://)")]
    UnknownScheme {
        /// What was given.
        input: String,
    },
}

impl Endpoint {
    /// Parses `IP:PORT`, `tcp://IP:PORT` or `rdma://IP:PORT` (IPv6 as `[ADDR]:PORT`).
    pub fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        let s = s.trim();
        let bad = || EndpointError::BadAddress { input: s.to_string() };
        if let Some(rest) = s.strip_prefix(RDMA_SCHEME) {
            return rest.parse().map(Endpoint::Rdma).map_err(|_| bad());
        }
        if let Some(rest) = s.strip_prefix(TCP_SCHEME) {
            return rest.parse().map(Endpoint::Tcp).map_err(|_| bad());
        }
        if s.contains("://") {
            return Err(EndpointError::UnknownScheme { input: s.to_string() });
        }
        s.parse().map(Endpoint::Tcp).map_err(|_| bad())
    }

    /// The IP address and port, whatever the transport.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Endpoint::Tcp(a) | Endpoint::Rdma(a) => a,
        }
    }

    /// True for an RDMA endpoint.
    pub fn is_rdma(&self) -> bool {
        matches!(self, Endpoint::Rdma(_))
    }

    /// The same transport at another address (e.g. the bound port of a port-0 listener).
    pub fn with_addr(&self, addr: SocketAddr) -> Endpoint {
        match self {
            Endpoint::Tcp(_) => Endpoint::Tcp(addr),
            Endpoint::Rdma(_) => Endpoint::Rdma(addr),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Tcp(a)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// TCP prints as a bare `IP:PORT` (as before RDMA existed, so status output is unchanged);
/// RDMA as `rdma://IP:PORT`, which parses back.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Rdma(a) => write!(f, "{RDMA_SCHEME}{a}"),
        }
    }
}

impl PartialEq<SocketAddr> for Endpoint {
    fn eq(&self, other: &SocketAddr) -> bool {
        matches!(self, Endpoint::Tcp(a) if a == other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_transports_and_prints_back() {
        let t = Endpoint::parse("127.0.0.1:4420").unwrap();
        assert_eq!(t, Endpoint::Tcp("127.0.0.1:4420".parse().unwrap()));
        assert_eq!(t.to_string(), "127.0.0.1:4420");
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.2:1").unwrap(),
            Endpoint::Tcp("10.0.0.2:1".parse().unwrap())
        );
        let r = Endpoint::parse(" rdma://192.0.2.1:4500 ").unwrap();
        assert_eq!(r, Endpoint::Rdma("192.0.2.1:4500".parse().unwrap()));
        assert!(r.is_rdma());
        assert_eq!(r.to_string(), "rdma://192.0.2.1:4500");
        assert_eq!(r.to_string().parse::<Endpoint>().unwrap(), r);
        let v6 = Endpoint::parse("rdma://[::1]:7").unwrap();
        assert_eq!(v6.addr(), "[::1]:7".parse().unwrap());
        assert_eq!(
            r.with_addr("192.0.2.1:9".parse().unwrap()).to_string(),
            "rdma://192.0.2.1:9"
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "rdma://",
            "rdma://host",
            "rdma://1.2.3.4",
            "1.2.3.4:99999",
            "tcp://x:1",
            "localhost:1",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(EndpointError::BadAddress { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Endpoint::parse("iwarp://1.2.3.4:5"),
            Err(EndpointError::UnknownScheme { .. })
        ));
        let e = Endpoint::parse("rdma://nope").unwrap_err().to_string();
        assert!(e.contains("rdma://IP:PORT"), "{e}");
    }
}
