//! The lab's ledger: everything it creates on the machine, written down before or as it is
//! created, so that teardown removes exactly that (and nothing else), in the order that works.
//!
//! The ledger lives in a file (`ledger.json` in the lab's run directory) as well as in memory:
//! a lab whose process was killed with SIGKILL leaves the file behind, and the next lab to start
//! on the machine sweeps it ([`sweep_stale`]). Teardown is idempotent: running it twice, or on a
//! half-built lab, is fine.
//!
//! Order (the reference kit's lesson, README pitfall 11): node agents (kubelet, kube-proxy), then
//! the pods' processes (by cgroup) and the containerd shims, then containerd, then the control
//! plane, then etcd; then every mount under the lab's directories, deepest first; then the
//! network namespaces; then the cgroups, depth first; then kubelet's symlinks in
//! `/var/log/containers`; then the directories.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When a recorded process is stopped, relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// kubelet and kube-proxy: first, so nothing restarts pods while they are removed.
    NodeAgent,
    /// containerd: after the pods and shims are gone.
    Runtime,
    /// kube-scheduler, kube-controller-manager, kube-apiserver.
    ControlPlane,
    /// etcd: last, so the API server never loses its store while running.
    Store,
    /// Anything else the lab started (helpers, relays).
    Other,
}

/// One thing the lab made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Entry {
    /// A process; identified by pid *and* start time, so a recycled pid is never killed.
    Process {
        /// What it is, for messages.
        name: String,
        /// Process id.
        pid: u32,
        /// Field 22 of `/proc/PID/stat` when it was recorded.
        start_time: u64,
        /// When it is stopped.
        stage: Stage,
    },
    /// A containerd; its shims (whose command line names this socket) are killed with the pods.
    Containerd {
        /// The containerd's socket path.
        socket: PathBuf,
    },
    /// A network namespace (`ip netns` name).
    Netns {
        /// Its name.
        name: String,
    },
    /// A cgroup directory (all its descendants go too).
    Cgroup {
        /// `/sys/fs/cgroup/<controller>/<root>`.
        path: PathBuf,
    },
    /// A directory of the lab: everything mounted under it is unmounted, then it is removed.
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// Symlinks in `dir` that point under `target` (kubelet's `/var/log/containers` links).
    Links {
        /// Where the links are.
        dir: PathBuf,
        /// The prefix their targets start with.
        target: PathBuf,
    },
}

/// The file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LedgerFile {
    owner_pid: u32,
    owner_start_time: u64,
    entries: Vec<Entry>,
}

/// What the lab made, in memory and on disk.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: Mutex<LedgerFile>,
}

/// What a teardown could not remove (empty when everything went).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers(pub Vec<String>);

impl Leftovers {
    /// Whether nothing was left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Start time (clock ticks since boot) of `pid`, from `/proc/PID/stat`; `None` if it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3, 4, ...: field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process recorded as `(pid, start)` still runs (a zombie does not: it waits
/// only for its parent to reap it).
fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start) && !zombie(pid)
}

fn signal(pid: u32, sig: i32) {
    // Checked against its start time by the caller; gone already is fine.
    let _ = crate::signal::send(pid, sig);
}

impl Ledger {
    /// A new, empty ledger owned by this process, written to `path` at once.
    pub fn create(path: &Path) -> io::Result<Ledger> {
        let me = std::process::id();
        let ledger = Ledger {
            path: path.to_owned(),
            file: Mutex::new(LedgerFile {
                owner_pid: me,
                owner_start_time: start_time(me).unwrap_or_default(),
                entries: Vec::new(),
            }),
        };
        ledger.save(&ledger.lock())?;
        Ok(ledger)
    }

    /// Reads a ledger some (possibly dead) process wrote.
    pub fn open(path: &Path) -> io::Result<Ledger> {
        let text = std::fs::read_to_string(path)?;
        let file: LedgerFile = serde_json::from_str(&text).map_err(io::Error::other)?;
        Ok(Ledger {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, file: &LedgerFile) -> io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(file).map_err(io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the process that wrote the ledger still runs.
    pub fn owner_alive(&self) -> bool {
        let f = self.lock();
        alive(f.owner_pid, f.owner_start_time)
    }

    /// Writes `entry` down (memory and file).
    pub fn record(&self, entry: Entry) -> io::Result<()> {
        let mut f = self.lock();
        if !f.entries.contains(&entry) {
            f.entries.push(entry);
        }
        self.save(&f)
    }

    /// Records process `pid` (started a moment ago) as `name`, stopped at `stage`.
    pub fn record_process(&self, name: &str, pid: u32, stage: Stage) -> io::Result<()> {
        let start_time = start_time(pid).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} (pid {pid}) exited at once"),
            )
        })?;
        self.record(Entry::Process {
            name: name.to_owned(),
            pid,
            start_time,
            stage,
        })
    }

    /// Forgets a process that was stopped on purpose (e.g. a restarted kubelet).
    pub fn forget_process(&self, pid: u32) -> io::Result<()> {
        let mut f = self.lock();
        f.entries
            .retain(|e| !matches!(e, Entry::Process { pid: p, .. } if *p == pid));
        self.save(&f)
    }

    /// The recorded entries.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// Removes everything recorded, in order; then the ledger file. Returns what is left.
    pub fn teardown(&self) -> Leftovers {
        let entries = self.entries();
        let mut left = Vec::new();
        let mut by_stage = |stage: Stage| {
            let procs: Vec<(String, u32, u64)> = entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Process {
                        name,
                        pid,
                        start_time,
                        stage: s,
                    } if *s == stage => Some((name.clone(), *pid, *start_time)),
                    _ => None,
                })
                .collect();
            stop_processes(&procs, Duration::from_secs(10), &mut left);
        };
        by_stage(Stage::NodeAgent);
        kill_pods_and_shims(&entries);
        by_stage(Stage::Runtime);
        by_stage(Stage::Other);
        by_stage(Stage::ControlPlane);
        by_stage(Stage::Store);
        // Whatever still runs in the pods' cgroups (a shim that forked late).
        kill_pods_and_shims(&entries);

        let dirs: Vec<PathBuf> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Dir { path } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let mounts_left = unmount_under(&dirs);
        left.extend(mounts_left.iter().map(|m| format!("mount {}", m.display())));

        for e in entries.iter().rev() {
            if let Entry::Netns { name } = e
                && let Err(why) = delete_netns(name)
            {
                left.push(format!("netns {name}: {why}"));
            }
        }
        for e in entries.iter().rev() {
            if let Entry::Cgroup { path } = e
                && let Err(why) = remove_cgroup(path)
            {
                left.push(format!("cgroup {}: {why}", path.display()));
            }
        }
        for e in &entries {
            if let Entry::Links { dir, target } = e {
                remove_links(dir, target);
            }
        }
        for dir in dirs.iter().rev() {
            let busy = mounts_left.iter().any(|m| m.starts_with(dir));
            if busy {
                left.push(format!("{} kept: mounts left under it", dir.display()));
            } else if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                left.push(format!("{}: {e}", dir.display()));
            }
        }
        if left.is_empty() {
            let mut f = self.lock();
            f.entries.clear();
            let _ = std::fs::remove_file(&self.path);
        }
        Leftovers(left)
    }
}

/// SIGTERM to each live process, SIGKILL to those still alive after `grace`.
fn stop_processes(procs: &[(String, u32, u64)], grace: Duration, left: &mut Vec<String>) {
    let live: Vec<&(String, u32, u64)> = procs.iter().filter(|(_, p, s)| alive(*p, *s)).collect();
    for (_, pid, _) in &live {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|(_, p, s)| alive(*p, *s)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, pid, start) in &live {
        if alive(*pid, *start) {
            signal(*pid, libc::SIGKILL);
            let t = Instant::now();
            while alive(*pid, *start) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(*pid, *start) {
                left.push(format!("process {name} (pid {pid}) survived SIGKILL"));
            }
        }
    }
}

/// Every pid in the cgroup tree at `path` (all descendants' `cgroup.procs`).
fn cgroup_pids(path: &Path, out: &mut BTreeSet<u32>) {
    if let Ok(text) = std::fs::read_to_string(path.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_pids(&e.path(), out);
            }
        }
    }
}

/// SIGKILL to every process in the recorded cgroups (the pods) and to every containerd shim
/// serving a recorded containerd (found by the socket path on its command line).
fn kill_pods_and_shims(entries: &[Entry]) {
    let me = std::process::id();
    let mut pids = BTreeSet::new();
    for e in entries {
        if let Entry::Cgroup { path } = e {
            cgroup_pids(path, &mut pids);
        }
    }
    let sockets: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Containerd { socket } => Some(socket.display().to_string()),
            _ => None,
        })
        .collect();
    if !sockets.is_empty()
        && let Ok(rd) = std::fs::read_dir("/proc")
    {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
            if !exe.to_string_lossy().contains("containerd-shim") {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if sockets.iter().any(|s| cmdline.contains(s.as_str())) {
                pids.insert(pid);
            }
        }
    }
    pids.remove(&me);
    for pid in &pids {
        signal(*pid, libc::SIGKILL);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5)
        && pids.iter().any(|p| {
            std::fs::metadata(format!("/proc/{p}")).is_ok_and(|_| start_time(*p).is_some())
                && !zombie(*p)
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a zombie; a pid that no longer exists counts as one (nothing left to wait
/// for).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Mount points (from `/proc/self/mountinfo`) at or under any of `dirs`, deepest first.
pub fn mounts_under(mountinfo: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Unmounts everything under `dirs` (a few rounds: stacked mounts reveal the ones beneath);
/// returns what could not be unmounted.
fn unmount_under(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if dirs.is_empty() {
        return Vec::new();
    }
    for _ in 0..4 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = mounts_under(&info, dirs);
        if mounts.is_empty() {
            return mounts;
        }
        for m in &mounts {
            let ok = quiet("umount", &[&m.to_string_lossy()]);
            if !ok {
                quiet("umount", &["-l", &m.to_string_lossy()]);
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts_under(&info, dirs)
}

/// Runs a command with all output discarded; whether it succeeded.
fn quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn delete_netns(name: &str) -> Result<(), String> {
    if !Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    // Anything still inside (a hostNetwork container, a stray tool) would keep it alive.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        let me = std::process::id();
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| *p != me)
        {
            signal(pid, libc::SIGKILL);
        }
    }
    let out = Command::new("ip")
        .args(["netns", "del", name])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Removes a cgroup and its descendants, deepest first; retries while killed processes exit.
fn remove_cgroup(path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !path.exists() {
            return Ok(());
        }
        let mut dirs = Vec::new();
        collect_dirs(path, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut last = None;
        for d in &dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != io::ErrorKind::NotFound
            {
                last = Some(e.to_string());
            }
        }
        match last {
            None if !path.exists() => return Ok(()),
            Some(e) if Instant::now() > deadline => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn collect_dirs(path: &Path, out: &mut Vec<PathBuf>) {
    out.push(path.to_owned());
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn remove_links(dir: &Path, target: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if let Ok(t) = std::fs::read_link(e.path())
            && t.starts_with(target)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Tears down every ledger in `base/*/ledger.json` whose owner process is gone (a lab whose
/// test was killed with SIGKILL). Returns what each sweep left.
pub fn sweep_stale(base: &Path) -> Vec<(PathBuf, Leftovers)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(base) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path().join("ledger.json");
        let Ok(ledger) = Ledger::open(&path) else {
            continue;
        };
        if ledger.owner_alive() {
            continue;
        }
        let left = ledger.teardown();
        if left.is_empty() {
            let _ = std::fs::remove_dir(e.path());
        }
        out.push((path, left));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "1234 (we(ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id();
        assert!(start_time(me).is_some_and(|t| t > 0));
    }

    #[test]
    fn mounts_under_are_deepest_first_and_unescaped() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /var/tmp/lab/data rw shared:5 - ext4 /dev/vda rw
31 30 0:6 / /var/tmp/lab/data/a/kubelet/pods/x/volumes/tok rw - tmpfs tmpfs rw
32 22 0:7 / /run/lab/a/netns/cni-1 rw - nsfs nsfs rw
33 22 0:8 / /var/tmp/lab\\040space rw - tmpfs tmpfs rw
34 22 0:9 / /var/tmp/other rw - tmpfs tmpfs rw
";
        let dirs = vec![PathBuf::from("/var/tmp/lab"), PathBuf::from("/run/lab")];
        let got = mounts_under(info, &dirs);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/var/tmp/lab/data/a/kubelet/pods/x/volumes/tok"),
                PathBuf::from("/run/lab/a/netns/cni-1"),
                PathBuf::from("/var/tmp/lab/data"),
            ]
        );
        // "/var/tmp/lab space" is not under "/var/tmp/lab" (component-wise).
        let spaced = mounts_under(info, &[PathBuf::from("/var/tmp/lab space")]);
        assert_eq!(spaced, vec![PathBuf::from("/var/tmp/lab space")]);
    }

    #[test]
    fn teardown_removes_what_was_recorded_and_nothing_else() {
        let base = tempfile::tempdir().unwrap();
        let lab_dir = base.path().join("lab");
        let keep = base.path().join("keep");
        std::fs::create_dir_all(lab_dir.join("data/inner")).unwrap();
        std::fs::create_dir_all(&keep).unwrap();
        let ledger = Ledger::create(&base.path().join("ledger.json")).unwrap();
        ledger
            .record(Entry::Dir {
                path: lab_dir.clone(),
            })
            .unwrap();
        // A bind mount under the lab's directory, as the kubelet data dir is.
        let m = lab_dir.join("data");
        assert!(quiet(
            "mount",
            &["--bind", &m.to_string_lossy(), &m.to_string_lossy()]
        ));
        // A namespace and a process, both recorded.
        let ns = format!("ldledger-{}", std::process::id());
        assert!(quiet("ip", &["netns", "add", &ns]));
        ledger.record(Entry::Netns { name: ns.clone() }).unwrap();
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        ledger
            .record_process("sleep", child.id(), Stage::Other)
            .unwrap();
        // A link pointing into the lab, and one pointing elsewhere.
        let links = base.path().join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(lab_dir.join("data/inner"), links.join("in")).unwrap();
        std::os::unix::fs::symlink(&keep, links.join("out")).unwrap();
        ledger
            .record(Entry::Links {
                dir: links.clone(),
                target: lab_dir.clone(),
            })
            .unwrap();

        // A second reader of the file sees the same entries (what the sweeper reads).
        let reread = Ledger::open(ledger.path()).unwrap();
        assert_eq!(reread.entries(), ledger.entries());
        assert!(reread.owner_alive());

        let left = ledger.teardown();
        assert!(left.is_empty(), "{left}");
        assert!(child.wait().is_ok());
        assert!(!lab_dir.exists());
        assert!(keep.exists(), "only recorded things go");
        assert!(!Path::new("/run/netns").join(&ns).exists());
        assert!(!links.join("in").exists());
        assert!(links.join("out").exists());
        assert!(!ledger.path().exists());
        // Idempotent.
        assert!(ledger.teardown().is_empty());
    }

    #[test]
    fn a_recycled_pid_is_not_killed() {
        let base = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(&base.path().join("ledger.json")).unwrap();
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        // Recorded with a start time that is not this process's: as if the pid were reused.
        ledger
            .record(Entry::Process {
                name: "impostor".into(),
                pid: child.id(),
                start_time: 1,
                stage: Stage::Other,
            })
            .unwrap();
        assert!(ledger.teardown().is_empty());
        assert!(child.try_wait().unwrap().is_none(), "must still run");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_dead_owners_ledger_is_swept() {
        let base = tempfile::tempdir().unwrap();
        let lab = base.path().join("x");
        std::fs::create_dir_all(lab.join("d")).unwrap();
        // A ledger "written" by a process that no longer exists.
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let file = LedgerFile {
            owner_pid: dead_pid,
            owner_start_time: 1,
            entries: vec![Entry::Dir {
                path: lab.join("d"),
            }],
        };
        std::fs::write(
            lab.join("ledger.json"),
            serde_json::to_string(&file).unwrap(),
        )
        .unwrap();
        // And a live one next to it, which must be left alone.
        let live = base.path().join("y");
        std::fs::create_dir_all(live.join("d")).unwrap();
        let l = Ledger::create(&live.join("ledger.json")).unwrap();
        l.record(Entry::Dir {
            path: live.join("d"),
        })
        .unwrap();

        let swept = sweep_stale(base.path());
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert!(swept[0].1.is_empty());
        assert!(!lab.exists());
        assert!(live.join("d").exists());
    }
}
