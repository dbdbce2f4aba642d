// dev.shoaldb:shoal-android: the Shoal Kotlin API as an Android library (AAR).
//
// What goes in:
// - src/main/kotlin            the idiomatic Kotlin layer (pure JVM + kotlinx-coroutines + kotlinx-serialization-json,
//                              also tested on a desktop JVM)
// - src/main/kotlin-android    Android-only helpers (Logcat logger, paths, Wi-Fi multicast lock)
// - build/generated/uniffi/kotlin   the UniFFI-generated bindings (dev/shoaldb/shoaldb_ffi.kt)
// - build/generated/jniLibs    libshoaldb_ffi.so for arm64-v8a, armeabi-v7a and x86_64
// The two generated directories are written by build-rust.sh, which the task buildRustLibraries runs before
// anything else. Pass -Pshoal.skipRustBuild to reuse what an earlier run (or a CI job) already put there.
//
// The tests live beside the sources but are not built here (see androidComponents below):
// - src/test/kotlin            JUnit 5 tests of the Kotlin layer and the bindings, the README example, the mesh peer
// - src/testAndroid/kotlin     Robolectric tests of src/main/kotlin-android (the Bluetooth radio, its manifest)
// bindings/kotlin/test.sh runs both on a desktop JVM with Maven (bindings/kotlin/pom.xml), against a host build of
// the Rust library.

import com.android.build.api.variant.HasUnitTestBuilder
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.4.21"
    // The kotlinx.serialization compiler plugin, as bindings/kotlin/pom.xml applies it (there for the tests'
    // @Serializable classes). Apps that use typed collections apply it to their own module too.
    id("org.jetbrains.kotlin.plugin.serialization") version "2.4.21"
    `maven-publish`
}

val shoalVersion: String by project

group = "dev.shoaldb"
version = shoalVersion

android {
    namespace = "dev.shoaldb"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        // JNA finds classes, Structure fields and callbacks by reflection: apps that shrink with R8 need these rules.
        consumerProguardFiles("consumer-rules.pro")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"), "proguard-rules.pro")
        }
    }

    sourceSets {
        getByName("main") {
            kotlin.srcDirs("src/main/kotlin", "src/main/kotlin-android", "build/generated/uniffi/kotlin")
            jniLibs.srcDirs("build/generated/jniLibs")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

// No unit-test variant: src/test/kotlin is Gradle's conventional unit-test directory, but those tests need a host
// build of libshoaldb_ffi.so (JNA loads it on the desktop JVM), JUnit 5 and the mesh classpath that
// bindings/kotlin/test.sh provides; this build only cross-compiles for Android. They run there, not here.
androidComponents {
    beforeVariants { variantBuilder ->
        (variantBuilder as HasUnitTestBuilder).enableUnitTest = false
    }
}

dependencies {
    // `api`: the generated bindings expose JNA types, and the Kotlin API exposes Flow and suspend functions.
    // The @aar artifact carries JNA's libjnidispatch.so for each Android ABI (the plain jar only has desktop ones).
    api("net.java.dev.jna:jna:5.19.1@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
    // `api`: typed collections (`store.collection<T>(name, json)`) take a Json and decode with the app's serializers.
    api("org.jetbrains.kotlinx:kotlinx-serialization-json:1.12.0")
}

// Cross-compiles the Rust library for each ABI and generates the Kotlin bindings (see build-rust.sh).
// It declares no outputs, so Gradle runs it every build and Cargo decides what is out of date.
val skipRustBuild = providers.gradleProperty("shoal.skipRustBuild").isPresent
val buildRustLibraries by tasks.registering(Exec::class) {
    group = "build"
    description = "Builds libshoaldb_ffi.so for each Android ABI and generates the UniFFI Kotlin bindings."
    enabled = !skipRustBuild
    workingDir = projectDir
    commandLine("bash", "build-rust.sh")
}

tasks.named("preBuild") { dependsOn(buildRustLibraries) }
tasks.configureEach {
    // merge<Variant>JniLibFolders reads build/generated/jniLibs; <variant>SourcesJar reads the generated Kotlin.
    if ((name.startsWith("merge") && name.endsWith("JniLibFolders")) || name.endsWith("SourcesJar")) {
        dependsOn(buildRustLibraries)
    }
}

publishing {
    publications {
        register<MavenPublication>("release") {
            groupId = "dev.shoaldb"
            artifactId = "shoal-android"
            version = shoalVersion
            afterEvaluate { from(components["release"]) }
            pom {
                name.set("Shoal for Android")
                description.set("Shoal, an offline-first peer-to-peer database: Kotlin API and native library for Android.")
                licenses {
                    license {
                        name.set("Apache-2.0")
                        url.set("https://www.apache.org/licenses/LICENSE-2.0.txt")
                        distribution.set("repo")
                    }
                }
            }
        }
    }
    repositories {
        // `gradle publishReleasePublicationToStagingRepository` writes a Maven layout here (to inspect or upload);
        // `gradle publishToMavenLocal` installs into ~/.m2.
        maven {
            name = "staging"
            url = uri(layout.buildDirectory.dir("staging-repo"))
        }
    }
}
