package dev.shoaldb.android.air

import org.junit.runner.JUnitCore
import org.junit.runner.Request
import kotlin.system.exitProcess

/*
 * The entry point of the Android phone program (AirPhone.kt):
 *
 *     $(bindings/kotlin/test.sh --air-phone-command) <air address> <phone name>
 *
 * Robolectric needs its test runner, so this hands its arguments to the program through system properties and runs
 * it as a test class through JUnit: AirPhone (Android 14), or AirPhoneApi28 (Android 9) with SHOAL_AIR_SDK=28.
 * Exits 0 when the phone was told to quit, 1 when it failed or the air closed its connection, 2 on bad usage.
 */

/** Entry point: `<air address> <phone name>`. */
fun main(args: Array<String>) {
    if (args.size != 2) {
        System.err.println("usage: AirPhoneMainKt <air address> <phone name>")
        exitProcess(2)
    }
    System.setProperty(AIR_ADDRESS_PROPERTY, args[0])
    System.setProperty(AIR_PHONE_PROPERTY, args[1])
    val phone = when (val sdk = System.getenv("SHOAL_AIR_SDK")?.takeIf { it.isNotEmpty() } ?: "34") {
        "34" -> AirPhone::class.java
        "28" -> AirPhoneApi28::class.java
        else -> {
            System.err.println("SHOAL_AIR_SDK=$sdk: 34 or 28")
            exitProcess(2)
        }
    }
    val result = JUnitCore().run(Request.aClass(phone))
    for (failure in result.failures) {
        System.err.println("[air-phone ${args[1]}] ${failure.message ?: failure.exception}")
        if (failure.exception !is AssertionError) failure.exception.printStackTrace()
    }
    val ran = result.runCount == 1 && result.assumptionFailureCount == 0 && result.ignoreCount == 0
    exitProcess(if (result.wasSuccessful() && ran) 0 else 1)
}
