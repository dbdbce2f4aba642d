package dev.shoaldb

/** Marks Shoal's builder DSLs, so that an inner block cannot call an outer block's methods by accident. */
@DslMarker
annotation class ShoalDsl

/**
 * The [FieldValue] of a Kotlin value, as a last-writer-wins register:
 * `null` → [FieldValue.Null], [Boolean] → [FieldValue.Bool], [Long]/[Int]/[Short]/[Byte] → [FieldValue.Int],
 * [Double]/[Float] → [FieldValue.Double], [String] → [FieldValue.String], [ByteArray] → [FieldValue.Bytes],
 * [AttachmentToken] → [FieldValue.Attachment]; a [FieldValue] is returned as it is (use one to pick another CRDT:
 * [FieldValue.Counter], [FieldValue.Text], [FieldValue.Map], [FieldValue.Array], or [FieldValue.Json]).
 *
 * @throws IllegalArgumentException for any other type.
 */
fun FieldValue.Companion.of(value: Any?): FieldValue = when (value) {
    null -> FieldValue.Null
    is FieldValue -> value
    is Boolean -> FieldValue.Bool(value)
    is Long -> FieldValue.Int(value)
    is Int -> FieldValue.Int(value.toLong())
    is Short -> FieldValue.Int(value.toLong())
    is Byte -> FieldValue.Int(value.toLong())
    is Double -> FieldValue.Double(value)
    is Float -> FieldValue.Double(value.toDouble())
    is kotlin.String -> FieldValue.String(value)
    is ByteArray -> FieldValue.Bytes(value)
    is AttachmentToken -> FieldValue.Attachment(value)
    else -> throw IllegalArgumentException(
        "${value::class.qualifiedName} is not a Shoal field value: use String, Long, Int, Double, Boolean, " +
            "ByteArray, null, AttachmentToken or a FieldValue",
    )
}

/** Typed fields for [Collection.put] or [WriteBatch.put], each value converted with [FieldValue.of]. */
fun fieldsOf(vararg fields: Pair<String, Any?>): Map<String, FieldValue> =
    fields.associate { (name, value) -> name to FieldValue.of(value) }

/**
 * Builds the edits of one document; see [Collection.update]. Paths name fields with dots and array positions with
 * brackets: `address.city`, `items[2].done`. Values are converted with [FieldValue.of].
 *
 * Text positions count Unicode code points, not Kotlin `Char`s (they differ for characters outside the BMP, such
 * as most emoji).
 */
@ShoalDsl
class EditBuilder internal constructor() {
    private val edits = mutableListOf<Edit>()

    /** The edits built so far, in order. */
    fun build(): List<Edit> = edits.toList()

    /** Sets the field at [path] (creating the maps on the way) to [value] (see [FieldValue.of]). */
    fun set(path: String, value: Any?) {
        edits += Edit.Set(path, FieldValue.of(value))
    }

    /**
     * Merges [value] into the map at [path] field by field, keeping its other fields, when [value] is a
     * [FieldValue.Map]; sets any other value.
     */
    fun merge(path: String, value: FieldValue) {
        edits += Edit.Merge(path, value)
    }

    /** Removes the field (or array element) at [path]. */
    fun remove(path: String) {
        edits += Edit.Remove(path)
    }

    /** Adds [by] (may be negative) to the counter at [path], creating it if absent. */
    fun increment(path: String, by: Long = 1) {
        edits += Edit.Increment(path, by)
    }

    /** Adds [by] (may be negative) to the counter at [path], creating it if absent. */
    fun increment(path: String, by: Int) = increment(path, by.toLong())

    /** Inserts [text] into the text at [path] before code point [index]. */
    fun textInsert(path: String, index: Int, text: String) {
        edits += Edit.TextInsert(path, index.position("index"), text)
    }

    /** Deletes [length] code points of the text at [path] from [index]. */
    fun textDelete(path: String, index: Int, length: Int) {
        edits += Edit.TextDelete(path, index.position("index"), length.position("length"))
    }

    /** Replaces [length] code points at [index] of the text at [path] with [text]. */
    fun textSplice(path: String, index: Int, length: Int, text: String) {
        edits += Edit.TextSplice(path, index.position("index"), length.position("length"), text)
    }

    /** Inserts [items] (see [FieldValue.of]) into the array at [path] before position [index]. */
    fun arrayInsert(path: String, index: Int, vararg items: Any?) {
        edits += Edit.ArrayInsert(path, index.position("index"), items.map { FieldValue.of(it) })
    }

    /** Appends [items] (see [FieldValue.of]) to the array at [path]. */
    fun arrayPush(path: String, vararg items: Any?) {
        edits += Edit.ArrayPush(path, items.map { FieldValue.of(it) })
    }

    /** Deletes [length] elements of the array at [path] from [index]. */
    fun arrayDelete(path: String, index: Int, length: Int = 1) {
        edits += Edit.ArrayDelete(path, index.position("index"), length.position("length"))
    }

    private fun Int.position(what: String): ULong {
        require(this >= 0) { "$what must not be negative, was $this" }
        return toULong()
    }
}

/** The edits that [block] builds, e.g. for [WriteOp.Update]. */
fun buildEdits(block: EditBuilder.() -> Unit): List<Edit> = EditBuilder().apply(block).build()

/**
 * Applies the edits that [block] builds to document [id] in one transaction, on Shoal's threads:
 *
 * ```kotlin
 * tasks.update(id) {
 *     set("title", "Buy oat milk")
 *     increment("views")
 *     textInsert("notes", 0, "urgent: ")
 *     set("items[0].done", true)
 * }
 * ```
 *
 * @throws ShoalException.NotFound if the document does not exist; [ShoalException.InvalidArgument] for a bad path
 *   or an edit that does not fit the field (e.g. `increment` on text). A failed update changes nothing.
 */
suspend fun Collection.update(id: String, block: EditBuilder.() -> Unit) {
    update(id, buildEdits(block))
}

/** Like [update], on the calling thread (blocking it until done): for background threads only. */
fun Collection.updateBlocking(id: String, block: EditBuilder.() -> Unit) {
    updateBlocking(id, buildEdits(block))
}

/**
 * Inserts or merges typed [fields] (values converted with [FieldValue.of]) into document [id], generated when
 * `null`. Returns the id.
 *
 * ```kotlin
 * val id = tasks.put(null, "title" to "Buy milk", "views" to FieldValue.Counter(0), "done" to false)
 * ```
 */
suspend fun Collection.put(id: String?, vararg fields: Pair<String, Any?>): String = put(id, fieldsOf(*fields))

/** Like [put], on the calling thread (blocking it until done): for background threads only. */
fun Collection.putBlocking(id: String?, vararg fields: Pair<String, Any?>): String =
    putBlocking(id, fieldsOf(*fields))

/**
 * Builds the operations of one atomic write; see [Store.write]. Collections are named by their name or given as
 * [Collection]s.
 */
@ShoalDsl
class WriteBatch internal constructor() {
    private val ops = mutableListOf<WriteOp>()

    /** The operations built so far, in order. */
    fun build(): List<WriteOp> = ops.toList()

    /** Inserts a JSON object, or merges it into the document named by its `_id`. */
    fun upsert(collection: String, json: String) {
        ops += WriteOp.Upsert(collection, json)
    }

    /** Inserts a JSON object, or merges it into the document named by its `_id`. */
    fun upsert(collection: Collection, json: String) = upsert(collection.name(), json)

    /** Inserts or merges typed [fields] (see [FieldValue.of]) into document [id] (generated when `null`). */
    fun put(collection: String, id: String?, vararg fields: Pair<String, Any?>) {
        ops += WriteOp.Put(collection, id, fieldsOf(*fields))
    }

    /** Inserts or merges typed [fields] (see [FieldValue.of]) into document [id] (generated when `null`). */
    fun put(collection: Collection, id: String?, vararg fields: Pair<String, Any?>) =
        put(collection.name(), id, *fields)

    /** Applies the edits that [block] builds to the existing document [id]. */
    fun update(collection: String, id: String, block: EditBuilder.() -> Unit) {
        ops += WriteOp.Update(collection, id, buildEdits(block))
    }

    /** Applies the edits that [block] builds to the existing document [id]. */
    fun update(collection: Collection, id: String, block: EditBuilder.() -> Unit) =
        update(collection.name(), id, block)

    /** Removes document [id]. */
    fun remove(collection: String, id: String) {
        ops += WriteOp.Remove(collection, id)
    }

    /** Removes document [id]. */
    fun remove(collection: Collection, id: String) = remove(collection.name(), id)
}

/**
 * Applies the operations that [block] builds atomically: all commit together, or none does (a failing
 * operation — e.g. an update of a missing document — throws its [ShoalException] and changes nothing). Runs on
 * the store's own threads. Returns the id of each operation's document, in order. Cancelling the calling
 * coroutine before the batch commits stops it between two operations and commits none of them.
 *
 * ```kotlin
 * val (orderId, _) = store.write {
 *     upsert("orders", """{"item": "milk", "qty": 2}""")
 *     update("stock", "milk") { increment("reserved", 2) }
 * }
 * ```
 */
suspend fun Store.write(block: WriteBatch.() -> Unit): List<String> = write(WriteBatch().apply(block).build())
