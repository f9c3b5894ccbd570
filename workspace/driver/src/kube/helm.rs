//! The Helm side of the kube driver: ovc drives the `helm` binary (v3 or newer), exactly
//! as vcluster's CLI does (docs/vcluster-mechanics.md §1 step 3, §6, §7), rather than
//! re-implementing Helm's release storage. `helm status -o json` is the one source for
//! a release's revision, status, chart version and values.

use super::error::{KubeError, KubeResult};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Where the vcluster chart comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartSource {
    /// A chart repository: `helm upgrade --install NAME CHART --repo REPO`.
    Repo {
        /// Repository URL (default `https://charts.loft.sh`).
        repo: String,
        /// Chart name (default `vcluster`).
        chart: String,
    },
    /// An OCI reference (`oci://registry/path/vcluster`), for mirrored registries.
    Oci(String),
    /// A chart directory or `.tgz` on the machine running the driver (air-gapped hosts).
    Local(PathBuf),
}

impl ChartSource {
    /// The default: chart `vcluster` from `https://charts.loft.sh` (pkg/constants).
    pub fn loft() -> Self {
        ChartSource::Repo {
            repo: "https://charts.loft.sh".into(),
            chart: "vcluster".into(),
        }
    }

    /// Parses a chart setting: `oci://...`, `https://REPO[#CHART]` (chart default
    /// `vcluster`), or a path (must exist).
    pub fn parse(s: &str) -> KubeResult<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(KubeError::Config("the chart setting is empty".into()));
        }
        if s.starts_with("oci://") {
            return Ok(ChartSource::Oci(s.into()));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            let (repo, chart) = s.split_once('#').unwrap_or((s, "vcluster"));
            if chart.is_empty() {
                return Err(KubeError::Config(format!(
                    "chart {s:?}: empty chart name after '#'"
                )));
            }
            return Ok(ChartSource::Repo {
                repo: repo.into(),
                chart: chart.into(),
            });
        }
        let path = PathBuf::from(s);
        if !path.exists() {
            return Err(KubeError::Config(format!(
                "chart {s:?} is neither oci://, http(s):// nor an existing local path"
            )));
        }
        Ok(ChartSource::Local(path))
    }
}

/// How the driver runs helm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmConfig {
    /// The helm binary (default `helm`, looked up on PATH).
    pub binary: PathBuf,
    /// The chart.
    pub chart: ChartSource,
    /// The chart version (= vcluster version), passed as `--version`.
    pub version: String,
    /// `--kubeconfig` for helm (default: helm's own, i.e. `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-context` for helm.
    pub kube_context: Option<String>,
    /// Longest a helm command may run.
    pub timeout: Duration,
}

impl Default for HelmConfig {
    fn default() -> Self {
        HelmConfig {
            binary: PathBuf::from("helm"),
            chart: ChartSource::loft(),
            version: DEFAULT_CHART_VERSION.into(),
            kubeconfig: None,
            kube_context: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The vcluster chart version installed unless configured: the first line with snapshot
/// request objects (mechanics §4, v0.29+).
pub const DEFAULT_CHART_VERSION: &str = "0.29.1";

/// Helm's release status (`info.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HelmStatus {
    /// Installed and current.
    Deployed,
    /// An install did not finish.
    PendingInstall,
    /// An upgrade did not finish.
    PendingUpgrade,
    /// A rollback did not finish.
    PendingRollback,
    /// The last install/upgrade failed.
    Failed,
    /// An uninstall is running.
    Uninstalling,
    /// Replaced by a newer revision.
    Superseded,
    /// Uninstalled with history kept.
    Uninstalled,
    /// Helm's `unknown`.
    Unknown,
}

impl HelmStatus {
    /// Helm's own spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HelmStatus::Deployed => "deployed",
            HelmStatus::PendingInstall => "pending-install",
            HelmStatus::PendingUpgrade => "pending-upgrade",
            HelmStatus::PendingRollback => "pending-rollback",
            HelmStatus::Failed => "failed",
            HelmStatus::Uninstalling => "uninstalling",
            HelmStatus::Superseded => "superseded",
            HelmStatus::Uninstalled => "uninstalled",
            HelmStatus::Unknown => "unknown",
        }
    }
}

/// A release as `helm status -o json` prints it (the fields ovc reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HelmRelease {
    /// Release name.
    pub name: String,
    /// Revision.
    pub version: u32,
    /// `info`.
    pub info: HelmReleaseInfo,
    /// `chart` (absent in some helm versions' status output).
    #[serde(default)]
    pub chart: Option<HelmChart>,
    /// The user-supplied values (`config`).
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// `info` of a release.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HelmReleaseInfo {
    /// Status.
    pub status: HelmStatus,
}

/// `chart` of a release.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HelmChart {
    /// `chart.metadata`.
    pub metadata: HelmChartMetadata,
}

/// `chart.metadata` of a release.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HelmChartMetadata {
    /// Chart name.
    #[serde(default)]
    pub name: String,
    /// Chart version.
    #[serde(default)]
    pub version: String,
}

impl HelmRelease {
    /// The chart version, `""` when helm did not say.
    pub fn chart_version(&self) -> &str {
        self.chart
            .as_ref()
            .map(|c| c.metadata.version.as_str())
            .unwrap_or("")
    }
}

/// Runs helm commands.
#[derive(Debug)]
pub struct Helm {
    config: HelmConfig,
    checked: OnceCell<String>,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Helm {
    /// A helm runner; nothing runs until the first call.
    pub fn new(config: HelmConfig) -> Self {
        Helm {
            config,
            checked: OnceCell::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HelmConfig {
        &self.config
    }

    async fn run(&self, args: &[String]) -> KubeResult<Output> {
        let mut cmd = tokio::process::Command::new(&self.config.binary);
        cmd.args(args);
        if let Some(k) = &self.config.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        if let Some(c) = &self.config.kube_context {
            cmd.arg("--kube-context").arg(c);
        }
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = match tokio::time::timeout(self.config.timeout, cmd.output()).await {
            Err(_) => {
                return Err(KubeError::Helm {
                    transient: true,
                    message: format!(
                        "helm {} did not finish within {:?}",
                        args.join(" "),
                        self.config.timeout
                    ),
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.missing());
            }
            Ok(Err(e)) => {
                return Err(KubeError::Helm {
                    transient: false,
                    message: format!("cannot run {}: {e}", self.config.binary.display()),
                });
            }
            Ok(Ok(out)) => out,
        };
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn missing(&self) -> KubeError {
        KubeError::Helm {
            transient: false,
            message: format!(
                "helm not found ({}): the kube driver needs Helm v3 or newer on PATH \
                 (or its path in OVC_HELM)",
                self.config.binary.display()
            ),
        }
    }

    fn failed(&self, args: &[String], out: &Output) -> KubeError {
        let e = &out.stderr;
        // helm/helm#8987 and an unreachable API server are worth retrying.
        let transient = e.contains("another operation")
            || e.contains("cluster unreachable")
            || e.contains("connection refused")
            || e.contains("i/o timeout")
            || e.contains("TLS handshake timeout");
        KubeError::Helm {
            transient,
            message: format!("helm {} failed: {e}", args.first().map_or("", |s| s)),
        }
    }

    /// `helm version --short`; needs v3 or newer. Runs once per driver.
    pub async fn check_version(&self) -> KubeResult<&str> {
        self.checked
            .get_or_try_init(|| async {
                let args = vec!["version".to_string(), "--short".to_string()];
                let out = self.run(&args).await?;
                if !out.ok {
                    return Err(self.failed(&args, &out));
                }
                let version = out.stdout.trim().to_owned();
                let major = version
                    .trim_start_matches('v')
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok());
                match major {
                    Some(m) if m >= 3 => Ok(version),
                    _ => Err(KubeError::Helm {
                        transient: false,
                        message: format!(
                            "{} reports version {version:?}: the kube driver needs Helm v3 or newer",
                            self.config.binary.display()
                        ),
                    }),
                }
            })
            .await
            .map(String::as_str)
    }

    fn not_found(out: &Output) -> bool {
        out.stderr.contains("not found")
    }

    /// `helm status NAME -n NS -o json`; `None` when there is no release.
    pub async fn status(&self, namespace: &str, name: &str) -> KubeResult<Option<HelmRelease>> {
        self.check_version().await?;
        let args = strings(&["status", name, "-n", namespace, "-o", "json"]);
        let out = self.run(&args).await?;
        if !out.ok {
            if Self::not_found(&out) {
                return Ok(None);
            }
            return Err(self.failed(&args, &out));
        }
        serde_json::from_str(&out.stdout)
            .map(Some)
            .map_err(|e| KubeError::Helm {
                transient: false,
                message: format!("helm status {name} printed JSON ovc cannot read: {e}"),
            })
    }

    /// The `helm upgrade --install` arguments for `values_file`.
    pub fn upgrade_args(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        values_file: &str,
    ) -> Vec<String> {
        let mut args = strings(&["upgrade", "--install", name]);
        match &self.config.chart {
            ChartSource::Repo { repo, chart } => {
                args.push(chart.clone());
                args.push("--repo".into());
                args.push(repo.clone());
            }
            ChartSource::Oci(r) => args.push(r.clone()),
            ChartSource::Local(p) => args.push(p.display().to_string()),
        }
        args.extend(strings(&[
            "--version",
            version,
            "-n",
            namespace,
            "-f",
            values_file,
        ]));
        args
    }

    /// `helm upgrade --install NAME CHART ... -f values.yaml`.
    pub async fn upgrade_install(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        values: &serde_json::Value,
    ) -> KubeResult<()> {
        self.check_version().await?;
        let dir = tempfile::tempdir().map_err(|e| KubeError::Helm {
            transient: true,
            message: format!("cannot create a temporary directory for the values: {e}"),
        })?;
        let file = dir.path().join("values.yaml");
        // JSON is YAML: helm reads it as is.
        let text = serde_json::to_string_pretty(values).unwrap_or_default();
        tokio::fs::write(&file, text)
            .await
            .map_err(|e| KubeError::Helm {
                transient: true,
                message: format!("cannot write the values file: {e}"),
            })?;
        let args = self.upgrade_args(namespace, name, version, &file.display().to_string());
        let out = self.run(&args).await?;
        if !out.ok {
            return Err(self.failed(&args, &out));
        }
        Ok(())
    }

    /// `helm uninstall NAME -n NS`; no release is success.
    pub async fn uninstall(&self, namespace: &str, name: &str) -> KubeResult<()> {
        self.check_version().await?;
        let args = strings(&["uninstall", name, "-n", namespace]);
        let out = self.run(&args).await?;
        if !out.ok && !Self::not_found(&out) {
            return Err(self.failed(&args, &out));
        }
        Ok(())
    }

    /// `helm rollback NAME -n NS` (to the previous revision).
    pub async fn rollback(&self, namespace: &str, name: &str) -> KubeResult<()> {
        self.check_version().await?;
        let args = strings(&["rollback", name, "-n", namespace]);
        let out = self.run(&args).await?;
        if !out.ok {
            return Err(self.failed(&args, &out));
        }
        Ok(())
    }

    /// Mechanics §1 step 3: a release stuck in `pending-install` is uninstalled, one stuck
    /// in `pending-upgrade`/`pending-rollback` is rolled back. Returns the release as it
    /// is afterwards.
    pub async fn recover_pending(
        &self,
        namespace: &str,
        name: &str,
    ) -> KubeResult<Option<HelmRelease>> {
        let Some(rel) = self.status(namespace, name).await? else {
            return Ok(None);
        };
        match rel.info.status {
            HelmStatus::PendingInstall => {
                tracing::warn!(
                    namespace,
                    name,
                    "helm release stuck in pending-install: uninstalling"
                );
                self.uninstall(namespace, name).await?;
            }
            HelmStatus::PendingUpgrade | HelmStatus::PendingRollback => {
                tracing::warn!(
                    namespace,
                    name,
                    status = rel.info.status.as_str(),
                    "helm release stuck: rolling back"
                );
                self.rollback(namespace, name).await?;
            }
            HelmStatus::Uninstalling => {
                return Err(KubeError::NotYet {
                    message: format!("helm release {name} in {namespace} is being uninstalled"),
                    retry_after: Duration::from_secs(2),
                });
            }
            _ => return Ok(Some(rel)),
        }
        self.status(namespace, name).await
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helm(chart: ChartSource) -> Helm {
        Helm::new(HelmConfig {
            chart,
            ..HelmConfig::default()
        })
    }

    #[test]
    fn chart_settings_parse_into_repo_oci_or_local_path() {
        assert_eq!(
            ChartSource::parse("https://mirror.example/charts#vc"),
            Ok(ChartSource::Repo {
                repo: "https://mirror.example/charts".into(),
                chart: "vc".into()
            })
        );
        assert_eq!(
            ChartSource::parse("https://charts.loft.sh"),
            Ok(ChartSource::loft())
        );
        assert_eq!(
            ChartSource::parse("oci://registry.local/charts/vcluster"),
            Ok(ChartSource::Oci(
                "oci://registry.local/charts/vcluster".into()
            ))
        );
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().display().to_string();
        assert_eq!(
            ChartSource::parse(&path),
            Ok(ChartSource::Local(dir.path().to_owned()))
        );
        assert!(ChartSource::parse("/no/such/chart").is_err());
        assert!(ChartSource::parse("https://x#").is_err());
        assert!(ChartSource::parse(" ").is_err());
    }

    #[test]
    fn upgrade_arguments_name_the_chart_as_helm_expects() {
        let oci = helm(ChartSource::Oci("oci://r/vcluster".into()));
        assert_eq!(
            oci.upgrade_args("ns", "demo", "0.30.0", "/v.yaml"),
            vec![
                "upgrade",
                "--install",
                "demo",
                "oci://r/vcluster",
                "--version",
                "0.30.0",
                "-n",
                "ns",
                "-f",
                "/v.yaml"
            ]
        );
        let local = helm(ChartSource::Local("/charts/vcluster".into()));
        assert_eq!(
            local.upgrade_args("ns", "demo", "0.30.0", "/v.yaml")[3],
            "/charts/vcluster"
        );
    }
}
