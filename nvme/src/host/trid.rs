//! Transport ID strings, as `spdk_nvme_perf -r` and SPDK's `spdk_nvme_transport_id_parse`
//! take them: whitespace-separated `key:value` (or `key=value`) pairs, e.g.
//!
//! `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1 ns:1`
//!
//! Keys are case-insensitive, and so are the values of `trtype` and `adrfam`.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `trtype` | transport: `TCP`, or `RDMA` (needs the `rdma` cargo feature to connect) | required |
//! | `adrfam` | `IPv4` or `IPv6` | from `traddr` |
//! | `traddr` | address (IP literal or host name) | required |
//! | `trsvcid` | port | 4420 |
//! | `subnqn` | subsystem NQN | none: ask the discovery service and take the first NVM subsystem |
//! | `hostnqn` | host NQN | the host library's default |
//! | `ns` | namespace ID | the first active namespace |
//! | `priority` | accepted and ignored (SPDK: TCP socket priority) | |

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use thiserror::Error;

/// The default NVMe/TCP I/O port.
pub const TRSVCID_DEFAULT: u16 = 4420;
/// Longest transport ID string accepted.
pub const TRID_BYTES_MAX: usize = 4096;
/// Longest NQN (NVMe base specification: 223 bytes).
pub const NQN_BYTES_MAX: usize = 223;

/// Errors of [`TransportId::parse`] and [`TransportId::socket_addr`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TridError {
    #[error("transport ID is empty")]
    Empty,
    #[error("transport ID is longer than {TRID_BYTES_MAX} bytes")]
    TooLong,
    #[error("transport ID part {0:?} is not key:value")]
    NotKeyValue(String),
    #[error(
        "unknown transport ID key {0:?} (expected trtype, adrfam, traddr, trsvcid, subnqn, hostnqn, ns, priority)"
    )]
    UnknownKey(String),
    #[error("transport ID key {0:?} is given twice")]
    Duplicate(String),
    #[error("transport ID lacks {0} (e.g. 'trtype:TCP traddr:127.0.0.1 trsvcid:4420')")]
    Missing(&'static str),
    #[error("transport ID {key}: {why}")]
    BadValue { key: &'static str, why: String },
    #[error("trtype {0:?} is not supported by baton's host (TCP or RDMA)")]
    Unsupported(String),
    #[error("cannot resolve traddr {addr:?}: {why}")]
    Resolve { addr: String, why: String },
}

/// What connecting an RDMA queue pair says in a build without the `rdma` feature.
pub const RDMA_FEATURE_MISSING: &str =
    "trtype RDMA: this build has no NVMe/RDMA host (build baton with the `rdma` cargo feature)";

/// The transport of a transport ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trtype {
    #[default]
    Tcp,
    Rdma,
}

impl Trtype {
    /// SPDK's spelling (`TCP`, `RDMA`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trtype::Tcp => "TCP",
            Trtype::Rdma => "RDMA",
        }
    }

    /// Parses SPDK's spelling, case-insensitively.
    pub fn parse(v: &str) -> Option<Trtype> {
        if v.eq_ignore_ascii_case("tcp") {
            Some(Trtype::Tcp)
        } else if v.eq_ignore_ascii_case("rdma") {
            Some(Trtype::Rdma)
        } else {
            None
        }
    }
}

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adrfam {
    IPv4,
    IPv6,
}

/// A parsed transport ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportId {
    pub trtype: Trtype,
    pub adrfam: Option<Adrfam>,
    pub traddr: String,
    pub trsvcid: u16,
    pub subnqn: Option<String>,
    pub hostnqn: Option<String>,
    pub nsid: Option<u32>,
}

fn bad(key: &'static str, why: impl Into<String>) -> TridError {
    TridError::BadValue { key, why: why.into() }
}

fn nqn(key: &'static str, v: &str) -> Result<String, TridError> {
    if v.is_empty() || v.len() > NQN_BYTES_MAX {
        return Err(bad(
            key,
            format!("an NQN is 1 to {NQN_BYTES_MAX} bytes, got {}", v.len()),
        ));
    }
    Ok(v.to_string())
}

impl TransportId {
    /// Parses a transport ID string. See the module docs.
    pub fn parse(s: &str) -> Result<TransportId, TridError> {
        if s.len() > TRID_BYTES_MAX {
            return Err(TridError::TooLong);
        }
        if s.trim().is_empty() {
            return Err(TridError::Empty);
        }
        let mut seen: Vec<String> = Vec::new();
        let mut trtype = None;
        let mut t = TransportId {
            trtype: Trtype::Tcp,
            adrfam: None,
            traddr: String::new(),
            trsvcid: TRSVCID_DEFAULT,
            subnqn: None,
            hostnqn: None,
            nsid: None,
        };
        let mut have_traddr = false;
        for part in s.split_whitespace() {
            let (k, v) = part
                .split_once([':', '='])
                .ok_or_else(|| TridError::NotKeyValue(part.to_string()))?;
            let key = k.to_ascii_lowercase();
            if key.is_empty() {
                return Err(TridError::NotKeyValue(part.to_string()));
            }
            if seen.contains(&key) {
                return Err(TridError::Duplicate(key));
            }
            seen.push(key.clone());
            match key.as_str() {
                "trtype" => {
                    t.trtype = Trtype::parse(v).ok_or_else(|| TridError::Unsupported(v.to_string()))?;
                    trtype = Some(());
                }
                "adrfam" => {
                    t.adrfam = Some(if v.eq_ignore_ascii_case("ipv4") {
                        Adrfam::IPv4
                    } else if v.eq_ignore_ascii_case("ipv6") {
                        Adrfam::IPv6
                    } else {
                        return Err(bad("adrfam", format!("{v:?} is not IPv4 or IPv6")));
                    });
                }
                "traddr" => {
                    if v.is_empty() || v.len() > 256 {
                        return Err(bad("traddr", "empty or longer than 256 bytes"));
                    }
                    t.traddr = v.trim_start_matches('[').trim_end_matches(']').to_string();
                    have_traddr = true;
                }
                "trsvcid" => {
                    t.trsvcid = v
                        .parse::<u16>()
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| bad("trsvcid", format!("{v:?} is not a port (1-65535)")))?;
                }
                "subnqn" => t.subnqn = Some(nqn("subnqn", v)?),
                "hostnqn" => t.hostnqn = Some(nqn("hostnqn", v)?),
                "ns" => {
                    t.nsid = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|&n| n != 0 && n != u32::MAX)
                            .ok_or_else(|| bad("ns", format!("{v:?} is not a namespace ID (1-4294967294)")))?,
                    );
                }
                "priority" => {
                    v.parse::<i32>()
                        .map_err(|_| bad("priority", format!("{v:?} is not an integer")))?;
                }
                _ => return Err(TridError::UnknownKey(k.to_string())),
            }
        }
        if trtype.is_none() {
            return Err(TridError::Missing("trtype"));
        }
        if !have_traddr {
            return Err(TridError::Missing("traddr"));
        }
        if let (Some(fam), Ok(ip)) = (t.adrfam, t.traddr.parse::<IpAddr>()) {
            if (fam == Adrfam::IPv4) != ip.is_ipv4() {
                return Err(bad("adrfam", format!("{fam:?} does not match traddr {}", t.traddr)));
            }
        }
        Ok(t)
    }

    /// The target's socket address (resolves a host name; honours `adrfam`). Blocks on DNS
    /// for names: management path.
    pub fn socket_addr(&self) -> Result<SocketAddr, TridError> {
        if let Ok(ip) = self.traddr.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.trsvcid));
        }
        let resolve = |why: String| TridError::Resolve {
            addr: self.traddr.clone(),
            why,
        };
        (self.traddr.as_str(), self.trsvcid)
            .to_socket_addrs()
            .map_err(|e| resolve(e.to_string()))?
            .find(|a| match self.adrfam {
                Some(Adrfam::IPv4) => a.is_ipv4(),
                Some(Adrfam::IPv6) => a.is_ipv6(),
                None => true,
            })
            .ok_or_else(|| resolve("no address of the requested family".into()))
    }
}

impl std::fmt::Display for TransportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trtype:{}", self.trtype.as_str())?;
        match self.adrfam {
            Some(Adrfam::IPv4) => write!(f, " adrfam:IPv4")?,
            Some(Adrfam::IPv6) => write!(f, " adrfam:IPv6")?,
            None => {}
        }
        write!(f, " traddr:{} trsvcid:{}", self.traddr, self.trsvcid)?;
        if let Some(n) = &self.subnqn {
            write!(f, " subnqn:{n}")?;
        }
        if let Some(n) = &self.hostnqn {
            write!(f, " hostnqn:{n}")?;
        }
        if let Some(n) = self.nsid {
            write!(f, " ns:{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good() {
        let t = TransportId::parse(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4421 subnqn:nqn.2016-06.io.spdk:cnode1 ns:2",
        )
        .unwrap();
        assert_eq!(t.adrfam, Some(Adrfam::IPv4));
        assert_eq!(t.traddr, "127.0.0.1");
        assert_eq!(t.trsvcid, 4421);
        assert_eq!(t.subnqn.as_deref(), Some("nqn.2016-06.io.spdk:cnode1"));
        assert_eq!(t.nsid, Some(2));
        assert_eq!(t.socket_addr().unwrap(), "127.0.0.1:4421".parse().unwrap());
        // Case-insensitive keys and trtype/adrfam values, `=` separators, defaults.
        let t = TransportId::parse("TRTYPE=tcp  AdrFam:ipv4\ttraddr:10.0.0.1").unwrap();
        assert_eq!((t.trsvcid, t.subnqn, t.nsid), (4420, None, None));
        let t = TransportId::parse("trtype:TCP adrfam:IPv6 traddr:[::1] trsvcid:4420 priority:0").unwrap();
        assert_eq!(t.socket_addr().unwrap(), "[::1]:4420".parse().unwrap());
        // Display round-trips.
        let t = TransportId::parse("trtype:tcp traddr:127.0.0.1 subnqn:nqn.x hostnqn:nqn.h ns:3").unwrap();
        assert_eq!(TransportId::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn bad_keys_and_values() {
        let p = TransportId::parse;
        assert_eq!(
            p("trtype:TCP traddr:127.0.0.1 colour:red"),
            Err(TridError::UnknownKey("colour".into()))
        );
        let e = p("trtype:TCP traddr:127.0.0.1 colour:red").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        assert_eq!(p("trtype:TCP trsvcid:4420"), Err(TridError::Missing("traddr")));
        assert!(p("trtype:TCP trsvcid:4420").unwrap_err().to_string().contains("traddr"));
        assert_eq!(p("traddr:127.0.0.1"), Err(TridError::Missing("trtype")));
        assert_eq!(p("trtype:FC traddr:1.2.3.4"), Err(TridError::Unsupported("FC".into())));
        let r = p("trtype:rdma adrfam:IPv4 traddr:192.0.2.1 trsvcid:4420 subnqn:nqn.x").unwrap();
        assert_eq!(r.trtype, Trtype::Rdma);
        assert_eq!(
            r.to_string(),
            "trtype:RDMA adrfam:IPv4 traddr:192.0.2.1 trsvcid:4420 subnqn:nqn.x"
        );
        assert_eq!(TransportId::parse(&r.to_string()), Ok(r));
        assert_eq!(p(""), Err(TridError::Empty));
        assert_eq!(
            p("trtype:TCP traddr:1.2.3.4 traddr:1.2.3.5"),
            Err(TridError::Duplicate("traddr".into()))
        );
        assert!(matches!(p("trtype:TCP traddr"), Err(TridError::NotKeyValue(_))));
        assert!(matches!(
            p("trtype:TCP :x traddr:1.1.1.1"),
            Err(TridError::NotKeyValue(_))
        ));
        for s in [
            "trtype:TCP traddr:1.2.3.4 trsvcid:0",
            "trtype:TCP traddr:1.2.3.4 trsvcid:70000",
            "trtype:TCP traddr:1.2.3.4 trsvcid:x",
            "trtype:TCP traddr:1.2.3.4 ns:0",
            "trtype:TCP traddr:1.2.3.4 ns:-1",
            "trtype:TCP traddr:1.2.3.4 adrfam:IPX",
            "trtype:TCP traddr:1.2.3.4 adrfam:IPv6",
            "trtype:TCP traddr: ",
            "trtype:TCP traddr:1.2.3.4 subnqn:",
            "trtype:TCP traddr:1.2.3.4 priority:high",
        ] {
            assert!(matches!(p(s), Err(TridError::BadValue { .. })), "{s}: {:?}", p(s));
        }
        assert_eq!(p(&"x".repeat(TRID_BYTES_MAX + 1)), Err(TridError::TooLong));
    }

    /// Random and truncated input never panics (the fuzzing rule for parsers of input).
    #[test]
    fn random_input_never_panics() {
        let good = "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.a:b ns:1";
        for n in 0..=good.len() {
            let _ = TransportId::parse(&good[..n]);
        }
        let alphabet = b"trtypeTCPadrfamIPv46:= \t.0123456789nsqubnhoxyz[]-";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()] as char)
                .collect();
            if let Ok(t) = TransportId::parse(&s) {
                assert!(!t.traddr.is_empty());
            }
        }
    }
}
