// Shoal for Android: one standalone Android library module (this directory is the Gradle root).
// Build it with `gradle assembleRelease` (Gradle 8.9+, JDK 17, Android SDK with platform 35, Android NDK);
// see README.md.

pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "shoal-android"
