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
//! `OVCETCD1`, the revision (i64, big-endian), then per key `u32 len, key, u32 len,
//! value`, and a trailer `u32::MAX, u64 key count`, so a load can tell a complete dump
//! from a cut one. The artifact's checksums are verified before a load starts; the
//! trailer is the format's own last line of defence.

use crate::{BackingStoreSink, BackingStoreSource, CallCtx, DriverError, DriverResult};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use ovc_types::Code;

/// The first bytes of a dump.
pub const MAGIC: &[u8; 8] = b"OVCETCD1";
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

    /// Streams every key under the prefix, at one revision, into `sink`.
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
                put_field(&mut buf, pair.key())?;
                put_field(&mut buf, pair.value())?;
                keys += 1;
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
        Ok(EtcdDump {
            revision,
            keys,
            bytes,
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
        let wipe = if self.prefix.is_empty() {
            (vec![0], DeleteOptions::new().with_from_key())
        } else {
            (
                self.prefix.clone(),
                DeleteOptions::new().with_range(self.range_end()),
            )
        };
        kv.delete(wipe.0, Some(wipe.1))
            .await
            .map_err(|e| etcd_error("wiping the keys", e))?;
        let mut batch = Vec::with_capacity(TXN_OPS);
        let mut keys = 0u64;
        let expected = loop {
            match reader.next_record()? {
                Record::Pair(key, value) => {
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
        if &self.buf[..MAGIC.len()] != MAGIC {
            return Err(bad_dump("it does not start with OVCETCD1"));
        }
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
