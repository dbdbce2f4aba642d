//! Field paths as apps write them: `title`, `address.city`, `tags[2]`, `rows[0].cells[3]`, `a["odd key"]`.

use std::fmt;

/// The deepest nesting a path (and a document) may have.
pub const MAX_PATH_DEPTH: usize = 64;
/// The longest map key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSegment {
    /// A map key.
    Key(String),
    /// An array index (visible position).
    Index(usize),
}

/// A parsed field path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Path {
    segments: Vec<PathSegment>,
}

/// Why a path could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?} at byte {position}: {message}")]
pub struct PathError {
    pub path: String,
    pub position: usize,
    pub message: String,
}

impl Path {
    /// The empty path: the document itself.
    pub fn root() -> Path {
        Path::default()
    }

    pub fn from_segments(segments: Vec<PathSegment>) -> Path {
        Path { segments }
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path one level up and the last segment.
    pub fn split_last(&self) -> Option<(Path, &PathSegment)> {
        let (last, rest) = self.segments.split_last()?;
        Some((Path { segments: rest.to_vec() }, last))
    }

    /// Parse `a.b[2]["odd key"].c`. Keys are identifiers (`[A-Za-z0-9_$@-]`, not starting with a digit is not
    /// required) or double-quoted JSON strings inside brackets; indexes are decimal.
    pub fn parse(src: &str) -> Result<Path, PathError> {
        let err = |position: usize, message: &str| PathError {
            path: src.chars().take(200).collect(),
            position,
            message: message.to_string(),
        };
        if src.is_empty() {
            return Err(err(0, "empty path"));
        }
        let bytes = src.as_bytes();
        let mut segments = Vec::new();
        let mut i = 0;
        let mut expect_key = true; // at the start or after '.'
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'[' {
                if expect_key && !segments.is_empty() {
                    return Err(err(i, "expected a key after '.'"));
                }
                i += 1;
                if i < bytes.len() && bytes[i] == b'"' {
                    let start = i;
                    i += 1;
                    let mut escaped = false;
                    while i < bytes.len() && (escaped || bytes[i] != b'"') {
                        escaped = !escaped && bytes[i] == b'\\';
                        i += 1;
                    }
                    if i >= bytes.len() {
                        return Err(err(start, "unterminated quoted key"));
                    }
                    let key: String = serde_json::from_str(&src[start..=i])
                        .map_err(|_| err(start, "invalid quoted key"))?;
                    i += 1;
                    segments.push(PathSegment::Key(key));
                } else {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    if start == i {
                        return Err(err(start, "expected an index or a quoted key"));
                    }
                    let n: usize = src[start..i].parse().map_err(|_| err(start, "index too large"))?;
                    if n > u32::MAX as usize {
                        return Err(err(start, "index too large"));
                    }
                    segments.push(PathSegment::Index(n));
                }
                if i >= bytes.len() || bytes[i] != b']' {
                    return Err(err(i, "expected ']'"));
                }
                i += 1;
                expect_key = false;
            } else if b == b'.' {
                if expect_key {
                    return Err(err(i, "empty key"));
                }
                expect_key = true;
                i += 1;
            } else {
                if !expect_key {
                    return Err(err(i, "expected '.' or '['"));
                }
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'.' | b'[' | b']') {
                    let c = bytes[i];
                    if !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'@' | b'-')) {
                        return Err(err(i, "unexpected character in key (quote odd keys: a[\"x y\"])"));
                    }
                    i += 1;
                }
                segments.push(PathSegment::Key(src[start..i].to_string()));
                expect_key = false;
            }
            if segments.len() > MAX_PATH_DEPTH {
                return Err(err(i, "path too deep"));
            }
        }
        if expect_key {
            return Err(err(src.len(), "path ends with '.'"));
        }
        if let Some(PathSegment::Key(k)) = segments.iter().find(|s| matches!(s, PathSegment::Key(k) if k.len() > MAX_KEY_BYTES || k.is_empty())) {
            return Err(err(0, if k.is_empty() { "empty key" } else { "key too long" }));
        }
        Ok(Path { segments })
    }

    /// Follow this path through a JSON value.
    pub fn resolve<'a>(&self, mut v: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for s in &self.segments {
            v = match s {
                PathSegment::Key(k) => v.as_object()?.get(k)?,
                PathSegment::Index(i) => v.as_array()?.get(*i)?,
            };
        }
        Some(v)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, s) in self.segments.iter().enumerate() {
            match s {
                PathSegment::Key(k) if !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'@' | b'-')) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?
                }
                PathSegment::Key(k) => write!(f, "[{}]", serde_json::Value::String(k.clone()))?,
                PathSegment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Anything that names a path: a `&str` (parsed), a `String`, or a parsed [`Path`].
pub trait AsPath {
    fn to_path(&self) -> Result<std::borrow::Cow<'_, Path>, PathError>;
}

impl AsPath for str {
    fn to_path(&self) -> Result<std::borrow::Cow<'_, Path>, PathError> {
        Path::parse(self).map(std::borrow::Cow::Owned)
    }
}

impl AsPath for String {
    fn to_path(&self) -> Result<std::borrow::Cow<'_, Path>, PathError> {
        self.as_str().to_path()
    }
}

impl AsPath for Path {
    fn to_path(&self) -> Result<std::borrow::Cow<'_, Path>, PathError> {
        Ok(std::borrow::Cow::Borrowed(self))
    }
}

impl<T: AsPath + ?Sized> AsPath for &T {
    fn to_path(&self) -> Result<std::borrow::Cow<'_, Path>, PathError> {
        (**self).to_path()
    }
}

impl std::str::FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Path, PathError> {
        Path::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathSegment::*;

    #[test]
    fn parses_keys_indexes_and_quoted_keys() {
        let p = Path::parse(r#"a.b[2]["odd key"].c"#).unwrap();
        assert_eq!(
            p.segments(),
            &[Key("a".into()), Key("b".into()), Index(2), Key("odd key".into()), Key("c".into())]
        );
        assert_eq!(Path::parse(&p.to_string()).unwrap(), p);
        assert_eq!(Path::parse("x[0][1]").unwrap().segments(), &[Key("x".into()), Index(0), Index(1)]);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["", ".", "a.", ".a", "a..b", "a[", "a[]", "a[x]", "a[-1]", "a b", "a]", "a[1]b", "a[\"x]",
            "a[99999999999999999999]", "a.[1]"] {
            assert!(Path::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let deep = vec!["a"; MAX_PATH_DEPTH + 1].join(".");
        assert!(Path::parse(&deep).is_err());
    }

    #[test]
    fn resolves_in_json() {
        let j = serde_json::json!({"a": {"b": [10, {"c": true}]}});
        assert_eq!(Path::parse("a.b[1].c").unwrap().resolve(&j), Some(&serde_json::json!(true)));
        assert_eq!(Path::parse("a.b[5]").unwrap().resolve(&j), None);
    }
}
