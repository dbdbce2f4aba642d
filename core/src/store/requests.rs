//! The attachment-request mailbox: another process on the same store file (the `shoal` CLI) asks the sync peer
//! running on it (`shoal peer`, a [`crate::Node`]) to fetch an attachment, and follows the fetch, through
//! device-local settings of the store. Nothing here replicates.

use super::{blobs, Store};
use crate::error::Result;
use rusqlite::params;

/// Where an attachment fetch requested through the store stands ([`Store::attachment_request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentRequest {
    /// Nothing was requested (or the request was dropped).
    None,
    /// A peer is fetching it (progress when known).
    Pending {
        /// Bytes received so far, as the fetching peer last reported them.
        done: u64,
        /// The attachment's length in bytes, as requested; `None` for a request that did not give it.
        total: Option<u64>,
    },
    /// The bytes are stored here.
    Stored,
    /// No connected device could provide it.
    Failed(String),
}

/// The device-local settings behind [`Store::request_attachment`].
const FETCH_PREFIX: &str = "fetch:";

fn fetch_key(hash: &[u8; 32]) -> String {
    format!("{FETCH_PREFIX}{}", crate::util::hex(hash))
}

fn fetch_failed_key(hash: &[u8; 32]) -> String {
    format!("fetch-failed:{}", crate::util::hex(hash))
}

impl Store {
    /// Ask a sync peer running on this store (possibly in another process, e.g. `shoal peer`) to fetch the bytes
    /// of attachment `hash`, `len` bytes long (both from its token: the fetch takes no more), from the devices it
    /// is connected to. See [`Store::attachment_request`] for the outcome.
    pub fn request_attachment(&self, hash: &[u8; 32], len: u64) -> Result<()> {
        self.remove_local_value(&fetch_failed_key(hash))?;
        self.local_value_or_insert(&fetch_key(hash), &len.to_le_bytes())?;
        Ok(())
    }

    /// The attachments requested with [`Store::request_attachment`] and not fetched yet, with their lengths.
    pub fn requested_attachments(&self) -> Result<Vec<([u8; 32], u64)>> {
        let inner = self.lock();
        let prefix = format!("local:{FETCH_PREFIX}");
        let mut stmt = inner.conn.prepare_cached("SELECT key, value FROM meta WHERE key LIKE ?1 || '%'")?;
        let rows = stmt
            .query_map(params![prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .iter()
            .filter_map(|(k, v)| {
                let hash = crate::util::parse_hex::<32>(k.strip_prefix(&prefix)?)?;
                // The length as requested (8 bytes), or progress: done then total (16 bytes).
                let len = match v.len() {
                    8 => v.get(..8),
                    16 => v.get(8..16),
                    _ => None,
                };
                Some((hash, u64::from_le_bytes(len?.try_into().ok()?)))
            })
            .collect())
    }

    /// Record a requested fetch's progress (for the process that asked), if it is still requested.
    pub fn record_attachment_progress(&self, hash: &[u8; 32], done: u64, total: u64) -> Result<()> {
        let mut v = done.to_le_bytes().to_vec();
        v.extend_from_slice(&total.to_le_bytes());
        let key = format!("local:{}", fetch_key(hash));
        self.lock().conn.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![key, v])?;
        Ok(())
    }

    /// End a requested fetch: done (`failure` is `None`) or failed with a reason.
    pub fn end_attachment_request(&self, hash: &[u8; 32], failure: Option<&str>) -> Result<()> {
        self.remove_local_value(&fetch_key(hash))?;
        if let Some(reason) = failure {
            self.set_local_value(&fetch_failed_key(hash), reason.as_bytes())?;
        }
        Ok(())
    }

    /// Where a request made with [`Store::request_attachment`] stands.
    pub fn attachment_request(&self, hash: &[u8; 32]) -> Result<AttachmentRequest> {
        if blobs::stored_len(&self.lock().conn, hash)?.is_some() {
            return Ok(AttachmentRequest::Stored);
        }
        if let Some(reason) = self.local_value(&fetch_failed_key(hash))? {
            return Ok(AttachmentRequest::Failed(String::from_utf8_lossy(&reason).into_owned()));
        }
        match self.local_value(&fetch_key(hash))? {
            None => Ok(AttachmentRequest::None),
            Some(v) if v.len() == 16 => {
                let done = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                let total = u64::from_le_bytes(v[8..].try_into().unwrap_or_default());
                Ok(AttachmentRequest::Pending { done, total: Some(total) })
            }
            Some(v) if v.len() == 8 => {
                let total = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                Ok(AttachmentRequest::Pending { done: 0, total: Some(total) })
            }
            Some(_) => Ok(AttachmentRequest::Pending { done: 0, total: None }),
        }
    }
}
