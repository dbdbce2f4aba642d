//! `cargo run -p uniffi-bindgen -- generate --library target/debug/libshoaldb_ffi.so --language kotlin ...`
fn main() {
    uniffi::uniffi_bindgen_main()
}
