package dev.shoaldb

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.channelFlow
import kotlinx.coroutines.flow.conflate
import kotlinx.coroutines.flow.map

/**
 * The changes to [query]'s result, as a cold [Flow] over [Collection.observe].
 *
 * Each collection registers an observer: the first event is the current result (every document in
 * [ChangeEvent.inserted] and [ChangeEvent.results]), then one event follows per committed transaction — local or
 * from another device — that changes the result. Cancelling the collection cancels the observer.
 *
 * Buffer: unlimited, so that no event is lost and Shoal's committing thread never waits for a slow collector.
 * Apply `conflate()` (only the latest event matters, e.g. when you read [ChangeEvent.results]) or
 * `buffer(n, onBufferOverflow = ...)` to change that: those operators replace this buffer.
 *
 * The observer is registered through the suspending [Collection.observe]: the initial query runs on Shoal's
 * threads, never the collector's, so collecting on the main thread is fine.
 *
 * @throws ShoalException.InvalidArgument (from `collect`) for a malformed query;
 *   [ShoalException.Closed] when the store is closed.
 */
fun Collection.changes(query: Query = Query()): Flow<ChangeEvent> = callbackFlow {
    // If the collection is cancelled while this suspends, the registration is dropped (and undone) in Rust.
    val handle = observe(query, object : CollectionObserver {
        override fun onChange(event: ChangeEvent) {
            callback("collection observer") { trySend(event) }
        }
    })
    awaitClose {
        handle.cancel()
        handle.close()
    }
}.buffer(Channel.UNLIMITED)

/**
 * The documents matching [query], as JSON objects in query order: the current list, then a new list each time it
 * changes. Conflated: a slow collector skips intermediate lists and always gets the latest one.
 *
 * @see changes
 */
fun Collection.documents(query: Query = Query()): Flow<List<String>> =
    changes(query).conflate().map { it.results }

/**
 * The devices this device can reach (directly or through others), as a [Flow] over [Store.observePresence]:
 * the current list, then a new one whenever a device appears, disappears or changes route. Empty while sync is
 * stopped. Conflated: a slow collector gets the latest list. Cancelling the collection cancels the observer.
 *
 * @throws ShoalException.Closed (from `collect`) when the store is closed.
 */
fun Store.presence(): Flow<List<Peer>> = callbackFlow {
    val handle = observePresence(object : PresenceObserver {
        override fun onPresence(peers: List<Peer>) {
            callback("presence observer") { trySend(peers) }
        }
    })
    awaitClose {
        handle.cancel()
        handle.close()
    }
}.conflate()

/**
 * Fetches the attachment's bytes from the devices in reach, calling [onProgress] with the bytes received so far
 * and the total. Returns at once (after one `onProgress(total, total)`) when they are already here.
 *
 * [onProgress] runs on one of Shoal's threads: return quickly, and hop to your own dispatcher for UI work.
 * Anything it throws is logged and ignored.
 *
 * Cancelling the calling coroutine cancels the fetch; the bytes received so far stay for a while, so fetching
 * again resumes from them.
 *
 * @throws ShoalException.Sync when sync is not running; [ShoalException.AttachmentUnavailable] when no reachable
 *   device has the bytes.
 */
suspend fun Store.fetchAttachment(token: AttachmentToken, onProgress: (done: Long, total: Long) -> Unit) {
    fetchAttachment(token, object : AttachmentProgress {
        override fun onProgress(done: ULong, total: ULong) {
            callback("attachment progress") { onProgress(done.toLong(), total.toLong()) }
        }
    })
}

/**
 * Fetches the attachment's bytes from the devices in reach, without progress reports.
 *
 * @see fetchAttachment
 */
suspend fun Store.fetchAttachment(token: AttachmentToken) {
    fetchAttachment(token, null)
}

/** Progress of an attachment fetch: [done] of [total] bytes are here. */
data class FetchProgress(
    /** Bytes received so far. */
    val done: Long,
    /** The attachment's length in bytes. */
    val total: Long,
)

/**
 * Fetches the attachment when collected, emitting its progress; the flow completes when all bytes are here and
 * fails with the fetch's [ShoalException] otherwise. Conflated: a slow collector skips intermediate values but
 * always gets the last one (`done == total`).
 */
fun Store.fetchAttachmentFlow(token: AttachmentToken): Flow<FetchProgress> = channelFlow {
    fetchAttachment(token) { done, total -> trySend(FetchProgress(done, total)) }
}.conflate()
