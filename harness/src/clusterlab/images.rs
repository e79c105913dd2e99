//! OCI image archives built without Docker or a registry: one uncompressed layer, written as an
//! OCI image layout in a tar file whose index names the image, so that
//! `ctr -n k8s.io images import FILE` registers it under exactly that name and pods can use it
//! with `imagePullPolicy: IfNotPresent` (the tag is not `latest`).
//!
//! Layers are deterministic (sorted, mtime 0, uid 0 unless asked), so the same inputs give the
//! same digests. Images: the lab's pause (a static C program built with gcc), a busybox web
//! server that names its pod and node, and any executable (Lodestone's release binaries) with
//! the shared libraries `ldd` lists, if it has any.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One file system entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// The single layer of an image.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    entries: BTreeMap<String, Node>,
}

impl Layer {
    fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            self.entries.entry(dir).or_insert(Node::Dir { mode: 0o755 });
        }
    }

    fn key(path: &str) -> String {
        path.trim_matches('/').to_owned()
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let k = Layer::key(path);
        self.parents(&k);
        self.entries.insert(k, Node::Dir { mode });
        self
    }

    /// A file with `data`.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        let k = Layer::key(path);
        self.parents(&k);
        self.entries.insert(k, Node::File { data, mode });
        self
    }

    /// A copy of the host file `src` (symlinks followed).
    pub fn copy(&mut self, src: &Path, dest: &str, mode: u32) -> io::Result<&mut Self> {
        let data = std::fs::read(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        Ok(self.file(dest, data, mode))
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let k = Layer::key(path);
        self.parents(&k);
        self.entries.insert(
            k,
            Node::Symlink {
                target: target.to_owned(),
            },
        );
        self
    }

    /// The layer as an (uncompressed) tar stream.
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, node) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match node {
                Node::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())?;
                }
                Node::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Node::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        b.into_inner()
    }
}

/// The parts of the OCI image configuration the lab's images use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `User` (`uid:gid`), empty for root.
    pub user: String,
    /// `Env`.
    pub env: Vec<String>,
    /// `ExposedPorts`, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
}

/// An image: a name, a layer and a configuration.
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it is imported as, e.g. `lab.local/pause:1.0`.
    pub reference: String,
    /// Its only layer.
    pub layer: Layer,
    /// Its configuration.
    pub config: ImageConfig,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Image {
    /// Writes the image as an OCI layout tar to `out`; returns the manifest digest.
    pub fn write_archive(&self, out: &Path) -> io::Result<String> {
        let layer = self.layer.tar()?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        let ports: serde_json::Map<String, serde_json::Value> = self
            .config
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.config.entrypoint,
                "User": self.config.user,
                "Env": self.config.env,
                "ExposedPorts": ports,
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "lodestone-harness clusterlab"}],
        });
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let desc = |data: &[u8], media: &str| {
            serde_json::json!({
                "mediaType": media,
                "digest": format!("sha256:{}", sha256_hex(data)),
                "size": data.len(),
            })
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc(&config, "application/vnd.oci.image.config.v1+json"),
            "layers": [desc(&layer, "application/vnd.oci.image.layer.v1.tar")],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
        let tag = self
            .reference
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        let mut mdesc = desc(&manifest, "application/vnd.oci.image.manifest.v1+json");
        mdesc["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
        mdesc["annotations"] = serde_json::json!({
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": tag,
        });
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]});
        let index = serde_json::to_vec(&index).map_err(io::Error::other)?;

        let mut b = tar::Builder::new(std::fs::File::create(out)?);
        let mut add = |name: &str, data: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for blob in [&layer, &config, &manifest] {
            add(&format!("blobs/sha256/{}", sha256_hex(blob)), blob)?;
        }
        add("index.json", &index)?;
        b.into_inner()?.sync_all()?;
        Ok(manifest_digest)
    }
}

/// `/etc/passwd`, `/etc/group` and `/tmp`, as distroless images have them (uid 65532 is
/// `nonroot`, what Lodestone's manifests run the controller as).
fn base(layer: &mut Layer) {
    layer.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
        0o644,
    );
    layer.file(
        "/etc/group",
        b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n".to_vec(),
        0o644,
    );
    layer.dir("/tmp", 0o1777);
    layer.dir("/home/nonroot", 0o700);
}

/// The shared objects `ldd` lists for `binary` (none for a static binary).
pub fn shared_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    if !out.status.success() {
        // "not a dynamic executable" (static binaries) exits non-zero.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd` output (`name => /path (addr)` or `/path (addr)`).
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.contains("statically linked") {
                return None;
            }
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// An image running `binary` as `/<name>`, with its shared libraries if it has any.
pub fn binary_image(reference: &str, binary: &Path) -> io::Result<Image> {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("no file name in {}", binary.display())))?;
    let mut layer = Layer::default();
    base(&mut layer);
    layer.copy(binary, &format!("/{name}"), 0o755)?;
    for lib in shared_libraries(binary)? {
        let dest = lib.display().to_string();
        layer.copy(&lib, &dest, 0o755)?;
    }
    Ok(Image {
        reference: reference.to_owned(),
        layer,
        config: ImageConfig {
            entrypoint: vec![format!("/{name}")],
            user: "65532:65532".into(),
            env: vec!["PATH=/".into()],
            exposed_ports: vec![],
        },
    })
}

/// The lab's pause image, compiled from `pause.c` with `gcc -static` into `work`.
pub fn pause_image(reference: &str, work: &Path) -> io::Result<Image> {
    let src = work.join("pause.c");
    std::fs::write(&src, include_str!("pause.c"))?;
    let exe = work.join("pause");
    let out = Command::new("gcc")
        .args(["-Os", "-static", "-s", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running gcc: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "gcc failed to build the pause program: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut layer = Layer::default();
    layer.copy(&exe, "/pause", 0o755)?;
    Ok(Image {
        reference: reference.to_owned(),
        layer,
        config: ImageConfig {
            entrypoint: vec!["/pause".into()],
            user: "65535:65535".into(),
            ..ImageConfig::default()
        },
    })
}

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A web server on port 8080 (busybox httpd) whose page names the pod, its node and its IP
/// (from the downward API variables `POD_NAME`, `NODE_NAME`, `POD_IP`), so a client can tell
/// which pod and node answered. Also carries `sh`, `nc`, `wget` for debugging with exec.
pub fn web_image(reference: &str) -> io::Result<Image> {
    let mut layer = Layer::default();
    base(&mut layer);
    layer.copy(Path::new(BUSYBOX), "/bin/busybox", 0o755)?;
    for app in [
        "sh", "httpd", "echo", "cat", "hostname", "sleep", "ls", "ip", "wget", "nc", "env",
    ] {
        layer.symlink(&format!("/bin/{app}"), "busybox");
    }
    layer.dir("/www", 0o755);
    layer.file(
        "/bin/serve",
        b"#!/bin/sh\necho \"pod=${POD_NAME:-$(hostname)} node=${NODE_NAME:-?} ip=${POD_IP:-?}\" > /www/index.html\nexec httpd -f -p ${PORT:-8080} -h /www\n".to_vec(),
        0o755,
    );
    Ok(Image {
        reference: reference.to_owned(),
        layer,
        config: ImageConfig {
            entrypoint: vec!["/bin/serve".into()],
            user: String::new(),
            env: vec!["PATH=/bin".into()],
            exposed_ports: vec!["8080/tcp".into()],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed_to_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn layers_are_deterministic_and_list_parents() {
        let mut a = Layer::default();
        a.file("/x/y/z", b"1".to_vec(), 0o644)
            .symlink("/bin/sh", "busybox");
        let mut b = Layer::default();
        b.symlink("/bin/sh", "busybox")
            .file("/x/y/z", b"1".to_vec(), 0o644);
        assert_eq!(a.tar().unwrap(), b.tar().unwrap());
        let tar = a.tar().unwrap();
        let mut ar = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["bin/", "bin/sh", "x/", "x/y/", "x/y/z"]);
    }

    #[test]
    fn an_archive_is_an_oci_layout_naming_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut layer = Layer::default();
        layer.file("/hello", b"hi".to_vec(), 0o755);
        let img = Image {
            reference: "lab.local/test:1.0".into(),
            layer,
            config: ImageConfig {
                entrypoint: vec!["/hello".into()],
                ..Default::default()
            },
        };
        let out = dir.path().join("img.tar");
        let digest = img.write_archive(&out).unwrap();
        let again = dir.path().join("again.tar");
        assert_eq!(img.write_archive(&again).unwrap(), digest, "deterministic");
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut files = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(name, data);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "lab.local/test:1.0"
        );
        assert_eq!(m["digest"], digest);
        // Every blob is stored under its own digest.
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(data), hex);
            }
        }
        let manifest: serde_json::Value = serde_json::from_slice(
            &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))],
        )
        .unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config: serde_json::Value = serde_json::from_slice(
            &files[&format!(
                "blobs/sha256/{}",
                config_digest.trim_start_matches("sha256:")
            )],
        )
        .unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/hello");
    }

    #[test]
    fn the_pause_program_builds_static() {
        let dir = tempfile::tempdir().unwrap();
        let img = match pause_image("lab.local/pause:1.0", dir.path()) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("skipped: no gcc on this machine ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(
            shared_libraries(&dir.path().join("pause"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(img.config.entrypoint, ["/pause"]);
    }
}
