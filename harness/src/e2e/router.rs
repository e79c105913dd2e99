//! Real routers as BGP peers: FRR (`zebra`, `bgpd`, `bfdd`), BIRD 2 and GoBGP (`gobgpd`, which
//! keeps routes in its RIB and installs none in the kernel) from Debian's packages, each run inside a host namespace of a [`Topology`](crate::netns::Topology) with
//! its configuration, pid files and control sockets in a temporary directory (never `/etc/frr`
//! or `/run/frr`).
//!
//! The router forwards between its link and the client, spreads flows over equal-cost paths
//! by their ports (`fib_multipath_hash_policy=1`) and sends no ICMP redirects: on the lab's
//! single segment a redirect would teach the client to bypass the router.
//!
//! [`fib`] reads what the router's kernel forwards (`ip route`), [`spread`] sends many flows
//! from a namespace and counts which node answered each.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::{Host, Netns};

/// Which daemon a [`Router`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// FRR: zebra + bgpd + bfdd.
    Frr,
    /// BIRD 2.
    Bird,
    /// GoBGP's `gobgpd`.
    Gobgp,
}

/// A routing daemon running in a host namespace; stopped (with the namespace's processes)
/// when the host is dropped, its directory removed when this is dropped.
#[derive(Debug)]
pub struct Router {
    /// The router's namespace and link.
    pub host: Host,
    /// The daemon.
    pub kind: Kind,
    dir: tempfile::TempDir,
}

/// Makes `ns` a router: forwarding on, multipath hashed on ports, no redirects.
pub fn prepare_router(ns: &Netns) -> anyhow::Result<()> {
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv6.fib_multipath_hash_policy", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
    ] {
        ns.sysctl(k, v).with_context(|| format!("sysctl {k}"))?;
    }
    Ok(())
}

/// Makes a client namespace ignore redirects (IPv6 routers send them unconditionally).
pub fn ignore_redirects(ns: &Netns) -> anyhow::Result<()> {
    for k in [
        "net.ipv4.conf.all.accept_redirects",
        "net.ipv4.conf.eth0.accept_redirects",
        "net.ipv6.conf.all.accept_redirects",
        "net.ipv6.conf.eth0.accept_redirects",
    ] {
        ns.sysctl(k, "0").with_context(|| format!("sysctl {k}"))?;
    }
    Ok(())
}

fn frr_dir(dir: &Path) -> anyhow::Result<()> {
    // The daemons drop to user frr (in group frrvty, which vtysh needs); let them write here.
    let status = std::process::Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("chown frr:frr {} failed", dir.display());
    }
    Ok(())
}

fn wait_for_file(path: &Path, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!(
                "{what} did not start ({} missing); log:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Router {
    /// Starts FRR with the integrated configuration `conf` (as `docs/bgp.md` shows it): each
    /// daemon reads the whole file and skips what is not its own; `bfdd` runs when the file
    /// has a `bfd` section.
    pub fn frr(host: Host, conf: &str) -> anyhow::Result<Router> {
        prepare_router(host.ns())?;
        let dir = tempfile::Builder::new()
            .prefix("lodestone-frr-")
            .tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("zebra.conf"), "hostname router\n")?;
        std::fs::write(d.join("bgpd.conf"), conf)?;
        std::fs::write(d.join("bfdd.conf"), conf)?;
        frr_dir(d)?;
        let zserv = d.join("zserv.api");
        let dirs = d.to_string_lossy().into_owned();
        let zs = zserv.to_string_lossy().into_owned();
        let mut daemons = vec!["zebra", "bgpd"];
        if conf.lines().any(|l| l.trim_end() == "bfd") {
            daemons.push("bfdd");
        }
        for daemon in daemons {
            let conf = d
                .join(format!("{daemon}.conf"))
                .to_string_lossy()
                .into_owned();
            let pid = d
                .join(format!("{daemon}.pid"))
                .to_string_lossy()
                .into_owned();
            let log = d
                .join(format!("{daemon}.log"))
                .to_string_lossy()
                .into_owned();
            let log_arg = format!("file:{log}");
            let mut args = vec![
                "-f",
                &conf,
                "-i",
                &pid,
                "-z",
                &zs,
                "--vty_socket",
                &dirs,
                "-P",
                "0",
                "--log",
                &log_arg,
                "--log-level",
                "info",
            ];
            let ctl = d.join("bfdd.sock").to_string_lossy().into_owned();
            if daemon == "bfdd" {
                args.extend(["--bfdctl", ctl.as_str()]);
            }
            let bin = format!("/usr/lib/frr/{daemon}");
            host.ns().spawn_detached(&bin, &args)?;
            wait_for_file(&d.join(format!("{daemon}.vty")), daemon, Path::new(&log))?;
            if daemon == "zebra" {
                wait_for_file(&zserv, "zebra's zserv socket", Path::new(&log))?;
            }
        }
        Ok(Router {
            host,
            kind: Kind::Frr,
            dir,
        })
    }

    /// Starts BIRD 2 with `conf` (as `docs/bgp.md` shows it).
    pub fn bird(host: Host, conf: &str) -> anyhow::Result<Router> {
        prepare_router(host.ns())?;
        let dir = tempfile::Builder::new()
            .prefix("lodestone-bird-")
            .tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("bird.conf"), conf)?;
        let c = d.join("bird.conf").to_string_lossy().into_owned();
        let s = d.join("bird.ctl").to_string_lossy().into_owned();
        let p = d.join("bird.pid").to_string_lossy().into_owned();
        host.ns()
            .spawn_detached("bird", &["-f", "-c", &c, "-s", &s, "-P", &p])?;
        wait_for_file(&d.join("bird.ctl"), "bird", &d.join("bird.log"))?;
        Ok(Router {
            host,
            kind: Kind::Bird,
            dir,
        })
    }

    /// Starts `gobgpd` with the TOML configuration `conf` (as `docs/bgp.md` shows it); its gRPC
    /// API listens on the namespace's own loopback, where [`Router::gobgp_cli`] reaches it.
    pub fn gobgp(host: Host, conf: &str) -> anyhow::Result<Router> {
        prepare_router(host.ns())?;
        let dir = tempfile::Builder::new()
            .prefix("lodestone-gobgp-")
            .tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("gobgpd.toml"), conf)?;
        let script = format!(
            "exec gobgpd -f {} -t toml -p -l info --pprof-disable --api-hosts 127.0.0.1:50051 >{} 2>&1",
            d.join("gobgpd.toml").display(),
            d.join("gobgpd.log").display()
        );
        host.ns().spawn_detached("sh", &["-c", &script])?;
        let router = Router {
            host,
            kind: Kind::Gobgp,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while router.gobgp_cli(&["global"]).is_err() {
            if Instant::now() > deadline {
                bail!("gobgpd did not start; log:\n{}", router.log("gobgpd"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(router)
    }

    /// `gobgp args...` against this GoBGP.
    pub fn gobgp_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-u", "127.0.0.1", "-p", "50051"];
        all.extend_from_slice(args);
        Ok(self.host.ns().exec_ok("gobgp", &all)?)
    }

    /// The router's working directory (configuration, logs, sockets).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// `vtysh -c cmd` against this FRR.
    pub fn vtysh(&self, cmd: &str) -> anyhow::Result<String> {
        let d = self.dir.path().to_string_lossy().into_owned();
        Ok(self
            .host
            .ns()
            .exec_ok("vtysh", &["--vty_socket", &d, "-c", cmd])?)
    }

    /// `birdc cmd` against this BIRD.
    pub fn birdc(&self, cmd: &str) -> anyhow::Result<String> {
        let s = self
            .dir
            .path()
            .join("bird.ctl")
            .to_string_lossy()
            .into_owned();
        let mut args = vec!["-s", s.as_str()];
        args.extend(cmd.split_whitespace());
        Ok(self.host.ns().exec_ok("birdc", &args)?)
    }

    /// The whole log of one daemon (`bgpd`, `bfdd`, `zebra`, `gobgpd`), empty when it has none.
    pub fn log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{daemon}.log"))).unwrap_or_default()
    }

    /// Whatever the daemon logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    out.push_str(&format!("==== {} ====\n", p.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// The kernel routes the router forwards with: prefix → next hops.
    pub fn fib(&self) -> anyhow::Result<BTreeMap<String, Vec<IpAddr>>> {
        fib(self.host.ns())
    }

    /// Polls [`Router::fib`] until `pred` holds; returns that FIB.
    pub fn wait_fib(
        &self,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, Vec<IpAddr>>) -> bool,
    ) -> anyhow::Result<BTreeMap<String, Vec<IpAddr>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.fib()?;
            if pred(&f) {
                return Ok(f);
            }
            if Instant::now() > deadline {
                bail!("the router's FIB never got there: {f:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Prefix (always with its length) → next hops, from `ip -j route` of both families in `ns`,
/// routes learnt by a routing daemon only (not the kernel's own connected routes).
pub fn fib(ns: &Netns) -> anyhow::Result<BTreeMap<String, Vec<IpAddr>>> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let text = ns.exec_ok("ip", &["-j", family, "route", "show"])?;
        let routes: serde_json::Value =
            serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })?;
        for r in routes.as_array().into_iter().flatten() {
            let proto = r["protocol"].as_str().unwrap_or_default();
            if matches!(proto, "kernel" | "boot" | "static" | "ra") || proto.is_empty() {
                continue;
            }
            let Some(dst) = r["dst"].as_str() else {
                continue;
            };
            let dst = if dst.contains('/') {
                dst.to_owned()
            } else if family == "-4" {
                format!("{dst}/32")
            } else {
                format!("{dst}/128")
            };
            let mut hops: Vec<IpAddr> = Vec::new();
            if let Some(g) = r["gateway"].as_str().and_then(|g| g.parse().ok()) {
                hops.push(g);
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str().and_then(|g| g.parse().ok()) {
                    hops.push(g);
                }
            }
            hops.sort();
            out.insert(dst, hops);
        }
    }
    Ok(out)
}

/// Sends one request from each of `flows` fresh UDP sockets (so each flow has its own source
/// port) in `ns` to `vip:port` and counts the answering nodes (the lab's responders answer
/// with their name). Unanswered flows count under `""`.
pub fn spread(
    ns: &Netns,
    vip: IpAddr,
    port: u16,
    flows: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let target = SocketAddr::new(vip, port);
    let counts = ns.run_in(move || -> std::io::Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for i in 0..flows {
            let bind: SocketAddr = if vip.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            let req = format!("{i}");
            let mut node = String::new();
            for _ in 0..3 {
                s.send_to(req.as_bytes(), target)?;
                let mut buf = [0u8; 256];
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    node = text
                        .split_once(' ')
                        .map(|(_, n)| n.to_owned())
                        .unwrap_or_default();
                    break;
                }
            }
            *counts.entry(node).or_insert(0) += 1;
        }
        Ok(counts)
    })??;
    Ok(counts)
}

/// The lab ([`crate::e2e::lab::Lab`]) with a router on its segment at 192.0.2.1 and
/// 2001:db8::1, started by `start_router`, and a client that reaches 203.0.113.0/24 and
/// 2001:db8:f::/64 (the routed Service ranges of the BGP tests) through it, ignoring
/// redirects. Speakers are not started.
pub async fn lab_with_router(
    nodes: &[(&str, &[(&str, &str)])],
    vips: &[IpAddr],
    speaker_bin: &Path,
    start_router: impl FnOnce(Host) -> anyhow::Result<Router>,
) -> anyhow::Result<(crate::e2e::lab::Lab, Router)> {
    let lab =
        crate::e2e::lab::Lab::start(&lodestone_crds::all_crds(), nodes, vips, speaker_bin).await?;
    let host = lab.topology.add_host(
        "ldrt",
        Some("192.0.2.1/24".parse()?),
        Some("2001:db8::1/64".parse()?),
    )?;
    let router = start_router(host)?;
    let c = lab.client.ns();
    ignore_redirects(c)?;
    c.exec_ok(
        "ip",
        &["route", "add", "203.0.113.0/24", "via", "192.0.2.1"],
    )?;
    c.exec_ok(
        "ip",
        &[
            "-6",
            "route",
            "add",
            "2001:db8:f::/64",
            "via",
            "2001:db8::1",
        ],
    )?;
    Ok((lab, router))
}
