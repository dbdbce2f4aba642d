package dev.shoaldb

import kotlinx.serialization.SerialName
import kotlinx.serialization.Serializable

/*
 * A Kotlin example for the README (between the markers): typed documents, suspend calls and native query
 * parameters. Compiled and run by ReadmeExampleTest.
 */

// README-BEGIN
@Serializable
data class Todo(
    @SerialName("_id") val id: String? = null,          // the document id (null: Shoal makes one)
    val title: String,
    val area: String = "home",
    val priority: Int = 0,
    val done: Boolean = false,
)

suspend fun planTheDay(store: Store): List<Todo> {
    val todos = store.collection<Todo>("todos")           // documents as @Serializable values
    val id = todos.upsert(Todo(title = "Buy milk", priority = 2))
    val milk = todos.get(id) ?: return emptyList()
    todos.upsert(milk.copy(title = "Buy oat milk"))       // writes only what changed: the title
    todos.upsert(Todo(id = "mow", title = "Mow the lawn", area = "garden", priority = 3))
    return todos.find(Query(
        filter = "priority >= \$min && area in \$areas && !done",
        params = params("min" to 2, "areas" to listOf("home", "garden")), // Kotlin values, no JSON quoting
        sort = listOf(SortKey("priority", descending = true)),
    ))
}
// README-END
