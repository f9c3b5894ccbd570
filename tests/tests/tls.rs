//! Transport security with the built binary: `ovc serve --tls-cert/--tls-key` serves
//! REST and gRPC over TLS, the client speaks `https://` and trusts a private CA given
//! with `--ca-cert` (or `OVC_CA_CERT`) and refuses an untrusted certificate with a clear
//! error; and `ovc` reaches a PostgreSQL that only accepts TLS with `sslmode=require`
//! and `verify-full` (a throwaway cluster started here on its own port, never the
//! shared one).

use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA and a server certificate it signed, for `localhost` and `127.0.0.1`, as PEM
/// files in `dir`: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let paths = (
        dir.join(format!("{ca_name}-ca.pem")),
        dir.join(format!("{ca_name}-server.pem")),
        dir.join(format!("{ca_name}-server.key")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    (paths.0, paths.1, paths.2)
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(ovc_bin())
        .args(args)
        .env_remove("OVC_CA_CERT")
        .envs(env.iter().copied())
        .output()
        .expect("run ovc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_over_tls_and_the_client_trusts_only_the_given_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = certificates(dir.path(), "private");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let db = format!("sqlite://{}", dir.path().join("ovc.db").display());
    let (code, _, err) = run(&["migrate", "--database-url", &db], &[]);
    assert_eq!(code, 0, "{err}");
    let server = DevServer::serve(&[
        "--database-url",
        &db,
        "--auth",
        "none",
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ]);
    assert!(
        server.banner.iter().any(|l| l.contains("https://")),
        "{:?}",
        server.banner
    );
    let port = server
        .rest_addr()
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let ca = ca.to_str().expect("path");
    for url in [
        format!("https://127.0.0.1:{port}"),
        format!("https://localhost:{port}"),
    ] {
        let (code, out, err) = run(
            &[
                "vc",
                "list",
                "-o",
                "json",
                "--server",
                &url,
                "--ca-cert",
                ca,
            ],
            &[],
        );
        assert_eq!(code, 0, "{url}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert!(v["vclusters"].is_array(), "{v}");
    }
    let url = format!("https://127.0.0.1:{port}");
    // OVC_CA_CERT does the same as --ca-cert.
    let (code, _, err) = run(&["vc", "list", "--server", &url], &[("OVC_CA_CERT", ca)]);
    assert_eq!(code, 0, "{err}");
    // The public roots do not know the private CA.
    let (code, _, err) = run(&["vc", "list", "--server", &url], &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Another CA is not this server's.
    let (code, _, err) = run(
        &[
            "vc",
            "list",
            "--server",
            &url,
            "--ca-cert",
            other_ca.to_str().expect("path"),
        ],
        &[],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    // --ca-cert cannot be honoured over http://: an error, not ignored.
    let (code, _, err) = run(
        &[
            "vc",
            "list",
            "--server",
            "http://127.0.0.1:1",
            "--ca-cert",
            ca,
        ],
        &[],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("https://"), "{err}");
    // A CA file that is not PEM is a clear error.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let (code, _, err) = run(
        &[
            "vc",
            "list",
            "--server",
            &url,
            "--ca-cert",
            junk.to_str().expect("path"),
        ],
        &[],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("junk.pem"), "{err}");
}

#[tokio::test]
async fn grpc_is_served_over_tls_too() {
    use ovc_api::grpc::proto::v_cluster_service_client::VClusterServiceClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = certificates(dir.path(), "grpc");
    let db = format!("sqlite://{}", dir.path().join("ovc.db").display());
    assert_eq!(run(&["migrate", "--database-url", &db], &[]).0, 0);
    let server = DevServer::serve(&[
        "--database-url",
        &db,
        "--auth",
        "none",
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ]);
    let addr = server.grpc.trim_start_matches("http://").to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).expect("ca")))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS connect");
    let list = VClusterServiceClient::new(channel)
        .list_v_clusters(ovc_api::grpc::proto::ListVClustersRequest::default())
        .await
        .expect("list over TLS");
    assert!(list.into_inner().vclusters.is_empty());
    // Plain-text gRPC to a TLS port does not get an answer.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = VClusterServiceClient::new(channel)
            .list_v_clusters(ovc_api::grpc::proto::ListVClustersRequest::default())
            .await;
        assert!(r.is_err(), "a plain-text call to the TLS port was answered");
    }
}

/// A PostgreSQL cluster of our own in a temp dir, on a free port, that accepts TLS
/// connections only (`hostssl`; plain TCP is rejected). Stopped on drop.
struct TlsPostgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    ca: PathBuf,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("{name} not found under /usr/lib/postgresql/*/bin: install the PostgreSQL server")
    })
}

/// Runs `cmd` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let dir = tempfile::Builder::new()
            .prefix("ovc-pg-tls")
            .tempdir_in("/tmp")
            .expect("tmp");
        let data = dir.path().join("data");
        let (ca, cert, key) = certificates(dir.path(), "pg");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba");
        for (from, to) in [(&cert, "server.crt"), (&key, "server.key")] {
            std::fs::copy(from, data.join(to)).expect("copy");
        }
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = as_postgres(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = TlsPostgres {
            child,
            port,
            _dir: dir,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // SIGTERM: a smart shutdown of our own cluster only.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `ovc migrate` against the TLS-only cluster, retried while it finishes starting.
fn migrate(url: &str) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = run(&["migrate", "--database-url", url], &[]);
        let starting = err.contains("starting up") || err.contains("Connection refused");
        if code == 0 || !starting || Instant::now() > deadline {
            return (code, format!("{out}{err}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn postgres_urls_with_sslmode_require_and_verify_full_work() {
    let pg = TlsPostgres::start();
    let ca = pg.ca.to_str().expect("path").to_string();
    let (code, out) = migrate(&pg.url("127.0.0.1", "sslmode=require"));
    assert_eq!(code, 0, "sslmode=require: {out}");
    let (code, out) = migrate(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert_eq!(code, 0, "sslmode=verify-full with the CA: {out}");
    let (code, out) = migrate(&pg.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")));
    assert_eq!(code, 0, "sslmode=verify-ca with the CA: {out}");
    // The server only takes TLS: proof the connections above were encrypted.
    let (code, out) = migrate(&pg.url("127.0.0.1", "sslmode=disable"));
    assert_ne!(code, 0, "a plain connection was accepted: {out}");
    // verify-full against a CA that did not sign the server's certificate fails.
    let (code, out) = migrate(&pg.url("localhost", "sslmode=verify-full"));
    assert_ne!(code, 0, "verify-full trusted an unknown CA: {out}");
}
