package dev.shoaldb

import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.map
import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.serializer

/**
 * The collection [name] with its documents as values of [T], a `@Serializable` class (kotlinx.serialization):
 *
 * ```kotlin
 * @Serializable
 * data class Task(
 *     @SerialName("_id") val id: String? = null,   // the document id; null: Shoal generates one
 *     val title: String,
 *     val done: Boolean = false,
 * )
 *
 * val tasks = store.collection<Task>("tasks")
 * val id = tasks.upsert(Task(title = "Buy milk"))
 * val task = tasks.get(id) ?: return
 * tasks.upsert(task.copy(done = true))            // writes `done` only
 * ```
 *
 * Give the type argument (`collection<Task>`): without it, `store.collection(name)` is the untyped [Collection].
 *
 * @param json how documents are encoded and decoded: by default [Shoal.json] (unknown fields ignored, defaults and
 *   nulls written). A [Json] of your own should keep `ignoreUnknownKeys`, `encodeDefaults` and `explicitNulls` as
 *   [Shoal.json] has them (start from it: `Json(Shoal.json) { ... }`).
 * @see TypedCollection
 */
inline fun <reified T> Store.collection(name: String, json: Json = Shoal.json): TypedCollection<T> =
    TypedCollection(collection(name), json.serializersModule.serializer<T>(), json)

/**
 * A collection whose documents are values of [T], encoded to JSON objects and decoded from them with
 * kotlinx.serialization; take one with `store.collection<T>(name)`.
 *
 * **The document id** is the JSON field `_id`: annotate the id property `@SerialName("_id")`. Left `null` (declare
 * it `String? = null`), [upsert] inserts a new document under an id Shoal generates, and returns it. A class with
 * no `_id` property inserts a new document at every [upsert].
 *
 * **Decoding ignores unknown fields**, so that documents written by other versions of the app (with fields this one
 * does not declare) still decode; and [upsert] keeps those fields in the stored document.
 *
 * **Writes are diff-aware**: [upsert] writes only the fields whose value differs from the stored document
 * ([Collection.upsertChanged]). Writing back a value read earlier with one property changed writes that property
 * alone, so it cannot undo what another device wrote meanwhile to the others.
 *
 * Every call runs on Shoal's threads (the `suspend` ones) or on the calling thread (the `…Blocking` ones, for
 * background threads only), like [Collection]'s. Decoding a stored document that does not fit [T] (a missing
 * property without a default, a value of another type) throws kotlinx.serialization's `SerializationException`.
 * For everything else — field edits ([Collection.update]), counters, text, conflicts, indexes, attachments — use
 * [untyped].
 */
class TypedCollection<T> @PublishedApi internal constructor(
    /** The same collection with its documents as JSON text. */
    val untyped: Collection,
    private val serializer: KSerializer<T>,
    private val json: Json,
) {
    /** The collection's name. */
    val name: String
        get() = untyped.name()

    /** Document [id], or `null` when there is none. */
    suspend fun get(id: String): T? = untyped.get(id)?.let(::decode)

    /** Like [get], on the calling thread (blocking it until done): for background threads only. */
    fun getBlocking(id: String): T? = untyped.getBlocking(id)?.let(::decode)

    /**
     * The documents matching [query], in its order (see [Query], and [params] for its parameters).
     *
     * @throws ShoalException.InvalidArgument for a malformed query.
     */
    suspend fun find(query: Query = Query()): List<T> = untyped.find(query).map(::decode)

    /** Like [find], on the calling thread (blocking it until done): for background threads only. */
    fun findBlocking(query: Query = Query()): List<T> = untyped.findBlocking(query).map(::decode)

    /** Every document, by id. */
    suspend fun all(): List<T> = untyped.all().map(::decode)

    /**
     * Writes [value] as the document named by its `_id`, changing only the fields that differ from the stored
     * document (fields of nested objects one by one; lists whole); inserts it when there is no such document, under
     * a generated id when `_id` is `null`. Fields the document has and [T] does not declare are kept. Returns the id.
     *
     * @throws ShoalException.InvalidArgument when [T] does not encode to a JSON object.
     */
    suspend fun upsert(value: T): String = untyped.upsertChanged(encode(value))

    /** Like [upsert], on the calling thread (blocking it until done): for background threads only. */
    fun upsertBlocking(value: T): String = untyped.upsertChangedBlocking(encode(value))

    /** Removes document [id]. Returns whether it existed. */
    suspend fun remove(id: String): Boolean = untyped.remove(id)

    /**
     * The documents matching [query], in its order: the current list, then a new list each time it changes (see
     * [Collection.documents]: conflated, the first query runs on Shoal's threads). Decoding runs in the collector's
     * context.
     */
    fun documents(query: Query = Query()): Flow<List<T>> =
        untyped.documents(query).map { documents -> documents.map(::decode) }

    private fun decode(document: String): T = json.decodeFromString(serializer, document)

    private fun encode(value: T): String = json.encodeToString(serializer, value)
}
