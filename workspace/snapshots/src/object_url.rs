//! Object-store URLs (`s3://`, `gcs://`, `azblob://`) turned into OpenDAL operators.
//!
//! The URL names *where* (bucket or container, prefix) and *how* (region, endpoint,
//! addressing, server-side encryption), never *who*: credentials come from the
//! environment the way each cloud's own tools read them, and a URL that carries a secret
//! (user info, or a query parameter that names a key, token or signature) is refused, so
//! the URL can be printed, stored in `Snapshot.location` and logged as it is. The
//! environment is passed in ([`StorageEnv`]) so tests can give credentials without
//! touching the process environment.

use crate::ArtifactError;
use opendal::Operator;
use ovc_types::ObjectLocation;
use std::collections::BTreeMap;

/// Reads environment variables for an object store's configuration and credentials.
pub trait StorageEnv {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl StorageEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl StorageEnv for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// Query parameters that would carry a secret: refused wherever they appear.
const SECRET_PARAMS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "session_token",
    "account_key",
    "sas_token",
    "sig",
    "signature",
    "credential",
    "credentials",
    "connection_string",
    "password",
    "token",
    "key",
    "sse_customer_key",
];

/// A parsed object-store URL: scheme, bucket/container, prefix and options.
#[derive(Debug)]
struct ObjectUrl {
    scheme: &'static str,
    bucket: String,
    prefix: String,
    options: BTreeMap<String, String>,
}

/// What [`open`] returns: the operator and the printable root URL (ends with `/`, no
/// query, no secret).
pub(crate) struct Opened {
    pub(crate) op: Operator,
    /// The root as an [`ObjectLocation`] whose key is the prefix (`""` at the bucket's root).
    pub(crate) root: ObjectLocation,
    pub(crate) root_url: String,
    /// Streamed writes use a resumable upload (GCS).
    pub(crate) resumable_writes: bool,
}

fn refused(url: &str, why: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Refused(format!("artifact storage URL {url:?}: {why}"))
}

/// `url` as it may be printed: without its query or fragment, user info replaced by
/// `***` (a refused URL may carry a secret there).
pub fn redact(url: &str) -> String {
    shown(url)
}

/// The URL with its query removed, for error messages (the query may hold what we are
/// refusing; the user knows what they typed).
fn shown(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    }
}

fn parse(url: &str, scheme: &'static str, rest: &str) -> Result<ObjectUrl, ArtifactError> {
    let shown = shown(url);
    if rest.contains('#') {
        return Err(refused(&shown, "a storage URL cannot have a fragment"));
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.contains('@') || bucket.contains(':') {
        return Err(refused(
            &shown,
            "credentials or ports do not belong in the URL: give credentials through the \
             environment and an endpoint with ?endpoint=",
        ));
    }
    if bucket.is_empty() {
        return Err(refused(&shown, format!("{scheme}:// needs a bucket name")));
    }
    let mut options = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase().replace('-', "_");
        if SECRET_PARAMS.contains(&name.as_str()) || name.starts_with("x_amz_") {
            return Err(refused(
                &shown,
                format!(
                    "the query parameter {name:?} would carry a secret; credentials come from \
                     the environment (see the README), never from the URL"
                ),
            ));
        }
        let value = crate::opendal_store::percent_decode(value)
            .ok_or_else(|| refused(&shown, format!("bad %-escape in {name:?}")))?;
        if options.insert(name.clone(), value).is_some() {
            return Err(refused(&shown, format!("{name:?} is given twice")));
        }
    }
    let prefix = crate::opendal_store::percent_decode(prefix)
        .ok_or_else(|| refused(&shown, "bad %-escape in the prefix"))?;
    let prefix = prefix.trim_matches('/').to_string();
    if !prefix.is_empty() {
        crate::key::check_prefix(&prefix).map_err(|e| refused(&shown, e))?;
    }
    Ok(ObjectUrl {
        scheme,
        bucket: bucket.to_string(),
        prefix,
        options,
    })
}

impl ObjectUrl {
    fn take(&mut self, name: &str) -> Option<String> {
        self.options.remove(name)
    }

    fn take_bool(&mut self, url: &str, name: &str) -> Result<Option<bool>, ArtifactError> {
        match self.take(name).as_deref() {
            None => Ok(None),
            Some("true" | "1" | "yes") => Ok(Some(true)),
            Some("false" | "0" | "no") => Ok(Some(false)),
            Some(other) => Err(refused(
                url,
                format!("{name}={other:?}: expected true or false"),
            )),
        }
    }

    /// Fails on any option nobody took: a setting ovc cannot honour is an error.
    fn finish(&self, url: &str, known: &str) -> Result<(), ArtifactError> {
        match self.options.keys().next() {
            None => Ok(()),
            Some(name) => Err(refused(
                url,
                format!(
                    "unknown option {name:?} for {}:// (known: {known})",
                    self.scheme
                ),
            )),
        }
    }

    fn root(&self) -> String {
        format!("/{}", self.prefix)
    }

    fn root_url(&self) -> String {
        let mut s = format!("{}://{}/", self.scheme, self.bucket);
        if !self.prefix.is_empty() {
            s.push_str(&crate::opendal_store::percent_encode(&self.prefix));
            s.push('/');
        }
        s
    }
}

/// Opens `s3://`, `gcs://` (or `gs://`) and `azblob://` URLs; `scheme` is lowercase.
pub(crate) fn open(
    url: &str,
    scheme: &str,
    rest: &str,
    env: &dyn StorageEnv,
) -> Result<Opened, ArtifactError> {
    let shown_url = shown(url);
    let mut parsed = match scheme {
        "s3" => parse(url, "s3", rest)?,
        "gcs" | "gs" => parse(url, "gcs", rest)?,
        "azblob" => parse(url, "azblob", rest)?,
        _ => unreachable!("open is only called for object-store schemes"),
    };
    let root_url = parsed.root_url();
    let (op, root) = match parsed.scheme {
        "s3" => s3(&shown_url, &mut parsed, env)?,
        "gcs" => gcs(&shown_url, &mut parsed, env)?,
        _ => azblob(&shown_url, &mut parsed, env)?,
    };
    Ok(Opened {
        op,
        root,
        root_url,
        resumable_writes: parsed.scheme == "gcs",
    })
}

fn build(url: &str, builder: impl opendal::Builder) -> Result<Operator, ArtifactError> {
    // The process-wide HTTP transport (reqwest on rustls with ring, the workspace's one
    // TLS stack); repeated calls are no-ops, and a provider already installed stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    opendal::install_default();
    Operator::new(builder)
        .map(|op| op.layer(opendal::layers::RetryLayer::new().with_max_times(4)))
        .map_err(|e| refused(url, e))
}

/// `s3://bucket/prefix?region=&endpoint=&path_style=&sse=&sse_kms_key_id=&storage_class=`.
/// Credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; region
/// `AWS_REGION` / `AWS_DEFAULT_REGION`; endpoint `AWS_ENDPOINT_URL_S3` /
/// `AWS_ENDPOINT_URL`; without keys in the environment, the AWS default chain (profile
/// files, web identity, instance metadata).
fn s3(
    url: &str,
    u: &mut ObjectUrl,
    env: &dyn StorageEnv,
) -> Result<(Operator, ObjectLocation), ArtifactError> {
    let mut b = opendal::services::S3::default()
        .bucket(&u.bucket)
        .root(&u.root());
    let region = u
        .take("region")
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    b = b.region(&region);
    let endpoint = u
        .take("endpoint")
        .or_else(|| env.var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env.var("AWS_ENDPOINT_URL"));
    if let Some(endpoint) = &endpoint {
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(refused(
                url,
                format!("endpoint {endpoint:?} must start with http:// or https://"),
            ));
        }
        b = b.endpoint(endpoint);
    }
    // OpenDAL addresses path-style by default; AWS's own default is virtual-hosted.
    let path_style = u.take_bool(url, "path_style")? != Some(false);
    if !path_style {
        b = b.enable_virtual_host_style();
    }
    let root = ObjectLocation::S3 {
        bucket: u.bucket.clone(),
        key: u.prefix.clone(),
        region: region.clone(),
        endpoint: endpoint.clone(),
        path_style,
    };
    let kms_key = u.take("sse_kms_key_id");
    match (u.take("sse").as_deref(), kms_key) {
        (None, None) => {}
        (Some("AES256" | "aes256" | "s3"), None) => b = b.server_side_encryption_with_s3_key(),
        (Some("aws:kms" | "kms"), None) => b = b.server_side_encryption_with_aws_managed_kms_key(),
        (Some("aws:kms" | "kms") | None, Some(key)) => {
            b = b.server_side_encryption_with_customer_managed_kms_key(&key)
        }
        (Some(other), _) => {
            return Err(refused(
                url,
                format!(
                    "sse={other:?} is not supported (AES256 or aws:kms, with \
                     sse_kms_key_id= for a customer-managed key)"
                ),
            ));
        }
    }
    if let Some(class) = u.take("storage_class") {
        b = b.default_storage_class(&class);
    }
    u.finish(
        url,
        "region, endpoint, path_style, sse, sse_kms_key_id, storage_class",
    )?;
    match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            b = b
                .access_key_id(&id)
                .secret_access_key(&secret)
                .disable_ec2_metadata();
            if let Some(token) = env.var("AWS_SESSION_TOKEN") {
                b = b.session_token(&token);
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(refused(
                url,
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together",
            ));
        }
        (None, None) => {}
    }
    Ok((build(url, b)?, root))
}

/// `gcs://bucket/prefix?endpoint=`. Credentials: `GOOGLE_APPLICATION_CREDENTIALS` (a
/// service-account file) or the default chain; `STORAGE_EMULATOR_HOST` points at an
/// emulator (no authentication).
fn gcs(
    url: &str,
    u: &mut ObjectUrl,
    env: &dyn StorageEnv,
) -> Result<(Operator, ObjectLocation), ArtifactError> {
    let mut b = opendal::services::Gcs::default()
        .bucket(&u.bucket)
        .root(&u.root());
    let emulator = env.var("STORAGE_EMULATOR_HOST").map(|h| {
        if h.starts_with("http://") || h.starts_with("https://") {
            h
        } else {
            format!("http://{h}")
        }
    });
    let endpoint = u.take("endpoint").or(emulator.clone());
    u.finish(url, "endpoint")?;
    if let Some(endpoint) = &endpoint {
        b = b.endpoint(endpoint);
    }
    if emulator.is_some() {
        b = b
            .skip_signature()
            .disable_vm_metadata()
            .disable_config_load();
    } else if let Some(path) = env.var("GOOGLE_APPLICATION_CREDENTIALS") {
        b = b.credential_path(&path);
    }
    let root = ObjectLocation::Gcs {
        bucket: u.bucket.clone(),
        key: u.prefix.clone(),
        endpoint,
    };
    Ok((build(url, b)?, root))
}

/// `azblob://container/prefix?endpoint=`. Credentials: `AZURE_STORAGE_CONNECTION_STRING`,
/// or `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`. The
/// endpoint defaults to `https://<account>.blob.core.windows.net`.
fn azblob(
    url: &str,
    u: &mut ObjectUrl,
    env: &dyn StorageEnv,
) -> Result<(Operator, ObjectLocation), ArtifactError> {
    let endpoint = u.take("endpoint");
    u.finish(url, "endpoint")?;
    let mut b = match env.var("AZURE_STORAGE_CONNECTION_STRING") {
        // The parser's error could quote the string: say only that it is bad.
        Some(conn) => opendal::services::Azblob::from_connection_string(&conn).map_err(|_| {
            refused(
                url,
                "AZURE_STORAGE_CONNECTION_STRING is not a valid connection string",
            )
        })?,
        None => {
            let account = env.var("AZURE_STORAGE_ACCOUNT").ok_or_else(|| {
                refused(
                    url,
                    "azblob:// needs AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT \
                     with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN",
                )
            })?;
            let mut b = opendal::services::Azblob::default()
                .account_name(&account)
                .endpoint(&format!("https://{account}.blob.core.windows.net"));
            if let Some(key) = env.var("AZURE_STORAGE_KEY") {
                b = b.account_key(&key);
            } else if let Some(sas) = env.var("AZURE_STORAGE_SAS_TOKEN") {
                b = b.sas_token(&sas);
            }
            b
        }
    };
    if let Some(endpoint) = &endpoint {
        b = b.endpoint(endpoint);
    }
    b = b.container(&u.bucket).root(&u.root());
    let root = ObjectLocation::Azblob {
        endpoint: azblob_endpoint(endpoint.as_deref(), env)
            .trim_end_matches('/')
            .to_string(),
        container: u.bucket.clone(),
        key: u.prefix.clone(),
    };
    Ok((build(url, b)?, root))
}

/// The blob endpoint a client outside this process uses: `?endpoint=`, else the
/// connection string's `BlobEndpoint` (or its `AccountName`), else the account of
/// `AZURE_STORAGE_ACCOUNT`.
fn azblob_endpoint(endpoint: Option<&str>, env: &dyn StorageEnv) -> String {
    if let Some(e) = endpoint {
        return e.to_string();
    }
    let conn = env
        .var("AZURE_STORAGE_CONNECTION_STRING")
        .unwrap_or_default();
    let field = |name: &str| {
        conn.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if let Some(e) = field("BlobEndpoint") {
        return e;
    }
    let account = field("AccountName")
        .or_else(|| env.var("AZURE_STORAGE_ACCOUNT"))
        .unwrap_or_default();
    format!("https://{account}.blob.core.windows.net")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_hides_user_info_and_query() {
        assert_eq!(shown("s3://k:s@b/p?x=1"), "s3://***@b/p");
        assert_eq!(shown("s3://b/p?secret_access_key=x"), "s3://b/p");
    }

    #[test]
    fn parse_splits_bucket_prefix_and_options() {
        let u = parse("s3://b/a/b/?region=eu", "s3", "b/a/b/?region=eu").unwrap();
        assert_eq!(u.bucket, "b");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.options["region"], "eu");
        assert_eq!(u.root_url(), "s3://b/a/b/");
        let u = parse("s3://b", "s3", "b").unwrap();
        assert_eq!(u.root_url(), "s3://b/");
        assert_eq!(u.root(), "/");
    }
}
