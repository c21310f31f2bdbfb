//! Network namespaces joined by veth pairs, for the network fault tests
//! (`docs/faults.md`): one namespace per site, one veth pair per link between two sites,
//! each link its own /30 from the documentation range 192.0.2.0/24. A link is cut by
//! setting both ends down and healed by setting them up again (no qdisc needed); `tc netem`
//! delay, loss and reordering go on a link's two ends where the kernel has `sch_netem`.
//! Every namespace (and so every veth) is deleted on drop, also when a test panics; ones a
//! killed test left behind are deleted by the next [`Net::new`].

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Primary, RelayProc, StandbyProc, TempDir};

/// Nets made by this process (several tests may run at once: each its own namespaces).
static NETS: AtomicUsize = AtomicUsize::new(0);

/// The sites and links of one test. Namespace names are `btn<pid>-<n><site>`.
pub struct Net {
    prefix: String,
    sites: Vec<String>,
    links: Vec<NetLink>,
}

struct NetLink {
    a: String,
    b: String,
    dev_a: String,
    dev_b: String,
    ip_a: String,
    ip_b: String,
}

/// Runs `ip ARGS` (or `tc`), returning its stderr on failure.
fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespace tests cannot run here (not root, no `ip`), or `None` when they can.
pub fn unavailable() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` (iproute2) on this machine".into()),
    }
}

/// Whether `tc qdisc … netem` works here (the kernel has `sch_netem`): tried on the
/// loopback of a scratch namespace. `Err` says why not.
pub fn netem_available() -> Result<(), String> {
    let ns = format!("btn{}-probe", std::process::id());
    run("ip", &["netns", "add", &ns])?;
    let r = run(
        "ip",
        &[
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ],
    );
    let _ = run("ip", &["netns", "del", &ns]);
    r
}

/// Deletes namespaces named `btn<pid>-…` whose test process is gone.
fn delete_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("btn").and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

impl Net {
    /// Creates a namespace per site (loopback up) and a veth pair per link.
    pub fn new(sites: &[&str], links: &[(&str, &str)]) -> Result<Net, String> {
        delete_stale();
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed) % 10;
        let mut net = Net {
            prefix: format!("btn{pid}-{n}"),
            sites: Vec::new(),
            links: Vec::new(),
        };
        for s in sites {
            let ns = net.ns(s);
            run("ip", &["netns", "add", &ns])?;
            net.sites.push(s.to_string());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (k, (a, b)) in links.iter().enumerate() {
            let l = NetLink {
                a: a.to_string(),
                b: b.to_string(),
                dev_a: format!("b{n}{k}a{}", pid % 100_000),
                dev_b: format!("b{n}{k}b{}", pid % 100_000),
                ip_a: format!("192.0.2.{}", 4 * k + 1),
                ip_b: format!("192.0.2.{}", 4 * k + 2),
            };
            let (na, nb) = (net.ns(a), net.ns(b));
            run(
                "ip",
                &[
                    "link", "add", &l.dev_a, "netns", &na, "type", "veth", "peer", "name", &l.dev_b, "netns", &nb,
                ],
            )?;
            for (ns, dev, ip) in [(&na, &l.dev_a, &l.ip_a), (&nb, &l.dev_b, &l.ip_b)] {
                run("ip", &["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev])?;
                run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            }
            net.links.push(l);
        }
        Ok(net)
    }

    /// The namespace of `site`.
    pub fn ns(&self, site: &str) -> String {
        format!("{}{site}", self.prefix)
    }

    fn link(&self, a: &str, b: &str) -> (&NetLink, bool) {
        self.links
            .iter()
            .find_map(|l| {
                if l.a == a && l.b == b {
                    Some((l, true))
                } else if l.a == b && l.b == a {
                    Some((l, false))
                } else {
                    None
                }
            })
            .unwrap_or_else(|| panic!("no link {a} - {b}"))
    }

    /// `site`'s address on its link to `peer`.
    pub fn ip(&self, site: &str, peer: &str) -> String {
        let (l, fwd) = self.link(site, peer);
        if fwd {
            l.ip_a.clone()
        } else {
            l.ip_b.clone()
        }
    }

    fn ends(&self, a: &str, b: &str) -> [(String, String); 2] {
        let (l, _) = self.link(a, b);
        [(self.ns(&l.a), l.dev_a.clone()), (self.ns(&l.b), l.dev_b.clone())]
    }

    /// Partitions `a` from `b`: both ends of their link down.
    pub fn cut(&self, a: &str, b: &str) {
        for (ns, dev) in self.ends(a, b) {
            run("ip", &["-n", &ns, "link", "set", &dev, "down"]).unwrap();
        }
    }

    /// Heals a [`Net::cut`].
    pub fn heal(&self, a: &str, b: &str) {
        for (ns, dev) in self.ends(a, b) {
            run("ip", &["-n", &ns, "link", "set", &dev, "up"]).unwrap();
        }
    }

    /// Puts `netem ARGS` (e.g. `delay 10ms loss 2%`) on both ends of the link `a` - `b`,
    /// replacing what was there: each direction gets it once.
    pub fn netem(&self, a: &str, b: &str, args: &str) -> Result<(), String> {
        for (ns, dev) in self.ends(a, b) {
            let mut v = vec!["-n", &ns, "qdisc", "replace", "dev", &dev, "root", "netem"];
            v.extend(args.split_whitespace());
            run("tc", &v)?;
        }
        Ok(())
    }

    /// Takes the netem qdiscs off the link `a` - `b`.
    pub fn clear(&self, a: &str, b: &str) {
        for (ns, dev) in self.ends(a, b) {
            let _ = run("tc", &["-n", &ns, "qdisc", "del", "dev", &dev, "root"]);
        }
    }

    /// `tc -s qdisc` of `site`'s end of the link to `peer` (its drop and reorder counts).
    pub fn qdisc_stats(&self, site: &str, peer: &str) -> String {
        let (l, fwd) = self.link(site, peer);
        let (ns, dev) = if fwd {
            (self.ns(&l.a), &l.dev_a)
        } else {
            (self.ns(&l.b), &l.dev_b)
        };
        Command::new("tc")
            .args(["-n", &ns, "-s", "qdisc", "show", "dev", dev])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// Where the roles of one cluster run, and with what: relay k listens on its site's
/// address towards the primary, port 4501 + k, and forwards to the standby's address on
/// its own link to it; the standby listens on every address of its site, port 4600.
pub struct Layout<'a> {
    pub primary: &'a str,
    pub standby: &'a str,
    /// Each relay's site and extra `baton relay` arguments.
    pub relays: Vec<(&'a str, Vec<String>)>,
    pub standby_args: Vec<String>,
    pub primary_env: Vec<(&'static str, String)>,
}

/// The roles of one cluster, each in its site's namespace; killed on drop.
pub struct Cluster {
    pub sb: StandbyProc,
    pub relays: Vec<RelayProc>,
    pub p: Primary,
    _dirs: Vec<TempDir>,
}

impl Net {
    /// Starts the standby, the relays and the primary child of `layout` (directories under
    /// /dev/shm named after `tag`).
    pub fn start(&self, tag: &str, layout: &Layout) -> Cluster {
        let sd = TempDir::new("/dev/shm", &format!("{tag}-s"));
        let args: Vec<&str> = layout.standby_args.iter().map(String::as_str).collect();
        let sb = StandbyProc::start_at(&sd.0, "0.0.0.0", 4600, &args, Some(&self.ns(layout.standby)));
        let mut dirs = vec![sd];
        let mut relays = Vec::new();
        for (k, (site, extra)) in layout.relays.iter().enumerate() {
            let d = TempDir::new("/dev/shm", &format!("{tag}-r{k}"));
            let standby = format!("{}:4600", self.ip(layout.standby, site));
            let mut args = vec!["--standby", &standby, "--no-direct"];
            args.extend(extra.iter().map(String::as_str));
            let ip = self.ip(site, layout.primary);
            relays.push(RelayProc::start_at(
                &d.0,
                &ip,
                4501 + k as u16,
                &args,
                Some(&self.ns(site)),
            ));
            dirs.push(d);
        }
        let addrs: Vec<String> = relays.iter().map(RelayProc::addr).collect();
        let p = Primary::start_with(&addrs, &layout.primary_env, Some(&self.ns(layout.primary)));
        Cluster {
            sb,
            relays,
            p,
            _dirs: dirs,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers.
        for s in &self.sites {
            let _ = run("ip", &["netns", "del", &self.ns(s)]);
        }
    }
}
