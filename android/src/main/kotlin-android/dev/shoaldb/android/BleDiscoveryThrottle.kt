package dev.shoaldb.android

/**
 * Limits how often one address is reported as discovered: at most once per [intervalMs], unless its service data
 * changed (a sighting without service data never counts as a change). Remembers at most [capacity] addresses.
 *
 * Not thread-safe: called from the radio's single thread.
 */
internal class DiscoveryThrottle(private val intervalMs: Long = 1_000, private val capacity: Int = 256) {
    private class Seen(val atMs: Long, val data: ByteArray?)

    // Insertion order = order of the last report: the head is the entry reported longest ago.
    private val seen = LinkedHashMap<String, Seen>()

    /** Whether this sighting should be reported; if so, it is remembered as the last report of [address]. */
    fun shouldReport(address: String, serviceData: ByteArray?, nowMs: Long): Boolean {
        val last = seen[address]
        if (last != null) {
            val changed = serviceData != null && !serviceData.contentEquals(last.data)
            if (!changed && nowMs - last.atMs < intervalMs) return false
            seen.remove(address)
        }
        seen[address] = Seen(nowMs, serviceData?.copyOf() ?: last?.data)
        while (seen.size > capacity) {
            val oldest = seen.keys.iterator()
            oldest.next()
            oldest.remove()
        }
        return true
    }

    /** How many addresses are remembered. */
    val size: Int
        get() = seen.size

    /** Forgets every address. */
    fun clear() = seen.clear()
}
