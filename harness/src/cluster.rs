//! The test cluster entry point: what every end-to-end test and the sandbox stand on.
//!
//! [`TestCluster::start`] runs the embedded API server and hands out a kube client built from a
//! kubeconfig file, the same path the real binaries take. When `TEST_ASSET_KUBE_APISERVER` and
//! `TEST_ASSET_ETCD` name real binaries (the envtest convention) it starts those instead: etcd
//! and kube-apiserver on 127.0.0.1 only, with a generated CA, serving certificate, admin token
//! (group `system:masters`) and service-account key, all in a temporary directory that goes
//! away, with both processes, when the cluster is dropped.
//!
//! The command lines and files are built by pure functions ([`etcd_args`],
//! [`kube_apiserver_args`], [`token_auth_file`], [`kubeconfig_yaml`]) so they are unit-tested
//! without the binaries; the process handling is tested against stand-in scripts and a real etcd.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

use crate::apiserver::{Server, ServerConfig};

/// Namespaces every test may expect; the embedded server pre-creates them, and on a real
/// server the harness creates whichever the server did not.
pub const EXPECTED_NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "lodestone-system",
];

/// How long a real kube-apiserver gets to answer `/readyz` (it usually needs 3–5 s).
pub const REAL_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running cluster: an API server (embedded or real), its kubeconfig and a client.
pub struct TestCluster {
    server: Option<Server>,
    real: Option<RealCluster>,
    client: kube::Client,
    kubeconfig: tempfile::TempPath,
}

/// Build a client from a kubeconfig file, as the binaries do.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("kubeconfig to client config")?;
    Ok(kube::Client::try_from(cfg)?)
}

/// A kubeconfig for `url` trusting `ca_pem` and presenting `token`, with the current context
/// `lodestone-sandbox` and namespace `default`. Used for both the embedded and the real server.
pub fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lodestone-sandbox\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: lodestone-sandbox\n  user:\n    token: {token}\ncontexts:\n- name: lodestone-sandbox\n  context:\n    cluster: lodestone-sandbox\n    user: lodestone-sandbox\n    namespace: default\ncurrent-context: lodestone-sandbox\npreferences: {{}}\n"
    )
}

/// Write `contents` to `path` with mode 0600 (kubeconfigs, tokens and keys are credentials).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// One line of a kube-apiserver `--token-auth-file`: `token,user,uid,"group1,group2"`.
pub fn token_auth_file(token: &str, user: &str, uid: &str, groups: &[&str]) -> String {
    format!("{token},{user},{uid},\"{}\"\n", groups.join(","))
}

/// etcd's command line: one member named `default`, everything on 127.0.0.1.
pub fn etcd_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name=default".to_string(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        // The default initial cluster names localhost:2380; it must match the peer URL.
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
    ]
}

/// The files a real kube-apiserver is started with (all inside the cluster's temp dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverFiles {
    /// CA certificate (PEM): signs the serving certificate, and is the client CA.
    pub ca_cert: PathBuf,
    /// Serving certificate (PEM), SANs 127.0.0.1 and localhost.
    pub serving_cert: PathBuf,
    /// Serving key (PEM).
    pub serving_key: PathBuf,
    /// `--token-auth-file`.
    pub token_file: PathBuf,
    /// Service-account signing key (ECDSA P-256, PKCS#8 PEM).
    pub sa_key: PathBuf,
    /// Its public half (PEM), for verifying tokens.
    pub sa_pub: PathBuf,
    /// `--cert-dir`, so nothing is written outside the temp dir.
    pub cert_dir: PathBuf,
}

impl ApiserverFiles {
    /// The conventional names inside `dir`.
    pub fn in_dir(dir: &Path) -> ApiserverFiles {
        ApiserverFiles {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            token_file: dir.join("tokens.csv"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            cert_dir: dir.join("certs"),
        }
    }
}

/// kube-apiserver's command line (as known to work with kube-apiserver 1.32 and etcd 3.5).
pub fn kube_apiserver_args(
    files: &ApiserverFiles,
    etcd_url: &str,
    secure_port: u16,
) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={secure_port}"),
        format!("--cert-dir={}", p(&files.cert_dir)),
        format!("--tls-cert-file={}", p(&files.serving_cert)),
        format!("--tls-private-key-file={}", p(&files.serving_key)),
        format!("--client-ca-file={}", p(&files.ca_cert)),
        format!("--token-auth-file={}", p(&files.token_file)),
        format!(
            "--service-cluster-ip-range={}",
            crate::apiserver::services::SERVICE_CIDRS.join(",")
        ),
        "--authorization-mode=RBAC".to_string(),
        "--service-account-issuer=https://kubernetes.default.svc".to_string(),
        format!("--service-account-key-file={}", p(&files.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&files.sa_key)),
        // No controller-manager runs, so no namespace gets a default ServiceAccount.
        "--disable-admission-plugins=ServiceAccount".to_string(),
        // Nothing to reconcile: the address is loopback and no Pods run.
        "--endpoint-reconciler-type=none".to_string(),
    ]
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => tail_lines(&String::from_utf8_lossy(&b), n),
        Err(e) => format!("(no log {}: {e})", path.display()),
    }
}

/// A free TCP port on 127.0.0.1 (the usual bind-and-release; the window is tiny).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process that is killed and reaped when dropped, also on panic.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
        Ok(Proc { child, name, log })
    }

    /// `Some(description)` when the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd on 127.0.0.1, killed when dropped.
pub struct Etcd {
    proc: Proc,
    client_port: u16,
}

impl Etcd {
    /// Start `bin` with its data directory under `dir` and its log in `dir/etcd.log`.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<Etcd> {
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let args = etcd_args(&dir.join("etcd-data"), client_port, peer_port);
        let proc = Proc::spawn("etcd", bin, &args, dir.join("etcd.log"))?;
        Ok(Etcd { proc, client_port })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    /// Whether `GET /health` on the client URL says `"health":"true"`.
    pub async fn healthy(&self) -> bool {
        let port = self.client_port;
        tokio::task::spawn_blocking(move || http_get_plain(port, "/health"))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// Wait until healthy; fail with the log's tail if etcd exits or `timeout` passes.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(why) = self.proc.exited() {
                bail!("{why}; etcd log:\n{}", log_tail(&self.proc.log, 30));
            }
            if self.healthy().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "etcd not healthy within {timeout:?}; etcd log:\n{}",
                    log_tail(&self.proc.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A plain-HTTP GET on 127.0.0.1 returning the whole response; small and blocking, only for
/// etcd's health endpoint (no HTTP client crate needed for one request).
fn http_get_plain(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Where the real binaries are, and how long to wait for readiness.
#[derive(Debug, Clone)]
pub struct RealAssets {
    /// The kube-apiserver binary.
    pub kube_apiserver: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Deadline for `/readyz`; [`REAL_READY_TIMEOUT`] from the environment.
    pub ready_timeout: Duration,
}

impl RealAssets {
    /// From `TEST_ASSET_KUBE_APISERVER` and `TEST_ASSET_ETCD`: see [`RealAssets::from_vars`].
    /// When only one is set, says so on stderr (the test output) and picks the embedded server.
    pub fn from_env() -> Option<RealAssets> {
        let assets = RealAssets::from_vars(
            std::env::var_os("TEST_ASSET_KUBE_APISERVER"),
            std::env::var_os("TEST_ASSET_ETCD"),
        );
        match assets {
            Ok(a) => a,
            Err(only_one) => {
                eprintln!("lodestone-harness: {only_one}; using the embedded API server");
                None
            }
        }
    }

    /// Both set (non-empty): the real server; neither: the embedded one; only one: an error
    /// naming the missing one. (etcd alone is a legitimate setup for the etcd tests, so the
    /// caller decides what to do with it.)
    pub fn from_vars(
        kube_apiserver: Option<std::ffi::OsString>,
        etcd: Option<std::ffi::OsString>,
    ) -> Result<Option<RealAssets>, String> {
        let kube_apiserver = kube_apiserver.filter(|v| !v.is_empty());
        let etcd = etcd.filter(|v| !v.is_empty());
        match (kube_apiserver, etcd) {
            (Some(k), Some(e)) => Ok(Some(RealAssets {
                kube_apiserver: PathBuf::from(k),
                etcd: PathBuf::from(e),
                ready_timeout: REAL_READY_TIMEOUT,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("TEST_ASSET_KUBE_APISERVER is set but TEST_ASSET_ETCD is not".into())
            }
            (None, Some(_)) => {
                Err("TEST_ASSET_ETCD is set but TEST_ASSET_KUBE_APISERVER is not".into())
            }
        }
    }
}

/// A real kube-apiserver and its etcd. Field order is drop order: the API server is killed
/// before etcd, and the directory goes last.
struct RealCluster {
    apiserver: Option<Proc>,
    etcd: Etcd,
    bin: PathBuf,
    args: Vec<String>,
    url: String,
    ca_pem: String,
    token: String,
    ready_timeout: Duration,
    dir: tempfile::TempDir,
}

struct GeneratedCerts {
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

fn generate_certs() -> anyhow::Result<GeneratedCerts> {
    let c = crate::tls::serving_cert("lodestone-envtest-ca", "kube-apiserver")?;
    let sa = rcgen::KeyPair::generate()?;
    Ok(GeneratedCerts {
        ca_pem: c.ca_pem,
        serving_cert_pem: c.leaf_pem,
        serving_key_pem: c.key_pem,
        sa_key_pem: sa.serialize_pem(),
        sa_pub_pem: sa.public_key_pem(),
    })
}

fn random_token() -> String {
    use rand::Rng;
    let mut b = [0u8; 24];
    rand::rng().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl RealCluster {
    /// Write the files, start etcd, wait for it, start kube-apiserver. Readiness is awaited by
    /// the caller (it needs a client).
    async fn start(assets: &RealAssets) -> anyhow::Result<RealCluster> {
        for (var, p) in [
            ("TEST_ASSET_KUBE_APISERVER", &assets.kube_apiserver),
            ("TEST_ASSET_ETCD", &assets.etcd),
        ] {
            if !p.is_file() {
                bail!("{var}={} is not a file", p.display());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("lodestone-envtest-")
            .tempdir()?;
        let files = ApiserverFiles::in_dir(dir.path());
        let certs = generate_certs()?;
        let token = random_token();
        std::fs::create_dir_all(&files.cert_dir)?;
        std::fs::write(&files.ca_cert, &certs.ca_pem)?;
        std::fs::write(&files.serving_cert, &certs.serving_cert_pem)?;
        write_private(&files.serving_key, &certs.serving_key_pem)?;
        write_private(&files.sa_key, &certs.sa_key_pem)?;
        std::fs::write(&files.sa_pub, &certs.sa_pub_pem)?;
        write_private(
            &files.token_file,
            &token_auth_file(
                &token,
                "lodestone-admin",
                "lodestone-admin",
                &["system:masters"],
            ),
        )?;
        let mut etcd = Etcd::start(&assets.etcd, dir.path())?;
        etcd.wait_healthy(assets.ready_timeout).await?;
        let port = free_port()?;
        let args = kube_apiserver_args(&files, &etcd.client_url(), port);
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &assets.kube_apiserver,
            &args,
            dir.path().join("kube-apiserver.log"),
        )?;
        Ok(RealCluster {
            apiserver: Some(apiserver),
            etcd,
            bin: assets.kube_apiserver.clone(),
            args,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: certs.ca_pem,
            token,
            ready_timeout: assets.ready_timeout,
            dir,
        })
    }

    fn logs(&self) -> String {
        format!(
            "--- kube-apiserver log (last lines) ---\n{}\n--- etcd log (last lines) ---\n{}",
            log_tail(&self.dir.path().join("kube-apiserver.log"), 30),
            log_tail(self.etcd.log_path(), 30)
        )
    }

    /// Poll `/readyz` with the admin token until 200; fail early if a process exits.
    async fn wait_ready(&mut self, client: &kube::Client) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        loop {
            let exited = match &mut self.apiserver {
                Some(p) => p.exited(),
                None => Some("kube-apiserver is not running".to_string()),
            };
            if let Some(why) = exited.or_else(|| self.etcd.proc.exited()) {
                bail!("{why} before it was ready\n{}", self.logs());
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            // Bounded per poll: a server that accepts but never answers must not outlast the
            // deadline (kube's own read timeout is minutes).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let poll = Duration::from_secs(5)
                .min(left)
                .max(Duration::from_millis(100));
            let last = match tokio::time::timeout(poll, client.request_text(req)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {poll:?}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready within {:?} (last /readyz: {last})\n{}",
                    self.ready_timeout,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kill kube-apiserver and start it again with the same arguments (same port, same etcd).
    async fn restart(&mut self, client: &kube::Client) -> anyhow::Result<()> {
        drop(self.apiserver.take());
        self.apiserver = Some(Proc::spawn(
            "kube-apiserver",
            &self.bin,
            &self.args,
            self.dir.path().join("kube-apiserver.log"),
        )?);
        self.wait_ready(client).await
    }
}

impl TestCluster {
    /// Start the embedded server, or a real kube-apiserver + etcd when `TEST_ASSET_KUBE_APISERVER`
    /// and `TEST_ASSET_ETCD` are both set.
    pub async fn start() -> anyhow::Result<TestCluster> {
        match RealAssets::from_env() {
            Some(assets) => TestCluster::start_real(&assets).await,
            None => TestCluster::start_embedded().await,
        }
    }

    /// Start the embedded server regardless of the environment.
    pub async fn start_embedded() -> anyhow::Result<TestCluster> {
        let server = Server::start(ServerConfig::default()).await?;
        let kubeconfig = kubeconfig_file(&server.kubeconfig_yaml())?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        Ok(TestCluster {
            server: Some(server),
            real: None,
            client,
            kubeconfig,
        })
    }

    /// Start etcd and kube-apiserver from `assets`, wait for `/readyz`, and create the
    /// namespaces of [`EXPECTED_NAMESPACES`] the server did not create itself.
    pub async fn start_real(assets: &RealAssets) -> anyhow::Result<TestCluster> {
        // Ignore the error: another part of the process may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut real = RealCluster::start(assets).await?;
        let kubeconfig = kubeconfig_file(&kubeconfig_yaml(&real.url, &real.ca_pem, &real.token))?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        real.wait_ready(&client).await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for name in EXPECTED_NAMESPACES {
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
            }))?;
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating namespace {name}\n{}", real.logs()));
                }
            }
        }
        Ok(TestCluster {
            server: None,
            real: Some(real),
            client,
            kubeconfig,
        })
    }

    /// A client (cheap clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The kubeconfig file; removed when the cluster is dropped.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig's contents (for writing it somewhere else, e.g. into a namespace).
    pub fn kubeconfig_yaml(&self) -> String {
        match (&self.server, &self.real) {
            (Some(s), _) => s.kubeconfig_yaml(),
            (None, Some(r)) => kubeconfig_yaml(&r.url, &r.ca_pem, &r.token),
            (None, None) => String::new(),
        }
    }

    /// `https://127.0.0.1:PORT` of whichever server runs.
    pub fn url(&self) -> String {
        match (&self.server, &self.real) {
            (Some(s), _) => s.url(),
            (None, Some(r)) => r.url.clone(),
            (None, None) => String::new(),
        }
    }

    /// Whether this is the embedded server.
    pub fn is_embedded(&self) -> bool {
        self.server.is_some()
    }

    /// The embedded server, for what only it can do (`compact`, the token, the URL).
    pub fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }

    /// The real cluster's temporary directory (certificates, tokens, logs), `None` when embedded.
    pub fn real_dir(&self) -> Option<&Path> {
        self.real.as_ref().map(|r| r.dir.path())
    }

    /// Process ids of (kube-apiserver, etcd) on the real path.
    pub fn real_pids(&self) -> Option<(Option<u32>, u32)> {
        self.real
            .as_ref()
            .map(|r| (r.apiserver.as_ref().map(|p| p.child.id()), r.etcd.pid()))
    }

    /// Restart the API server: every connection and watch is cut, state is kept (the embedded
    /// store, or etcd on the real path).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(s) = &mut self.server {
            return Ok(s.restart().await?);
        }
        match &mut self.real {
            Some(r) => r.restart(&self.client).await,
            None => bail!("no API server to restart"),
        }
    }

    /// Create (or replace) the CRDs and wait until each is established and served.
    pub async fn apply_crds(&self, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            match api.create(&PostParams::default(), crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let mut updated = crd.clone();
                    updated.metadata.resource_version =
                        api.get(&name).await?.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &updated).await?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
            }
        }
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let served = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if self.crd_served(&api, crd).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if served.is_err() {
                bail!("CRD {name} was not established within 30s");
            }
        }
        Ok(())
    }

    async fn crd_served(
        &self,
        api: &Api<CustomResourceDefinition>,
        crd: &CustomResourceDefinition,
    ) -> bool {
        let Ok(live) = api
            .get(crd.metadata.name.as_deref().unwrap_or_default())
            .await
        else {
            return false;
        };
        let established = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if !established {
            return false;
        }
        for v in crd.spec.versions.iter().filter(|v| v.served) {
            let gv = format!("{}/{}", crd.spec.group, v.name);
            match self.client.list_api_group_resources(&gv).await {
                Ok(list)
                    if list
                        .resources
                        .iter()
                        .any(|r| r.name == crd.spec.names.plural) => {}
                _ => return false,
            }
        }
        true
    }
}

fn kubeconfig_file(yaml: &str) -> anyhow::Result<tempfile::TempPath> {
    let file = tempfile::Builder::new()
        .prefix("lodestone-kubeconfig-")
        .suffix(".yaml")
        .tempfile()?;
    let path = file.into_temp_path();
    write_private(&path, yaml)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let prefix = format!("{flag}=");
        args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
    }

    #[test]
    fn etcd_listens_on_loopback_only_and_names_itself_consistently() {
        let args = etcd_args(Path::new("/tmp/x/etcd-data"), 2379, 2380);
        assert_eq!(arg(&args, "--data-dir"), Some("/tmp/x/etcd-data"));
        assert_eq!(
            arg(&args, "--listen-client-urls"),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(
            arg(&args, "--advertise-client-urls"),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(
            arg(&args, "--listen-peer-urls"),
            Some("http://127.0.0.1:2380")
        );
        assert_eq!(
            arg(&args, "--initial-advertise-peer-urls"),
            Some("http://127.0.0.1:2380")
        );
        assert_eq!(
            arg(&args, "--initial-cluster"),
            Some("default=http://127.0.0.1:2380")
        );
        assert_eq!(arg(&args, "--name"), Some("default"));
    }

    #[test]
    fn apiserver_args_name_every_file_and_the_known_working_flags() {
        let files = ApiserverFiles::in_dir(Path::new("/d"));
        let args = kube_apiserver_args(&files, "http://127.0.0.1:4001", 6443);
        let expect = [
            ("--etcd-servers", "http://127.0.0.1:4001"),
            ("--bind-address", "127.0.0.1"),
            ("--advertise-address", "127.0.0.1"),
            ("--secure-port", "6443"),
            ("--tls-cert-file", "/d/apiserver.crt"),
            ("--tls-private-key-file", "/d/apiserver.key"),
            ("--client-ca-file", "/d/ca.crt"),
            ("--token-auth-file", "/d/tokens.csv"),
            (
                "--service-cluster-ip-range",
                "10.96.0.0/12,2001:db8:10:96::/108",
            ),
            ("--authorization-mode", "RBAC"),
            ("--service-account-issuer", "https://kubernetes.default.svc"),
            ("--service-account-key-file", "/d/sa.pub"),
            ("--service-account-signing-key-file", "/d/sa.key"),
            ("--disable-admission-plugins", "ServiceAccount"),
            ("--endpoint-reconciler-type", "none"),
            ("--cert-dir", "/d/certs"),
        ];
        for (flag, value) in expect {
            assert_eq!(arg(&args, flag), Some(value), "{flag}");
        }
        assert_eq!(args.len(), expect.len(), "no unexpected flags: {args:?}");
        // Every flag once.
        let mut flags: Vec<&str> = args.iter().filter_map(|a| a.split('=').next()).collect();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!(flags.len(), args.len());
    }

    #[test]
    fn token_file_quotes_the_group_list() {
        assert_eq!(
            token_auth_file("t0k", "admin", "u1", &["system:masters", "extra"]),
            "t0k,admin,u1,\"system:masters,extra\"\n"
        );
        assert_eq!(
            token_auth_file("t", "a", "u", &["system:masters"]),
            "t,a,u,\"system:masters\"\n"
        );
    }

    #[test]
    fn kubeconfig_parses_back_to_url_ca_and_token() {
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\nX\n",
            "tok",
        );
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("lodestone-sandbox"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let ca = base64::engine::general_purpose::STANDARD
            .decode(cluster.certificate_authority_data.as_ref().unwrap())
            .unwrap();
        assert_eq!(ca, b"-----BEGIN CERTIFICATE-----\nX\n");
        assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
        assert!(yaml.contains("\n    token: tok\n"), "{yaml}");
    }

    #[test]
    fn assets_need_both_variables_or_neither() {
        let some = |s: &str| Some(std::ffi::OsString::from(s));
        let both = RealAssets::from_vars(some("/k"), some("/e"))
            .unwrap()
            .unwrap();
        assert_eq!(both.kube_apiserver, Path::new("/k"));
        assert_eq!(both.etcd, Path::new("/e"));
        assert_eq!(both.ready_timeout, REAL_READY_TIMEOUT);
        assert!(RealAssets::from_vars(None, None).unwrap().is_none());
        assert!(RealAssets::from_vars(some(""), some("")).unwrap().is_none());
        let e = RealAssets::from_vars(some("/k"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TEST_ASSET_ETCD is not"), "{e}");
        let e = RealAssets::from_vars(some(""), some("/e"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TEST_ASSET_KUBE_APISERVER is not"), "{e}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn generated_certs_are_pem_and_distinct() {
        let c = generate_certs().unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            c.serving_cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_ne!(c.ca_pem, c.serving_cert_pem);
        assert!(c.serving_key_pem.contains("PRIVATE KEY"));
        assert!(c.sa_key_pem.contains("PRIVATE KEY"));
        assert!(c.sa_pub_pem.contains("PUBLIC KEY"));
        assert_ne!(c.sa_key_pem, c.serving_key_pem);
    }

    /// The stand-ins are Python scripts: HTTPS with the generated certificate is one line there.
    fn python3() -> Option<PathBuf> {
        let out = Command::new("sh")
            .args(["-c", "command -v python3"])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    }

    /// A kube-apiserver stand-in. It records its argv, its pid and every namespace created, answers
    /// `/readyz` with 503 three times before 200 (to prove polling) and only with the admin token
    /// from `--token-auth-file`. `mode`: `ok`, `crash` (logs and exits 1), `never` (always 503).
    fn standin_apiserver(dir: &Path, python: &Path, mode: &str) -> PathBuf {
        let script = format!(
            r#"#!{python}
import json, os, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer as HTTPServer
REC = {rec:?}
MODE = {mode:?}
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open(REC + "/apiserver-args.json", "w") as f:
    json.dump(sys.argv[1:], f)
with open(REC + "/apiserver-pids", "a") as f:
    f.write(str(os.getpid()) + "\n")
print("stand-in kube-apiserver starting, mode " + MODE, flush=True)
if MODE == "crash":
    print("stand-in: fatal: --etcd-servers unreachable", file=sys.stderr, flush=True)
    sys.exit(1)
token = open(args["token-auth-file"]).read().split(",")[0]
polls = [0]
class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def authorized(self):
        if self.headers.get("Authorization") != "Bearer " + token:
            self.reply(401, {{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401}})
            return False
        return True
    def do_GET(self):
        if not self.authorized():
            return
        if self.path.startswith("/readyz"):
            polls[0] += 1
            with open(REC + "/readyz-polls", "a") as f:
                f.write("x")
            if MODE == "never" or polls[0] <= 3:
                self.reply(503, {{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503}})
            else:
                self.reply(200, "ok")
        else:
            self.reply(404, {{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}})
    def do_POST(self):
        if not self.authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.startswith("/api/v1/namespaces"):
            with open(REC + "/namespaces", "a") as f:
                f.write(body["metadata"]["name"] + "\n")
            self.reply(201, body)
        else:
            self.reply(404, {{}})
    def log_message(self, *a):
        print("request", *a, flush=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args["tls-cert-file"], args["tls-private-key-file"])
srv = HTTPServer((args["bind-address"], int(args["secure-port"])), H)
srv.allow_reuse_address = True
srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
srv.serve_forever()
"#,
            python = python.display(),
            rec = dir.display().to_string(),
        );
        write_script(dir, "kube-apiserver", &script)
    }

    /// An etcd stand-in answering `/health` on its client URL, recording its pid.
    fn standin_etcd(dir: &Path, python: &Path) -> PathBuf {
        let script = format!(
            r#"#!{python}
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open({rec:?} + "/etcd-pid", "w") as f:
    f.write(str(os.getpid()))
print("stand-in etcd data dir " + args["data-dir"], flush=True)
host, port = args["listen-client-urls"].rsplit("/", 1)[1].split(":")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = b'{{"health":"true"}}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
HTTPServer((host, int(port)), H).serve_forever()
"#,
            python = python.display(),
            rec = dir.display().to_string(),
        );
        write_script(dir, "etcd", &script)
    }

    fn write_script(dir: &Path, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn alive(pid: u32) -> bool {
        // Reaped children leave no /proc entry; a zombie would still have one.
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn standin_assets(mode: &str, timeout: Duration) -> Option<(tempfile::TempDir, RealAssets)> {
        let Some(python) = python3() else {
            eprintln!("SKIP: python3 not found; the stand-in scripts need it");
            return None;
        };
        let rec = tempfile::tempdir().unwrap();
        let assets = RealAssets {
            kube_apiserver: standin_apiserver(rec.path(), &python, mode),
            etcd: standin_etcd(rec.path(), &python),
            ready_timeout: timeout,
        };
        Some((rec, assets))
    }

    #[tokio::test]
    async fn real_path_starts_both_polls_readyz_creates_namespaces_restarts_and_cleans_up() {
        let Some((rec, assets)) = standin_assets("ok", Duration::from_secs(60)) else {
            return;
        };
        let mut cluster = TestCluster::start_real(&assets).await.unwrap();
        assert!(!cluster.is_embedded());
        assert!(cluster.server().is_none());
        let dir = cluster.real_dir().unwrap().to_path_buf();
        let kubeconfig = cluster.kubeconfig_path().to_path_buf();
        let (api_pid, etcd_pid) = cluster.real_pids().unwrap();
        let api_pid = api_pid.unwrap();
        assert!(alive(api_pid) && alive(etcd_pid));

        // The stand-in got exactly the command line the pure function builds.
        let args: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(rec.path().join("apiserver-args.json")).unwrap(),
        )
        .unwrap();
        let port: u16 = arg(&args, "--secure-port").unwrap().parse().unwrap();
        assert_eq!(cluster.url(), format!("https://127.0.0.1:{port}"));
        let etcd_url = arg(&args, "--etcd-servers").unwrap().to_string();
        assert_eq!(
            args,
            kube_apiserver_args(&ApiserverFiles::in_dir(&dir), &etcd_url, port)
        );
        let tokens = std::fs::read_to_string(dir.join("tokens.csv")).unwrap();
        assert!(tokens.ends_with(",lodestone-admin,lodestone-admin,\"system:masters\"\n"));
        assert!(tokens.starts_with(&format!(
            "{},",
            cluster.kubeconfig_yaml().split("token: ").nth(1).unwrap().lines().next().unwrap()
        )));
        // Readiness was polled through the 503s (the stand-in answers 200 from the 4th poll).
        assert!(
            std::fs::read_to_string(rec.path().join("readyz-polls"))
                .unwrap()
                .len()
                >= 4
        );
        let created = std::fs::read_to_string(rec.path().join("namespaces")).unwrap();
        assert_eq!(created.lines().collect::<Vec<_>>(), EXPECTED_NAMESPACES);

        cluster.restart().await.unwrap();
        let (new_pid, same_etcd) = cluster.real_pids().unwrap();
        let new_pid = new_pid.unwrap();
        assert_ne!(new_pid, api_pid);
        assert_eq!(same_etcd, etcd_pid, "etcd is kept across a restart");
        assert!(!alive(api_pid));
        let pids = std::fs::read_to_string(rec.path().join("apiserver-pids")).unwrap();
        assert_eq!(pids.lines().count(), 2);
        let again: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(rec.path().join("apiserver-args.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(again, args, "restarted with the same port and files");
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        cluster.client().request_text(req).await.unwrap();

        drop(cluster);
        assert!(!alive(new_pid), "kube-apiserver killed on drop");
        assert!(!alive(etcd_pid), "etcd killed on drop");
        assert!(!dir.exists(), "temp dir removed");
        assert!(!kubeconfig.exists(), "kubeconfig removed");
    }

    /// The harness's etcd half for real: a real etcd under the stand-in API server.
    #[tokio::test]
    async fn real_etcd_under_a_standin_apiserver() {
        let etcd = PathBuf::from("/usr/bin/etcd");
        if !etcd.is_file() {
            eprintln!("SKIP: no /usr/bin/etcd (apt-get install etcd-server)");
            return;
        }
        let Some((_rec, mut assets)) = standin_assets("ok", Duration::from_secs(60)) else {
            return;
        };
        assets.etcd = etcd;
        let cluster = TestCluster::start_real(&assets).await.unwrap();
        let dir = cluster.real_dir().unwrap().to_path_buf();
        assert!(dir.join("etcd-data/member").is_dir());
        let (_, etcd_pid) = cluster.real_pids().unwrap();
        let exe = std::fs::read_link(format!("/proc/{etcd_pid}/exe")).unwrap();
        assert!(exe.ends_with("etcd"), "{}", exe.display());
        drop(cluster);
        assert!(!alive(etcd_pid) && !dir.exists());
    }

    #[tokio::test]
    async fn a_test_that_panics_still_stops_both_processes_and_removes_the_dir() {
        let Some((_rec, assets)) = standin_assets("ok", Duration::from_secs(60)) else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let cluster = TestCluster::start_real(&assets).await.unwrap();
            let (api, etcd) = cluster.real_pids().unwrap();
            let dir = cluster.real_dir().unwrap().to_path_buf();
            tx.send((api.unwrap(), etcd, dir)).unwrap();
            panic!("a failing test");
        });
        let err = task.await.unwrap_err();
        assert!(err.is_panic());
        let (api, etcd, dir) = rx.await.unwrap();
        assert!(!alive(api) && !alive(etcd));
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_crashing_apiserver_fails_start_with_its_log_and_etcd_is_stopped() {
        let Some((rec, assets)) = standin_assets("crash", Duration::from_secs(60)) else {
            return;
        };
        let err = format!(
            "{:#}",
            TestCluster::start_real(&assets).await.err().unwrap()
        );
        assert!(err.contains("kube-apiserver exited"), "{err}");
        assert!(
            err.contains("stand-in: fatal: --etcd-servers unreachable"),
            "{err}"
        );
        assert!(
            err.contains("stand-in etcd data dir"),
            "etcd's log is shown too: {err}"
        );
        let etcd_pid: u32 = std::fs::read_to_string(rec.path().join("etcd-pid"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(!alive(etcd_pid), "etcd stopped when start failed");
        let data_dir = err
            .split("stand-in etcd data dir ")
            .nth(1)
            .and_then(|s| s.lines().next())
            .unwrap();
        assert!(
            !Path::new(data_dir).parent().unwrap().exists(),
            "temp dir removed"
        );
    }

    #[tokio::test]
    async fn never_ready_fails_at_the_deadline_with_both_logs() {
        let Some((rec, assets)) = standin_assets("never", Duration::from_secs(2)) else {
            return;
        };
        let err = format!(
            "{:#}",
            TestCluster::start_real(&assets).await.err().unwrap()
        );
        assert!(err.contains("not ready within 2s"), "{err}");
        assert!(
            err.contains("503"),
            "the last /readyz answer is shown: {err}"
        );
        assert!(err.contains("--- kube-apiserver log"), "{err}");
        assert!(
            err.contains("stand-in kube-apiserver starting, mode never"),
            "{err}"
        );
        assert!(err.contains("stand-in etcd data dir"), "{err}");
        for line in std::fs::read_to_string(rec.path().join("apiserver-pids"))
            .unwrap()
            .lines()
        {
            assert!(!alive(line.parse().unwrap()));
        }
    }

    #[tokio::test]
    async fn missing_binaries_are_named() {
        let assets = RealAssets {
            kube_apiserver: PathBuf::from("/nonexistent/kube-apiserver"),
            etcd: PathBuf::from("/nonexistent/etcd"),
            ready_timeout: Duration::from_secs(1),
        };
        let err = format!(
            "{:#}",
            TestCluster::start_real(&assets).await.err().unwrap()
        );
        assert!(
            err.contains("TEST_ASSET_KUBE_APISERVER=/nonexistent/kube-apiserver"),
            "{err}"
        );
    }

    /// The real etcd (Debian package `etcd-server`): starts, answers `/health`, stops, leaves
    /// nothing behind.
    #[tokio::test]
    async fn real_etcd_starts_healthy_and_is_stopped_on_drop() {
        let bin = std::env::var_os("TEST_ASSET_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        if !bin.is_file() {
            eprintln!(
                "SKIP: no etcd at {} (apt-get install etcd-server)",
                bin.display()
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::start(&bin, dir.path()).unwrap();
        etcd.wait_healthy(Duration::from_secs(60)).await.unwrap();
        assert!(etcd.healthy().await);
        assert!(etcd.client_url().starts_with("http://127.0.0.1:"));
        let pid = etcd.pid();
        assert!(alive(pid));
        assert!(
            dir.path().join("etcd-data/member").is_dir(),
            "data in the temp dir"
        );
        drop(etcd);
        assert!(!alive(pid));
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn embedded_kubeconfig_is_the_shared_format() {
        let cluster = TestCluster::start_embedded().await.unwrap();
        let s = cluster.server().unwrap();
        assert_eq!(
            cluster.kubeconfig_yaml(),
            kubeconfig_yaml(&s.url(), s.ca_pem(), s.token())
        );
        assert_eq!(
            std::fs::read_to_string(cluster.kubeconfig_path()).unwrap(),
            cluster.kubeconfig_yaml()
        );
        assert!(cluster.real_dir().is_none());
    }
}
