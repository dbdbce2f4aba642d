package dev.shoaldb.android

import android.content.Context
import dev.shoaldb.Store

/**
 * The "Bluetooth LE" example of android/README.md, compiled (not run: it needs a store) so that the names it uses
 * stay right. Keep the two in step.
 */
@Suppress("unused")
internal suspend fun readmeBluetoothExample(context: Context, store: Store) {
    val radio = AndroidBluetoothRadio(context)
    val missing = ShoalBluetoothPermissions.missing(context)   // runtime permissions: ask the user for these first
    if (missing.isEmpty()) store.setBluetooth(radio)
    store.startSync()                                           // (a suspend function: from a coroutine)
    radio.setForeground(false)                                  // when the app goes to the background (saves battery)
}
