//! The test cluster entry point: what every end-to-end test and the sandbox stand on.
//!
//! [`TestCluster::start`] runs the embedded API server and hands out a kube client built from a
//! kubeconfig file, the same path the real binaries take. When `TEST_ASSET_KUBE_APISERVER` and
//! `TEST_ASSET_ETCD` are set (the envtest convention) a real kube-apiserver will be used instead;
//! that path is not implemented yet and reports a clear error.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

use crate::apiserver::{Server, ServerConfig};

/// A running cluster: the embedded API server, its kubeconfig and a client.
pub struct TestCluster {
    server: Option<Server>,
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

impl TestCluster {
    /// Start the embedded server, or fail clearly if a real kube-apiserver was requested.
    pub async fn start() -> anyhow::Result<TestCluster> {
        let real = std::env::var_os("TEST_ASSET_KUBE_APISERVER").is_some()
            && std::env::var_os("TEST_ASSET_ETCD").is_some();
        if real {
            bail!(
                "TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD are set, but starting a real \
                 kube-apiserver + etcd is not implemented yet; unset them to use the embedded server"
            );
        }
        let server = Server::start(ServerConfig::default()).await?;
        let file = tempfile::Builder::new()
            .prefix("lodestone-kubeconfig-")
            .suffix(".yaml")
            .tempfile()?;
        let kubeconfig = file.into_temp_path();
        server.write_kubeconfig(&kubeconfig)?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        Ok(TestCluster {
            server: Some(server),
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

    /// Whether this is the embedded server.
    pub fn is_embedded(&self) -> bool {
        self.server.is_some()
    }

    /// The embedded server, for what only it can do (`compact`, the token, the URL).
    pub fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }

    /// Restart the API server: every connection and watch is cut, state is kept.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match &mut self.server {
            Some(s) => Ok(s.restart().await?),
            None => bail!("restart is only supported for the embedded server"),
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
