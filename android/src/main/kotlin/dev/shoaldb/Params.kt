package dev.shoaldb

/**
 * The values of a query's `$parameters` (named without the `$`), each converted with [QueryValue.of]:
 *
 * ```kotlin
 * val urgent = tasks.find(Query(
 *     filter = "priority >= \$min && tag in \$tags && done == \$done",
 *     params = params("min" to 2, "tags" to listOf("home", "garden"), "done" to false),
 * ))
 * ```
 *
 * Parameters keep values out of the filter's text: no quoting or escaping, and the same filter runs with any values.
 *
 * @throws IllegalArgumentException for a value [QueryValue.of] does not convert (the message names the parameter).
 */
fun params(vararg params: Pair<String, Any?>): Map<String, QueryValue> =
    params.associate { (name, value) -> name to convert(value, "") { "query parameter \$$name$it" } }

/**
 * The [QueryValue] of a Kotlin value: `null` → [QueryValue.Null], [Boolean] → [QueryValue.Bool],
 * [Long]/[Int]/[Short]/[Byte] → [QueryValue.Int], [Double]/[Float] → [QueryValue.Double], [String] →
 * [QueryValue.String], a [Collection][kotlin.collections.Collection] or [Array] → [QueryValue.Array] of its elements
 * (converted the same way, so lists may nest); a [QueryValue] is returned as it is.
 *
 * @throws IllegalArgumentException for any other type (a list's element included).
 */
fun QueryValue.Companion.of(value: Any?): QueryValue = convert(value, "") { "query value$it" }

/** Converts [value], at [position] inside the lists (e.g. `[2][0]`) of what [where] names in an error. */
private fun convert(value: Any?, position: String, where: (position: String) -> String): QueryValue = when (value) {
    null -> QueryValue.Null
    is QueryValue -> value
    is Boolean -> QueryValue.Bool(value)
    is Long -> QueryValue.Int(value)
    is Int -> QueryValue.Int(value.toLong())
    is Short -> QueryValue.Int(value.toLong())
    is Byte -> QueryValue.Int(value.toLong())
    is Double -> QueryValue.Double(value)
    is Float -> QueryValue.Double(value.toDouble())
    is kotlin.String -> QueryValue.String(value)
    is kotlin.collections.Collection<*> ->
        QueryValue.Array(value.mapIndexed { i, item -> convert(item, "$position[$i]", where) })
    is Array<*> -> QueryValue.Array(value.mapIndexed { i, item -> convert(item, "$position[$i]", where) })
    else -> throw IllegalArgumentException(
        "${where(position)}: ${value::class.qualifiedName} is not a query value: use String, Long, Int, Double, " +
            "Boolean, null, a Collection or Array of them, or a QueryValue",
    )
}
