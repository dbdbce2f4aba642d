//! What a store's file holds, and collecting what nothing needs any more: records over the core's
//! `StorageStats`, `GarbagePolicy` and `GarbageReport`.

use std::sync::Arc;

use crate::cancel::Cancellation;
use crate::error::{guard, ShoalError};
use crate::store::Store;

/// What a store's file holds, by kind (see `Store.storageStats`). Sizes in bytes.
#[derive(uniffi::Record)]
pub struct StorageStats {
    /// The database file's size (its pages, without the write-ahead log).
    pub file_bytes: u64,
    /// Pages of the file that hold nothing (reused by later writes, or returned to the system by
    /// `Store.collectGarbage`).
    pub free_bytes: u64,
    /// The write-ahead log's size.
    pub wal_bytes: u64,
    /// Documents that exist here.
    pub documents: u64,
    /// Documents removed (kept: they tell a device coming back that they were removed).
    pub removed_documents: u64,
    /// Documents evicted from this device.
    pub evicted_documents: u64,
    /// The documents' JSON views (what queries read).
    pub view_bytes: u64,
    /// Changes in the change log (what sync serves to other devices).
    pub log_changes: u64,
    /// Their encoded size.
    pub log_bytes: u64,
    /// Documents' saved CRDT states.
    pub snapshot_bytes: u64,
    /// The deleted characters of texts and elements of arrays that documents keep as tombstones (counts and ids,
    /// not contents: later inserts may name them as neighbours), as of each document's saved state.
    pub tombstones: u64,
    /// Documents some of whose changes were folded into their saved states and dropped from the log
    /// (`Store.compact`).
    pub compacted_documents: u64,
    /// The record of which changes those were.
    pub folded_bytes: u64,
    /// Documents' states an attester signed, kept to send in place of the signed changes they hold (certificates:
    /// see `Store.attest`).
    pub attested_bytes: u64,
    /// Received changes waiting for the changes they depend on.
    pub pending_changes: u64,
    /// Attachments stored whole.
    pub attachments: u64,
    /// Their bytes.
    pub attachment_bytes: u64,
    /// Attachments being downloaded.
    pub partial_downloads: u64,
    /// Their bytes received so far.
    pub partial_bytes: u64,
}

impl From<shoaldb::store::StorageStats> for StorageStats {
    fn from(s: shoaldb::store::StorageStats) -> StorageStats {
        StorageStats {
            file_bytes: s.file_bytes,
            free_bytes: s.free_bytes,
            wal_bytes: s.wal_bytes,
            documents: s.documents,
            removed_documents: s.removed_documents,
            evicted_documents: s.evicted_documents,
            view_bytes: s.view_bytes,
            log_changes: s.log_changes,
            log_bytes: s.log_bytes,
            snapshot_bytes: s.snapshot_bytes,
            tombstones: s.tombstones,
            compacted_documents: s.compacted_documents,
            folded_bytes: s.folded_bytes,
            attested_bytes: s.attested_bytes,
            pending_changes: s.pending_changes,
            attachments: s.attachments,
            attachment_bytes: s.attachment_bytes,
            partial_downloads: s.partial_downloads,
            partial_bytes: s.partial_bytes,
        }
    }
}

/// Which changes `Store.compact` folds into documents' saved states.
#[derive(uniffi::Record)]
pub struct CompactionPolicy {
    /// Fold the changes made more than this long ago (ms; 0: every change). Devices that come back after longer
    /// get documents' states rather than their changes: correct either way. Default: 30 days.
    #[uniffi(default = 2592000000)]
    pub horizon_ms: u64,
    /// Also fold, however recent, the changes that every device this store synced with within the horizon said it
    /// holds (none of them will ask for them again). Default: on.
    #[uniffi(default = true)]
    pub fold_acknowledged: bool,
}

/// What one `Store.compact` did.
#[derive(uniffi::Record)]
pub struct CompactionReport {
    /// Documents whose changes were folded.
    pub documents: u64,
    /// Changes folded and dropped from the log.
    pub changes: u64,
    /// Bytes of changes dropped from the log (`Store.collectGarbage` returns the freed pages to the system).
    pub bytes: u64,
    /// The transactions it took (a few thousand log rows each; the app's writes go in between).
    pub transactions: u64,
}

/// What one `Store.attest` did.
#[derive(uniffi::Record)]
pub struct AttestReport {
    /// Documents whose state was signed.
    pub documents: u64,
    /// Bytes of those states.
    pub bytes: u64,
}

/// A document `Store.expire` removed.
#[derive(uniffi::Record)]
pub struct ExpiredDocument {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// When its latest change was made (ms since the Unix epoch), or when an earlier `expire` first met it.
    pub modified_ms: u64,
}

/// What `Store.fitBudget` evicted.
#[derive(uniffi::Enum)]
pub enum Evicted {
    /// An attachment's bytes: the documents naming it still do, and fetch it again on demand.
    Attachment {
        /// Its hash, 64 hex digits.
        hash: String,
    },
    /// A document outside the device's subscriptions, as `Collection.evict` does.
    Document {
        /// Its collection.
        collection: String,
        /// Its id.
        id: String,
    },
}

/// One thing `Store.fitBudget` evicted, and why it was chosen.
#[derive(uniffi::Record)]
pub struct Eviction {
    /// What.
    pub what: Evicted,
    /// About how many bytes it took.
    pub bytes: u64,
    /// When it was last read or written here (ms since the Unix epoch): nothing kept was used longer ago.
    pub last_used_ms: u64,
}

/// What one `Store.fitBudget` did.
#[derive(uniffi::Record)]
pub struct BudgetReport {
    /// The bytes of the file's pages in use before.
    pub bytes_before: u64,
    /// And after (more than the budget when everything that may go is gone).
    pub bytes_after: u64,
    /// What was evicted, least recently used first.
    pub evicted: Vec<Eviction>,
}

impl From<shoaldb::store::BudgetReport> for BudgetReport {
    fn from(r: shoaldb::store::BudgetReport) -> BudgetReport {
        let evicted = r
            .evicted
            .into_iter()
            .map(|e| Eviction {
                what: match e.what {
                    shoaldb::store::Evicted::Attachment { hash } => Evicted::Attachment { hash },
                    shoaldb::store::Evicted::Document { collection, id } => Evicted::Document { collection, id },
                },
                bytes: e.bytes,
                last_used_ms: e.last_used_ms,
            })
            .collect();
        BudgetReport { bytes_before: r.bytes_before, bytes_after: r.bytes_after, evicted }
    }
}

/// What `Store.collectGarbage` collects, and after how long.
#[derive(uniffi::Record)]
pub struct GarbagePolicy {
    /// An attachment no document here names is deleted once it has been so for this long (ms), as seen by
    /// successive collections: the grace keeps an attachment stored just before the document naming it is written.
    /// Default: one day.
    #[uniffi(default = 86400000)]
    pub unreferenced_attachment_ms: u64,
    /// The bytes received of a download that has made no progress for this long (ms) are deleted. Default: seven
    /// days.
    #[uniffi(default = 604800000)]
    pub stalled_download_ms: u64,
}

/// What one `Store.collectGarbage` did.
#[derive(uniffi::Record)]
pub struct GarbageReport {
    /// Attachments deleted (no document named them for longer than the policy's grace).
    pub attachments_removed: u64,
    /// Their bytes.
    pub attachment_bytes_removed: u64,
    /// Downloads whose bytes were deleted (no progress for longer than the policy allows).
    pub downloads_removed: u64,
    /// Their bytes.
    pub download_bytes_removed: u64,
    /// The database file's size before the collection.
    pub file_bytes_before: u64,
    /// Its size after (free pages are returned to the system).
    pub file_bytes_after: u64,
}

impl From<shoaldb::store::GarbageReport> for GarbageReport {
    fn from(r: shoaldb::store::GarbageReport) -> GarbageReport {
        GarbageReport {
            attachments_removed: r.attachments_removed,
            attachment_bytes_removed: r.attachment_bytes_removed,
            downloads_removed: r.downloads_removed,
            download_bytes_removed: r.download_bytes_removed,
            file_bytes_before: r.file_bytes_before,
            file_bytes_after: r.file_bytes_after,
        }
    }
}

#[uniffi::export]
impl Store {
    /// What this store's file holds, by kind. Reads every row's size: for a settings screen or a diagnostic, not
    /// for every frame.
    #[uniffi::method(default(cancel = None))]
    pub async fn storage_stats(self: Arc<Self>, cancel: Option<Arc<Cancellation>>) -> Result<StorageStats, ShoalError> {
        self.get()?.background(cancel, move |_| self.storage_stats_blocking()).await
    }

    /// Like `storageStats`, on the calling thread (blocking it until done): for background threads only.
    pub fn storage_stats_blocking(&self) -> Result<StorageStats, ShoalError> {
        guard(|| Ok(self.get()?.store.storage_stats()?.into()))
    }

    /// Deletes what nothing here needs any more, as `policy` says: attachments no document names and downloads
    /// that stopped, each only once it has been so for the policy's period as seen by successive collections — so
    /// call it now and then (at start, daily); the first call only marks. Then returns the file's free pages to the
    /// system (a store created by an older version is rewritten once). Documents, removals and the change log are
    /// kept (`compact` folds the log).
    #[uniffi::method(default(cancel = None))]
    pub async fn collect_garbage(
        self: Arc<Self>,
        policy: GarbagePolicy,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<GarbageReport, ShoalError> {
        self.get()?.background(cancel, move |_| self.collect_garbage_blocking(policy)).await
    }

    /// Folds the changes `policy` selects into their documents' saved states and drops them from the change log:
    /// those every device synced with within the horizon holds, and those older than it. The store still holds
    /// them: a device that lacks some of them gets the document's state instead, merged so
    /// that nothing removed comes back and its own edits still count, however long it was away. Changes signed
    /// under a certificate are folded only once a state an attester signed holds them (`attest`; a state carries no
    /// author's signature, so devices take only attested ones). Call `collectGarbage` after it to return the freed
    /// pages to the system.
    #[uniffi::method(default(cancel = None))]
    pub async fn compact(
        self: Arc<Self>,
        policy: CompactionPolicy,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<CompactionReport, ShoalError> {
        self.get()?.background(cancel, move |_| self.compact_blocking(policy)).await
    }

    /// Signs the current state of every document whose log holds changes its last signed state lacks, in the
    /// collections this device may attest (an `attest` grant in its certificate: a server's or a supervisor's
    /// device, trusted with the content). Devices take these states in place of the signed changes they hold, so
    /// that they can fold those changes (`compact`). Call it now and then (after a day's work), before `compact`.
    /// Fails with `NotPermitted` on a device that may not attest.
    #[uniffi::method(default(cancel = None))]
    pub async fn attest(self: Arc<Self>, cancel: Option<Arc<Cancellation>>) -> Result<AttestReport, ShoalError> {
        self.get()?.background(cancel, move |_| self.attest_blocking()).await
    }

    /// Like `attest`, on the calling thread (blocking it until done): for background threads only.
    pub fn attest_blocking(&self) -> Result<AttestReport, ShoalError> {
        guard(|| {
            let r = self.get()?.store.attest()?;
            Ok(AttestReport { documents: r.documents, bytes: r.bytes })
        })
    }

    /// Keeps the store's file within `maxBytes` (its pages in use): while it is larger, evicts what was used least
    /// recently (read or written here) — attachments' bytes (the documents naming them fetch them again on demand)
    /// and documents outside this device's subscriptions (`SyncConfig.subscriptions`; refused from sync until
    /// `unevict`) — then returns the freed pages to the system. Returns what was evicted, and when each was last
    /// used. Call it now and then (at start, daily) or when the system says storage is low.
    #[uniffi::method(default(cancel = None))]
    pub async fn fit_budget(
        self: Arc<Self>,
        max_bytes: u64,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<BudgetReport, ShoalError> {
        self.get()?.background(cancel, move |_| self.fit_budget_blocking(max_bytes)).await
    }

    /// Like `fitBudget`, on the calling thread (blocking it until done): for background threads only.
    pub fn fit_budget_blocking(&self, max_bytes: u64) -> Result<BudgetReport, ShoalError> {
        guard(|| {
            let open = self.get()?;
            let budget = shoaldb::store::StorageBudget { max_bytes, keep: open.subscriptions()? };
            Ok(open.store.fit_budget(&budget)?.into())
        })
    }

    /// Removes every document whose collection has a time to live (`Collection.setTimeToLive`) and which was not
    /// modified for that long: ordinary removals, which replicate and which observers see. Returns what was
    /// removed. Call it now and then (at start, hourly).
    #[uniffi::method(default(cancel = None))]
    pub async fn expire(
        self: Arc<Self>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Vec<ExpiredDocument>, ShoalError> {
        self.get()?.background(cancel, move |_| self.expire_blocking()).await
    }

    /// Like `expire`, on the calling thread (blocking it until done): for background threads only.
    pub fn expire_blocking(&self) -> Result<Vec<ExpiredDocument>, ShoalError> {
        guard(|| {
            let expired = self.get()?.store.expire()?;
            Ok(expired
                .into_iter()
                .map(|e| ExpiredDocument { collection: e.collection, id: e.id, modified_ms: e.modified_ms })
                .collect())
        })
    }

    /// Like `compact`, on the calling thread (blocking it until done): for background threads only.
    pub fn compact_blocking(&self, policy: CompactionPolicy) -> Result<CompactionReport, ShoalError> {
        let policy =
            shoaldb::CompactionPolicy { horizon_ms: policy.horizon_ms, fold_acknowledged: policy.fold_acknowledged };
        guard(|| {
            let r = self.get()?.store.compact(&policy)?;
            Ok(CompactionReport {
                documents: r.documents,
                changes: r.changes,
                bytes: r.bytes,
                transactions: r.transactions,
            })
        })
    }

    /// Like `collectGarbage`, on the calling thread (blocking it until done): for background threads only.
    pub fn collect_garbage_blocking(&self, policy: GarbagePolicy) -> Result<GarbageReport, ShoalError> {
        let policy = shoaldb::store::GarbagePolicy {
            unreferenced_attachment_ms: policy.unreferenced_attachment_ms,
            stalled_download_ms: policy.stalled_download_ms,
        };
        guard(|| Ok(self.get()?.store.collect_garbage(&policy)?.into()))
    }
}
