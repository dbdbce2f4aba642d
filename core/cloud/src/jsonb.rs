//! JSON as PostgreSQL's JSONB can hold it.

use serde_json::Value as Json;

/// `view` with every U+0000 in its strings and keys replaced by U+FFFD: JSONB cannot hold U+0000, and a document
/// holding one must not make its batch fail. (The state column keeps the exact value.)
pub(crate) fn jsonb_safe(view: Json) -> Json {
    fn clean(s: String) -> String {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    }
    match view {
        Json::String(s) => Json::String(clean(s)),
        Json::Array(items) => Json::Array(items.into_iter().map(jsonb_safe).collect()),
        Json::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (clean(k), jsonb_safe(v))).collect()),
        other => other,
    }
}
