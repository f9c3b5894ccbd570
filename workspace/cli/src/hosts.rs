//! The host clusters a process drives: `--host sim|kube` and the named kube hosts of
//! `--kube-host NAME=CONTEXT` (repeatable; `OVC_KUBE_HOSTS=NAME=CONTEXT,...`), shared by
//! `ovc dev`, `ovc worker` and `ovc serve`.
//!
//! Whatever the flags, the process drives one [`HostRouter`]: the simulator, or the
//! current kubeconfig context (or the in-cluster service account) as the one host
//! `default`, or one kube host per `--kube-host`. Every kube host is checked at start
//! (the API server answers, helm is usable), a NAME given twice or a context the
//! kubeconfig lacks is an error at start, and `--kube-host` without `--host kube` too.

use anyhow::Context;
use ovc_driver::kube::KubeHost;
use ovc_driver::router::HostRouter;
use ovc_types::name::validate_host_name;
use std::sync::Arc;

/// One `--kube-host NAME=CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeHostArg {
    /// The host's name (what a vcluster's `spec.host` says).
    pub name: String,
    /// The kubeconfig context of its cluster.
    pub context: String,
}

/// Parses `NAME=CONTEXT` (NAME a DNS-1123 label, CONTEXT not empty).
pub fn parse_kube_host(s: &str) -> Result<KubeHostArg, String> {
    let (name, context) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: use NAME=CONTEXT (a host name and a context of the kubeconfig)")
    })?;
    validate_host_name(name).map_err(|e| format!("{s:?}: {e}"))?;
    if context.is_empty() {
        return Err(format!("{s:?}: the kubeconfig context after '=' is empty"));
    }
    Ok(KubeHostArg {
        name: name.to_string(),
        context: context.to_string(),
    })
}

/// Checks what can be checked without a cluster: `--kube-host` only with `--host kube`,
/// and no NAME twice.
pub fn check_kube_hosts(host: &str, kube_hosts: &[KubeHostArg]) -> anyhow::Result<()> {
    if kube_hosts.is_empty() {
        return Ok(());
    }
    anyhow::ensure!(
        host == "kube",
        "--kube-host (OVC_KUBE_HOSTS) names kube hosts, but --host is {host}: use --host kube"
    );
    for (i, h) in kube_hosts.iter().enumerate() {
        if let Some(first) = kube_hosts[..i].iter().find(|o| o.name == h.name) {
            anyhow::bail!(
                "--kube-host: host {:?} is given twice ({}={} and {}={})",
                h.name,
                first.name,
                first.context,
                h.name,
                h.context
            );
        }
    }
    Ok(())
}

/// The kube hosts of `kube_hosts`, each checked; none: the one host `default` of the
/// current context (or the in-cluster service account).
pub async fn kube_router(kube_hosts: &[KubeHostArg]) -> anyhow::Result<HostRouter> {
    check_kube_hosts("kube", kube_hosts)?;
    if kube_hosts.is_empty() {
        let kube = KubeHost::from_env().await.context("--host kube")?;
        kube.check().await.map_err(|e| {
            anyhow::anyhow!("--host kube: the host cluster of KUBECONFIG is not usable: {e}")
        })?;
        return Ok(HostRouter::single(Arc::new(kube)));
    }
    // Every context is resolved before any cluster is called, so a misspelt context is
    // reported as such even when another host is down.
    let mut built = Vec::with_capacity(kube_hosts.len());
    for h in kube_hosts {
        let flag = format!("--kube-host {}={}", h.name, h.context);
        let kube = KubeHost::from_context(&h.context)
            .await
            .with_context(|| flag.clone())?;
        built.push((h, flag, kube));
    }
    let mut router = HostRouter::new();
    for (h, flag, kube) in built {
        kube.check().await.map_err(|e| {
            anyhow::anyhow!(
                "{flag}: the host cluster of context {:?} of KUBECONFIG is not usable: {e}",
                h.context
            )
        })?;
        router.add(h.name.clone(), Arc::new(kube)).context(flag)?;
    }
    Ok(router)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_host_flags_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_kube_host("eu=kind-eu").expect("valid"),
            KubeHostArg {
                name: "eu".into(),
                context: "kind-eu".into()
            }
        );
        // A context may itself hold '=' (only the first one splits).
        assert_eq!(parse_kube_host("a=x=y").expect("valid").context, "x=y");
        for (bad, says) in [
            ("eu", "NAME=CONTEXT"),
            ("eu=", "empty"),
            ("=ctx", "must not be empty"),
            ("EU=ctx", "uppercase"),
            ("e_u=ctx", "not allowed"),
        ] {
            let err = parse_kube_host(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_name_given_twice_or_kube_hosts_without_host_kube_are_refused() {
        let a = parse_kube_host("a=one").expect("a");
        let b = parse_kube_host("b=two").expect("b");
        let a2 = parse_kube_host("a=three").expect("a2");
        check_kube_hosts("kube", &[a.clone(), b.clone()]).expect("distinct names");
        check_kube_hosts("sim", &[]).expect("no kube hosts");
        let twice = check_kube_hosts("kube", &[a.clone(), b, a2]).expect_err("a twice");
        assert!(
            twice.to_string().contains("\"a\" is given twice"),
            "{twice}"
        );
        let sim = check_kube_hosts("sim", &[a]).expect_err("sim");
        assert!(sim.to_string().contains("--host kube"), "{sim}");
    }
}
