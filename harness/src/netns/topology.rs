//! A layer-2 segment: one bridge in a "switch" namespace, hosts attached by veth pairs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;

use super::{Netns, NetnsError, Result};

/// Name of the bridge inside the switch namespace.
const BRIDGE: &str = "br0";
/// Name of every host's interface towards the switch.
pub const HOST_IF: &str = "eth0";

/// A bridge in its own namespace that hosts are plugged into.
///
/// Dropping it deletes the switch namespace, which deletes the switch ends of every veth and
/// therefore every host's `eth0`; each [`Host`] deletes its own namespace when dropped.
#[derive(Debug)]
pub struct Topology {
    switch: Netns,
    next_port: AtomicU32,
}

/// One host: a namespace whose `eth0` is plugged into the topology's bridge.
#[derive(Debug)]
pub struct Host {
    ns: Netns,
    switch: String,
    port: String,
}

/// One entry of a host's neighbour table, as `ip -j neigh` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Link-layer address, lower case `aa:bb:cc:dd:ee:ff`; `None` while unresolved.
    pub mac: Option<String>,
    /// NUD states such as `REACHABLE`, `STALE`, `FAILED`, `INCOMPLETE`.
    pub state: Vec<String>,
}

impl Topology {
    /// Creates the switch namespace with a bridge that forwards at once (no STP) and floods
    /// multicast (no snooping, so NDP works without an MLD querier).
    pub fn new() -> Result<Topology> {
        let switch = Netns::new("lds")?;
        switch.exec_ok(
            "ip",
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        switch.exec_ok("ip", &["link", "set", BRIDGE, "up"])?;
        Ok(Topology {
            switch,
            next_port: AtomicU32::new(0),
        })
    }

    /// The switch namespace (e.g. to capture traffic on the bridge).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Adds a host namespace named after `name` with `eth0` plugged into the bridge, up, and
    /// carrying the given addresses. IPv6 addresses are added `nodad` and DAD is off for the
    /// link-local address too, so nothing waits for duplicate address detection.
    pub fn add_host(&self, name: &str, v4: Option<IpNet>, v6: Option<IpNet>) -> Result<Host> {
        let ns = Netns::new(name)?;
        // Must precede the creation of eth0: a new interface copies the "default" settings.
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        // Created inside the switch namespace with the peer sent straight into the host, so
        // nothing ever appears in the namespace the tests run in.
        self.switch.exec_ok(
            "ip",
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IF,
                "netns",
                ns.name(),
            ],
        )?;
        let host = Host {
            ns,
            switch: self.switch.name().to_owned(),
            port,
        };
        self.switch
            .exec_ok("ip", &["link", "set", &host.port, "master", BRIDGE, "up"])?;
        if let Some(v4) = v4 {
            host.ns
                .exec_ok("ip", &["addr", "add", &v4.to_string(), "dev", HOST_IF])?;
        }
        if let Some(v6) = v6 {
            host.ns.exec_ok(
                "ip",
                &["addr", "add", &v6.to_string(), "dev", HOST_IF, "nodad"],
            )?;
        }
        host.ns.exec_ok("ip", &["link", "set", HOST_IF, "up"])?;
        host.wait_operational()?;
        Ok(host)
    }
}

impl Host {
    /// The host's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Name of the switch-side veth end (in the switch namespace).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// Pulls the cable: downs the switch side, so the host's `eth0` loses carrier but stays
    /// administratively up.
    pub fn link_down(&self) -> Result<()> {
        super::run(
            "ip",
            &["-n", &self.switch, "link", "set", &self.port, "down"],
        )
        .map(drop)
    }

    /// Cuts the host off the segment without it noticing: its port leaves the bridge, so frames
    /// go nowhere, but both ends of the cable stay up (no carrier loss, unlike
    /// [`Host::link_down`]). What a failed switch port or a partition looks like.
    pub fn partition(&self) -> Result<()> {
        super::run(
            "ip",
            &["-n", &self.switch, "link", "set", &self.port, "nomaster"],
        )
        .map(drop)
    }

    /// Ends [`Host::partition`]: the port joins the bridge again.
    pub fn heal(&self) -> Result<()> {
        super::run(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "set",
                &self.port,
                "master",
                BRIDGE,
            ],
        )
        .map(drop)
    }

    /// Plugs the cable back in (switch side up); returns once both ends are operational.
    pub fn link_up(&self) -> Result<()> {
        super::run("ip", &["-n", &self.switch, "link", "set", &self.port, "up"])?;
        self.wait_operational()
    }

    /// Waits until both ends of the host's veth report operational state UP. The kernel
    /// applies carrier changes through its link-watch work, up to a second after the fact;
    /// until then frames are dropped, which would make a test's first packet a coin toss.
    pub fn wait_operational(&self) -> Result<()> {
        const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);
        let start = std::time::Instant::now();
        loop {
            let host_up = operstate(&self.link_json()?) == Some("UP");
            let port = super::run(
                "ip",
                &["-j", "-n", &self.switch, "link", "show", &self.port],
            )?;
            let port_up = serde_json::from_str::<serde_json::Value>(&port)
                .ok()
                .and_then(|v| v.get(0).cloned())
                .is_some_and(|v| operstate(&v) == Some("UP"));
            if host_up && port_up {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(NetnsError::Parse {
                    command: "ip -j link show".into(),
                    reason: format!("{} did not become operational", self.ns.name()),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `ip link set eth0 down` on the host itself.
    pub fn host_link_down(&self) -> Result<()> {
        self.ns
            .exec_ok("ip", &["link", "set", HOST_IF, "down"])
            .map(drop)
    }

    /// `ip link set eth0 up` on the host itself; returns once both ends are operational.
    pub fn host_link_up(&self) -> Result<()> {
        self.ns.exec_ok("ip", &["link", "set", HOST_IF, "up"])?;
        self.wait_operational()
    }

    fn link_json(&self) -> Result<serde_json::Value> {
        let cmd = "ip -j link show eth0";
        let out = self.ns.exec_ok("ip", &["-j", "link", "show", HOST_IF])?;
        let parsed: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| NetnsError::Parse {
                command: cmd.into(),
                reason: e.to_string(),
            })?;
        parsed.get(0).cloned().ok_or_else(|| NetnsError::Parse {
            command: cmd.into(),
            reason: "empty list".into(),
        })
    }

    /// MAC address of the host's `eth0`, lower case `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self) -> Result<String> {
        let link = self.link_json()?;
        link.get("address")
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .ok_or_else(|| NetnsError::Parse {
                command: "ip -j link show eth0".into(),
                reason: "no address".into(),
            })
    }

    /// Interface index of the host's `eth0`.
    pub fn ifindex(&self) -> Result<u32> {
        let link = self.link_json()?;
        link.get("ifindex")
            .and_then(|a| a.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| NetnsError::Parse {
                command: "ip -j link show eth0".into(),
                reason: "no ifindex".into(),
            })
    }

    /// The host's neighbour-table entry for `ip` on `eth0`, if any.
    pub fn neigh(&self, ip: IpAddr) -> Result<Option<Neighbour>> {
        let ip = ip.to_string();
        let out = self
            .ns
            .exec_ok("ip", &["-j", "neigh", "show", "to", &ip, "dev", HOST_IF])?;
        parse_neigh(&out, &ip)
    }

    /// Empties the host's neighbour table on `eth0`.
    pub fn flush_neigh(&self) -> Result<()> {
        self.ns
            .exec_ok("ip", &["neigh", "flush", "dev", HOST_IF])
            .map(drop)
    }

    /// One ping with a one-second timeout; `true` when a reply came back.
    ///
    /// Useful mostly for its side effect: the kernel resolves `ip` by ARP/NDP first.
    pub fn ping(&self, ip: IpAddr) -> Result<bool> {
        let ip = ip.to_string();
        let args = ["-c1", "-W1", "-n", ip.as_str()];
        let out = self.ns.exec("ping", &args)?;
        // iputils ping exits 1 when no reply came; anything else (2, or `ip netns exec`
        // failing to find ping) is a broken setup, not an answer.
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(NetnsError::Command {
                command: format!("ping {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    }

    /// Pings `ip` (one-second timeout each) until a reply comes back or `deadline` has passed.
    ///
    /// For right after a link change: the kernel applies carrier changes through its
    /// link-watch work, which may lag by up to a second, so a single ping can be lost.
    pub fn ping_until(&self, ip: IpAddr, deadline: std::time::Duration) -> Result<bool> {
        let start = std::time::Instant::now();
        loop {
            if self.ping(ip)? {
                return Ok(true);
            }
            if start.elapsed() >= deadline {
                return Ok(false);
            }
            // A ping can fail fast (e.g. an unreachable error): do not spin.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn operstate(link: &serde_json::Value) -> Option<&str> {
    link.get("operstate").and_then(|s| s.as_str())
}

/// Parses `ip -j neigh show` output (iproute2 prints `[]` or nothing when empty).
fn parse_neigh(out: &str, ip: &str) -> Result<Option<Neighbour>> {
    let bad = |reason: String| NetnsError::Parse {
        command: "ip -j neigh show".into(),
        reason,
    };
    if out.trim().is_empty() {
        return Ok(None);
    }
    let parsed: serde_json::Value = serde_json::from_str(out).map_err(|e| bad(e.to_string()))?;
    let entries = parsed.as_array().ok_or_else(|| bad("not a list".into()))?;
    let Some(entry) = entries
        .iter()
        .find(|e| e.get("dst").and_then(|d| d.as_str()) == Some(ip))
    else {
        return Ok(None);
    };
    let mac = entry
        .get("lladdr")
        .and_then(|m| m.as_str())
        .map(str::to_ascii_lowercase);
    let state = entry
        .get("state")
        .and_then(|s| s.as_array())
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Neighbour { mac, state }))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn parses_neigh_json() {
        let out = r#"[{"dst":"192.0.2.1","dev":"eth0","lladdr":"AA:bb:cc:dd:ee:01","state":["REACHABLE"]},
                     {"dst":"192.0.2.2","dev":"eth0","state":["FAILED"]}]"#;
        let n = parse_neigh(out, "192.0.2.1").unwrap().unwrap();
        assert_eq!(n.mac.as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert_eq!(n.state, vec!["REACHABLE".to_string()]);
        let f = parse_neigh(out, "192.0.2.2").unwrap().unwrap();
        assert_eq!(f.mac, None);
        assert_eq!(f.state, vec!["FAILED".to_string()]);
        assert_eq!(parse_neigh(out, "192.0.2.3").unwrap(), None);
        assert_eq!(parse_neigh("", "192.0.2.3").unwrap(), None);
        assert_eq!(parse_neigh("[]", "192.0.2.3").unwrap(), None);
        assert!(parse_neigh("{", "192.0.2.3").is_err());
    }
}
