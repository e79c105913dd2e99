//! The real `lodestone-controller` binary. It never touches the network, so it runs in the
//! root namespace against the API server's loopback URL, exactly as the controller e2e tests do.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// A running controller, logging to a file; killed and reaped when dropped.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    log: PathBuf,
    health: SocketAddr,
}

impl ControllerProcess {
    /// Starts `binary` with `KUBECONFIG=kubeconfig`, leader election off (one replica), its
    /// health endpoint on a free loopback port, `extra` arguments, and stdout and stderr to `log`.
    pub fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        extra: &[&str],
        log: &Path,
    ) -> io::Result<ControllerProcess> {
        // Port 0 is not accepted by every listener setup; pick a free port and release it.
        let health = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let file = File::create(log)?;
        let rust_log = std::env::var("LODESTONE_E2E_LOG")
            .unwrap_or_else(|_| "info,lodestone_controller=debug".into());
        let child = Command::new(binary)
            .arg("--leader-elect=false")
            .arg("--health-addr")
            .arg(health.to_string())
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            // tracing writes the log to stdout; panics and the final error go to stderr.
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", binary.display())))?;
        Ok(ControllerProcess {
            child,
            log: log.to_owned(),
            health,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// Exit status if it has exited (a controller that exits early explains a failed step).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        // Errors mean it already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
