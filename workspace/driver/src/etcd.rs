//! The etcd backing store, dumped and loaded through the etcd v3 API (`etcd-client`):
//! what a host driver uses when a vcluster keeps its state in an etcd that ovc can reach
//! (an external etcd), instead of asking vcluster's own snapshot machinery.
//!
//! A dump reads every key under the store's prefix **at one revision** (the revision of
//! the first page; later pages ask for that revision), so it is consistent however long
//! it takes and whatever is written meanwhile; a compaction past that revision fails it
//! as transient (the step dumps again at a newer one). A load wipes the prefix, then
//! writes the keys back in transactions of at most [`TXN_OPS`] puts (etcd's default
//! `--max-txn-ops`); repeated after a crash, it wipes and writes again.
//!
//! The data is streamed in a small framed format (no whole store in memory):
//! `OVCETCD2`, the revision (i64, big-endian), then per key `u32 len, key, u32 len,
//! value`, and a trailer `u32::MAX, u64 key count`, so a load can tell a complete dump
//! from a cut one. Keys are written *relative to the prefix*, so a dump loads into
//! another prefix (a restore into a new vcluster). `OVCETCD1` (the first version, keys
//! absolute; no driver ever wrote it into a snapshot) still loads, into its own prefix
//! only. The artifact's checksums are verified before a load starts; the trailer is the
//! format's own last line of defence.
//!
//! The same pass derives the per-object export (DESIGN.md §8): every key under
//! `/registry/` (Kubernetes' layout, `/registry/[GROUP/]RESOURCE/[NAMESPACE/]NAME`) whose
//! value is an object (JSON, or Kubernetes protobuf with its `k8s\0` envelope) goes to
//! [`BackingStoreSink::write_object`] ([`exported_object`]).

use crate::{
    BackingStoreInfo, BackingStoreSink, BackingStoreSource, CallCtx, DriverError, DriverResult,
    ExportedObject,
};
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use ovc_types::Code;

/// The first bytes of a dump (keys relative to the prefix).
pub const MAGIC: &[u8; 8] = b"OVCETCD2";
/// The first bytes of a dump of the first version (keys absolute).
pub const MAGIC_V1: &[u8; 8] = b"OVCETCD1";
/// Keys read per range request.
pub const PAGE: i64 = 500;
/// Puts per transaction on load (etcd's default `--max-txn-ops` is 128).
pub const TXN_OPS: usize = 128;
/// Bytes buffered before a chunk goes to the sink.
const CHUNK: usize = 256 * 1024;
/// The length that marks the trailer instead of a key.
const TRAILER: u32 = u32::MAX;

/// What a dump wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdDump {
    /// The revision every key was read at (record it in the manifest).
    pub revision: i64,
    /// Keys written.
    pub keys: u64,
    /// Bytes written to the sink.
    pub bytes: u64,
    /// Objects given to the sink's per-object export.
    pub objects: u64,
}

/// What a load wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdLoad {
    /// The revision the dump was taken at.
    pub dumped_at_revision: i64,
    /// Keys written back.
    pub keys: u64,
    /// Bytes read from the source.
    pub bytes: u64,
}

/// One etcd (cluster) and the key prefix that is the vcluster's backing store (`""`:
/// the whole keyspace, as for a vcluster's dedicated etcd).
#[derive(Clone)]
pub struct EtcdBackingStore {
    client: Client,
    prefix: Vec<u8>,
}

impl std::fmt::Debug for EtcdBackingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackingStore")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl EtcdBackingStore {
    /// Connects to `endpoints` (`http://host:port`); `prefix` scopes every read and write.
    pub async fn connect(endpoints: &[String], prefix: impl Into<Vec<u8>>) -> DriverResult<Self> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(30));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| etcd_error("connecting to etcd", e))?;
        Ok(Self {
            client,
            prefix: prefix.into(),
        })
    }

    /// The same etcd (one connection, shared), scoped to `prefix` instead.
    pub fn scoped(&self, prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            client: self.client.clone(),
            prefix: prefix.into(),
        }
    }

    /// The prefix every read and write is scoped to.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// How many keys are under the prefix (one request: also a reachability check).
    pub async fn count(&self, ctx: &CallCtx) -> DriverResult<i64> {
        ctx.check()?;
        let end = self.range_end();
        let start = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.clone()
        };
        let resp = self
            .client
            .kv_client()
            .get(
                start,
                Some(GetOptions::new().with_range(end).with_count_only()),
            )
            .await
            .map_err(|e| etcd_error("counting keys", e))?;
        Ok(resp.count())
    }

    /// Deletes every key under the prefix (a vcluster uninstalled: its data goes with
    /// it). Returns how many were deleted.
    pub async fn wipe(&self, ctx: &CallCtx) -> DriverResult<i64> {
        ctx.check()?;
        let (key, options) = self.wipe_range();
        let resp = self
            .client
            .kv_client()
            .delete(key, Some(options))
            .await
            .map_err(|e| etcd_error("wiping the keys", e))?;
        Ok(resp.deleted())
    }

    /// Puts `value` at `key` (relative to the prefix).
    pub async fn put(&self, ctx: &CallCtx, key: &[u8], value: &[u8]) -> DriverResult<()> {
        ctx.check()?;
        let mut full = self.prefix.clone();
        full.extend_from_slice(key);
        self.client
            .kv_client()
            .put(full, value, None)
            .await
            .map_err(|e| etcd_error("writing a key", e))?;
        Ok(())
    }

    /// Puts `value` at `key` (relative to the prefix) unless the key exists; `true` when
    /// it was written. What a fresh control plane does on its first start.
    pub async fn put_if_absent(
        &self,
        ctx: &CallCtx,
        key: &[u8],
        value: &[u8],
    ) -> DriverResult<bool> {
        use etcd_client::{Compare, CompareOp};
        ctx.check()?;
        let mut full = self.prefix.clone();
        full.extend_from_slice(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| etcd_error("writing a key", e))?;
        Ok(resp.succeeded())
    }

    fn wipe_range(&self) -> (Vec<u8>, DeleteOptions) {
        if self.prefix.is_empty() {
            (vec![0], DeleteOptions::new().with_from_key())
        } else {
            (
                self.prefix.clone(),
                DeleteOptions::new().with_range(self.range_end()),
            )
        }
    }

    /// The end of the prefix's key range (`[0]`: to the end of the keyspace).
    fn range_end(&self) -> Vec<u8> {
        let mut end = self.prefix.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }

    /// Streams every key under the prefix, at one revision, into `sink`, with the
    /// per-object export of the `/registry/` keys, and records the revision in the sink
    /// ([`BackingStoreSink::record_backing_store`], kind `etcd`).
    pub async fn dump(
        &self,
        ctx: &CallCtx,
        sink: &mut dyn BackingStoreSink,
    ) -> DriverResult<EtcdDump> {
        let mut kv = self.client.kv_client();
        let end = self.range_end();
        let mut start = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.clone()
        };
        let mut revision = 0i64;
        let mut keys = 0u64;
        let mut objects = 0u64;
        let mut bytes = 0u64;
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            ctx.check()?;
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(|e| etcd_error("reading keys", e))?;
            if revision == 0 {
                revision = page.header().map(|h| h.revision()).unwrap_or_default();
                buf.put_slice(MAGIC);
                buf.put_i64(revision);
            }
            for pair in page.kvs() {
                let relative = pair.key().get(self.prefix.len()..).unwrap_or_default();
                put_field(&mut buf, relative)?;
                put_field(&mut buf, pair.value())?;
                keys += 1;
                if let Some(object) = exported_object(relative, pair.value()) {
                    sink.write_object(&object).await?;
                    objects += 1;
                }
                if buf.len() >= CHUNK {
                    bytes += buf.len() as u64;
                    sink.write(buf.split().freeze()).await?;
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        buf.put_u32(TRAILER);
        buf.put_u64(keys);
        bytes += buf.len() as u64;
        sink.write(buf.freeze()).await?;
        sink.record_backing_store(BackingStoreInfo {
            kind: "etcd".into(),
            revision: Some(revision),
            keys: Some(keys),
        });
        Ok(EtcdDump {
            revision,
            keys,
            bytes,
            objects,
        })
    }

    /// Wipes the prefix and writes back the keys of a dump read from `source`.
    pub async fn load(
        &self,
        ctx: &CallCtx,
        source: &mut dyn BackingStoreSource,
    ) -> DriverResult<EtcdLoad> {
        let mut reader = DumpReader::default();
        // The header first: nothing is wiped for a stream that is not a dump.
        let dumped_at_revision = loop {
            if let Some(rev) = reader.header()? {
                break rev;
            }
            match source.next_chunk().await? {
                Some(chunk) => reader.feed(&chunk),
                None => return Err(bad_dump("it ends before its header")),
            }
        };
        ctx.check()?;
        let mut kv = self.client.kv_client();
        let wipe = self.wipe_range();
        kv.delete(wipe.0, Some(wipe.1))
            .await
            .map_err(|e| etcd_error("wiping the keys", e))?;
        let mut batch = Vec::with_capacity(TXN_OPS);
        let mut keys = 0u64;
        let expected = loop {
            match reader.next_record()? {
                Record::Pair(key, value) => {
                    let key = if reader.relative {
                        let mut full = self.prefix.clone();
                        full.extend_from_slice(&key);
                        full
                    } else if key.starts_with(&self.prefix) {
                        key
                    } else {
                        return Err(bad_dump(&format!(
                            "its key {:?} (an OVCETCD1 dump: absolute keys) is outside the \
                             prefix {:?} it would be loaded into",
                            String::from_utf8_lossy(&key),
                            String::from_utf8_lossy(&self.prefix)
                        )));
                    };
                    batch.push(TxnOp::put(key, value, None));
                    keys += 1;
                    if batch.len() == TXN_OPS {
                        ctx.check()?;
                        commit(&mut kv, std::mem::take(&mut batch)).await?;
                    }
                }
                Record::End(count) => break count,
                Record::NeedMore => match source.next_chunk().await? {
                    Some(chunk) => reader.feed(&chunk),
                    None => return Err(bad_dump("it is cut short (no trailer)")),
                },
            }
        };
        if !batch.is_empty() {
            ctx.check()?;
            commit(&mut kv, batch).await?;
        }
        if expected != keys {
            return Err(bad_dump(&format!(
                "its trailer counts {expected} keys, it holds {keys}"
            )));
        }
        Ok(EtcdLoad {
            dumped_at_revision,
            keys,
            bytes: reader.consumed,
        })
    }
}

async fn commit(kv: &mut etcd_client::KvClient, ops: Vec<TxnOp>) -> DriverResult<()> {
    kv.txn(Txn::new().and_then(ops))
        .await
        .map_err(|e| etcd_error("writing keys", e))?;
    Ok(())
}

fn put_field(buf: &mut BytesMut, field: &[u8]) -> DriverResult<()> {
    let len = u32::try_from(field.len())
        .ok()
        .filter(|l| *l != TRAILER)
        .ok_or_else(|| DriverError::permanent(Code::FailedPrecondition, "etcd value over 4 GiB"))?;
    buf.put_u32(len);
    buf.put_slice(field);
    Ok(())
}

fn bad_dump(why: &str) -> DriverError {
    DriverError::permanent(
        Code::FailedPrecondition,
        format!("not a complete etcd dump: {why}"),
    )
}

/// An etcd error as a driver error: unreachable, overloaded, timed out, compacted or
/// leaderless are worth retrying; the rest is the server's refusal.
fn etcd_error(doing: &str, e: etcd_client::Error) -> DriverError {
    use tonic::Code as G;
    let transient = match &e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            G::Unavailable
                | G::DeadlineExceeded
                | G::ResourceExhausted
                | G::Aborted
                | G::OutOfRange
        ),
        _ => false,
    };
    let message = format!("etcd, {doing}: {e}");
    if transient {
        DriverError::transient(message)
    } else {
        DriverError::permanent(Code::FailedPrecondition, message)
    }
}

enum Record {
    Pair(Vec<u8>, Vec<u8>),
    End(u64),
    NeedMore,
}

/// Parses a dump from chunks as they arrive.
#[derive(Default)]
struct DumpReader {
    buf: BytesMut,
    header_read: bool,
    /// Keys relative to the prefix (`OVCETCD2`), or absolute (`OVCETCD1`).
    relative: bool,
    consumed: u64,
}

impl DumpReader {
    fn feed(&mut self, chunk: &Bytes) {
        self.consumed += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
    }

    fn header(&mut self) -> DriverResult<Option<i64>> {
        if self.buf.len() < MAGIC.len() + 8 {
            return Ok(None);
        }
        self.relative = match &self.buf[..MAGIC.len()] {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(bad_dump("it does not start with OVCETCD2 (or OVCETCD1)")),
        };
        self.buf.advance(MAGIC.len());
        self.header_read = true;
        Ok(Some(self.buf.get_i64()))
    }

    fn next_record(&mut self) -> DriverResult<Record> {
        debug_assert!(self.header_read);
        let peek_u32 = |b: &BytesMut, at: usize| -> Option<u32> {
            b.get(at..at + 4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        };
        let Some(klen) = peek_u32(&self.buf, 0) else {
            return Ok(Record::NeedMore);
        };
        if klen == TRAILER {
            if self.buf.len() < 12 {
                return Ok(Record::NeedMore);
            }
            self.buf.advance(4);
            let count = self.buf.get_u64();
            if !self.buf.is_empty() {
                return Err(bad_dump("bytes follow its trailer"));
            }
            return Ok(Record::End(count));
        }
        let klen = klen as usize;
        let Some(vlen) = peek_u32(&self.buf, 4 + klen) else {
            return Ok(Record::NeedMore);
        };
        let total = 8 + klen + vlen as usize;
        if self.buf.len() < total {
            return Ok(Record::NeedMore);
        }
        let mut record = self.buf.split_to(total);
        record.advance(4);
        let key = record.split_to(klen).to_vec();
        record.advance(4);
        Ok(Record::Pair(key, record.to_vec()))
    }
}

/// The per-object export's line for one etcd key, when the key is a Kubernetes object:
/// `KEY` relative to the backing store's prefix, `/registry/[GROUP/]RESOURCE/[NAMESPACE/]NAME`
/// (the leading `/` optional; a first segment with a `.` is an API group). The value
/// decides the rest: a JSON object gives `apiVersion`, `kind`, namespace and name from
/// itself (the key fills in what it lacks); Kubernetes protobuf (`k8s\0` then a
/// `runtime.Unknown`) gives `apiVersion` and `kind` from its envelope and the content as
/// base64. Keys outside `/registry/`, and values that are neither (range allocations'
/// raw bytes, leases of the API servers), are not objects: `None`.
pub fn exported_object(key: &[u8], value: &[u8]) -> Option<ExportedObject> {
    let text = std::str::from_utf8(key).ok()?;
    let path = text
        .strip_prefix('/')
        .unwrap_or(text)
        .strip_prefix("registry/")?;
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.first().is_some_and(|p| p.contains('.')) {
        parts.remove(0);
    }
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let name = parts[parts.len() - 1].to_string();
    let namespace = (parts.len() >= 3).then(|| parts[parts.len() - 2].to_string());
    let shown_key = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("/{text}")
    };
    if let Some(envelope) = value.strip_prefix(b"k8s\0") {
        let (api_version, kind) = protobuf_type_meta(envelope)?;
        return Some(ExportedObject {
            api_version,
            kind,
            namespace,
            name,
            key: Some(shown_key),
            object: None,
            protobuf: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        });
    }
    let object: serde_json::Value = serde_json::from_slice(value).ok()?;
    let kind = object.get("kind")?.as_str()?.to_string();
    let api_version = object
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let meta = object.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|v| v.as_str());
    Some(ExportedObject {
        api_version,
        kind,
        namespace: field("namespace").map(str::to_string).or(namespace),
        name: field("name").map(str::to_string).unwrap_or(name),
        key: Some(shown_key),
        object: Some(object),
        protobuf: None,
    })
}

/// `apiVersion` and `kind` of a `runtime.Unknown` (field 1, `TypeMeta`: field 1
/// `apiVersion`, field 2 `kind`), read with just enough protobuf to find them.
fn protobuf_type_meta(unknown: &[u8]) -> Option<(String, String)> {
    let type_meta = protobuf_fields(unknown)?
        .into_iter()
        .find(|(n, _)| *n == 1)?
        .1;
    let (mut api_version, mut kind) = (String::new(), String::new());
    for (n, bytes) in protobuf_fields(type_meta)? {
        match n {
            1 => api_version = String::from_utf8(bytes.to_vec()).ok()?,
            2 => kind = String::from_utf8(bytes.to_vec()).ok()?,
            _ => {}
        }
    }
    (!kind.is_empty()).then_some((api_version, kind))
}

/// The length-delimited fields of a protobuf message, `(field number, bytes)`; varint
/// and fixed fields are skipped. `None`: not a well-formed message.
fn protobuf_fields(mut msg: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !msg.is_empty() {
        let tag = varint(&mut msg)?;
        match tag & 7 {
            0 => {
                varint(&mut msg)?;
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                let (field, rest) = (msg.get(..len)?, msg.get(len..)?);
                out.push((tag >> 3, field));
                msg = rest;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keys_become_objects() {
        let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"team"},"data":{"a":"1"}}"#;
        let o = exported_object(b"/registry/configmaps/team/cfg", cm).expect("an object");
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.namespace.as_deref(),
                o.name.as_str()
            ),
            ("v1", "ConfigMap", Some("team"), "cfg")
        );
        assert_eq!(o.key.as_deref(), Some("/registry/configmaps/team/cfg"));
        assert_eq!(o.object.as_ref().unwrap()["data"]["a"], "1");
        assert_eq!(o.reference(), "ConfigMap/team/cfg");
        // Relative keys (a prefixed store), a group segment, a cluster-scoped object.
        let crd = br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.example.com"}}"#;
        let o = exported_object(
            b"registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
            crd,
        )
        .expect("an object");
        assert_eq!(
            (o.namespace, o.name.as_str()),
            (None, "widgets.example.com")
        );
        // The key fills in a JSON object without metadata.
        let o = exported_object(
            b"/registry/example.com/widgets/ns/w",
            br#"{"kind":"Widget"}"#,
        )
        .expect("an object");
        assert_eq!((o.namespace.as_deref(), o.name.as_str()), (Some("ns"), "w"));
        // Not objects.
        assert!(exported_object(b"/other/configmaps/ns/x", cm).is_none());
        assert!(exported_object(b"/registry/ranges/serviceips", b"\x01\x02").is_none());
        assert!(exported_object(b"/registry/x", cm).is_none());
        assert!(exported_object(&[0xff, 0xfe], cm).is_none());
    }

    #[test]
    fn protobuf_values_keep_their_type_and_bytes() {
        // k8s\0, Unknown{typeMeta{apiVersion "v1", kind "Pod"}, raw "xyz"}
        let type_meta = [&[0x0a, 2][..], b"v1", &[0x12, 3], b"Pod"].concat();
        let unknown = [
            &[0x0a, type_meta.len() as u8][..],
            &type_meta,
            &[0x12, 3],
            b"xyz",
        ]
        .concat();
        let value = [&b"k8s\0"[..], &unknown].concat();
        let o = exported_object(b"/registry/pods/default/web", &value).expect("an object");
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.namespace.as_deref()
            ),
            ("v1", "Pod", Some("default"))
        );
        assert!(o.object.is_none());
        let raw = base64::engine::general_purpose::STANDARD
            .decode(o.protobuf.unwrap())
            .unwrap();
        assert_eq!(raw, value);
        // A cut envelope is not an object.
        assert!(exported_object(b"/registry/pods/default/web", &value[..8]).is_none());
    }
}
