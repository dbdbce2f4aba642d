//! Field paths: `name`, `a.b.c`, `a.b[2]`, `` a.`key with spaces` ``. The same syntax addresses fields when writing
//! documents and in query filters.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// Maximum length of a path given to [`Path::parse`], in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Maximum number of segments in one path.
pub const MAX_PATH_SEGMENTS: usize = 64;

/// Largest array index accepted in a path (`a[1000000]` is the largest).
///
/// Paths are also used to *write* documents, so a huge index must not be able
/// to make the database allocate an enormous array.
pub const MAX_PATH_INDEX: usize = 1_000_000;

/// The deepest nesting a path (and so a document) may have.
pub const MAX_PATH_DEPTH: usize = MAX_PATH_SEGMENTS;
/// The longest map key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Whether `key` can name a field of a map: non-empty and at most [`MAX_KEY_BYTES`] bytes. (Paths in filters may
/// name any key of a JSON value; paths that write fields, and the keys of values written, must pass this.)
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

/// Why a path could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid path at byte {position}: {message}")]
pub struct PathError {
    /// Byte offset of the problem within the parsed text.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl PathError {
    pub(crate) fn at(position: usize, message: impl Into<String>) -> Self {
        PathError { position, message: message.into() }
    }
}

/// One step of a [`Path`]: an object key or an array index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSegment {
    /// Look up this key in a JSON object.
    Key(String),
    /// Take the element at this position (0-based) of a JSON array.
    Index(usize),
}

/// A parsed, validated field path such as `a.b[2].c`.
///
/// # Syntax
///
/// * A path is a first **key** followed by any number of `.key` and `[index]`
///   steps, with no whitespace anywhere: `name`, `a.b.c`, `tags[0]`,
///   `a.b[2].c`, `matrix[1][0]`, `_id`.
/// * A bare key starts with a letter or `_` and continues with letters,
///   digits or `_` (Unicode letters and digits are accepted: `prénom`).
/// * Any other key, including keys with spaces, dots, dashes, keys starting
///   with a digit and the empty key, is written between backticks:
///   `` a.`key with spaces` ``, `` `first-name` ``, `` stats.`2024` ``.
///   Inside backticks `` \` `` and `\\` stand for a backtick and a backslash;
///   the other escapes of string literals (`\n`, `\t`, `\u{1F600}`, `\u00e9`,
///   ...) work too.
/// * An index is a non-negative decimal integer without leading zeros, at
///   most [`MAX_PATH_INDEX`]: `a[0]`, `a[12]`. `a[-1]`, `a[01]`, `a[ 1]`,
///   `a["k"]` are rejected.
/// * Rejected with [`PathError`]: the empty string, empty
///   segments (`a..b`, `.a`), a trailing dot (`a.`), an unclosed bracket,
///   whitespace, more than [`MAX_PATH_SEGMENTS`] segments. Text longer than
///   [`MAX_PATH_LEN`] bytes gives [`PathError`].
///
/// A key step only looks into objects and an index step only into arrays:
/// `a[0]` does not find the key `"0"` of an object, `` a.`0` `` does.
///
/// ```
/// use shoaldb::{Path, PathSegment};
/// use serde_json::json;
///
/// let p = Path::parse("a.`odd key`[1]").unwrap();
/// assert_eq!(p.segments(), &[
///     PathSegment::Key("a".into()),
///     PathSegment::Key("odd key".into()),
///     PathSegment::Index(1),
/// ]);
/// let doc = json!({"a": {"odd key": [10, 20]}});
/// assert_eq!(p.resolve(&doc), Some(&json!(20)));
/// assert!(Path::parse("a..b").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    segments: Vec<PathSegment>,
}

impl Path {
    /// Parses a path, strictly: the whole text must be one valid path.
    pub fn parse(src: &str) -> Result<Path, PathError> {
        if src.len() > MAX_PATH_LEN {
            return Err(PathError::at(MAX_PATH_LEN, format!("path longer than {MAX_PATH_LEN} bytes")));
        }
        if src.is_empty() {
            return Err(PathError::at(0, "empty path"));
        }
        let (path, end) = scan_path(src, 0)?;
        if let Some(c) = src[end..].chars().next() {
            let message = if c.is_whitespace() {
                "whitespace is not allowed in a path".to_string()
            } else {
                format!("unexpected character {c:?}")
            };
            return Err(PathError::at(end, message));
        }
        Ok(path)
    }

    /// Builds a path from segments, checking the same limits as
    /// [`Path::parse`] (at least one segment, at most [`MAX_PATH_SEGMENTS`],
    /// indexes at most [`MAX_PATH_INDEX`]). Position in errors is the index of
    /// the offending segment.
    pub fn from_segments(segments: Vec<PathSegment>) -> Result<Path, PathError> {
        if segments.is_empty() {
            return Err(PathError::at(0, "empty path"));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(PathError::at(MAX_PATH_SEGMENTS, format!("a path has at most {MAX_PATH_SEGMENTS} segments")));
        }
        for (i, seg) in segments.iter().enumerate() {
            if let PathSegment::Index(n) = seg {
                if *n > MAX_PATH_INDEX {
                    return Err(PathError::at(i, format!("array index {n} is larger than {MAX_PATH_INDEX}")));
                }
            }
        }
        Ok(Path { segments })
    }

    /// The empty path: the document itself (not accepted by [`Path::parse`]).
    pub fn root() -> Path {
        Path { segments: Vec::new() }
    }

    /// Whether this is the document itself.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path one level up, and the last segment.
    pub fn split_last(&self) -> Option<(Path, &PathSegment)> {
        let (last, rest) = self.segments.split_last()?;
        Some((Path { segments: rest.to_vec() }, last))
    }

    /// The first `n` segments as text (for error messages).
    pub(crate) fn prefix_string(&self, n: usize) -> String {
        Path { segments: self.segments[..n.min(self.segments.len())].to_vec() }.to_string()
    }

    /// A path made of a single top-level key, e.g. `Path::key("_id")`.
    /// Any string is a valid key, so this cannot fail.
    pub fn key(name: &str) -> Path {
        Path { segments: vec![PathSegment::Key(name.to_string())] }
    }

    /// The segments of the path, first to last (empty only for [`Path::root`]).
    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    /// Follows the path through `doc`. Returns `None` when a key is absent, an
    /// index is out of bounds, or a step meets a value of the wrong type (a key
    /// step on a non-object, an index step on a non-array). A present JSON
    /// `null` is returned as `Some(&Value::Null)`.
    pub fn resolve<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut cur = doc;
        for seg in &self.segments {
            cur = match seg {
                PathSegment::Key(k) => cur.as_object()?.get(k.as_str())?,
                PathSegment::Index(i) => cur.as_array()?.get(*i)?,
            };
        }
        Some(cur)
    }
}

impl fmt::Display for Path {
    /// Writes the canonical text of the path, which [`Path::parse`] (and the
    /// filter language) read back to an equal path. Keys that are not bare
    /// identifiers, or that are filter keywords, are written in backticks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                PathSegment::Index(n) => write!(f, "[{n}]")?,
                PathSegment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        f.write_str("`")?;
                        for c in k.chars() {
                            match c {
                                '`' => f.write_str("\\`")?,
                                '\\' => f.write_str("\\\\")?,
                                '\n' => f.write_str("\\n")?,
                                '\r' => f.write_str("\\r")?,
                                '\t' => f.write_str("\\t")?,
                                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                                c => write!(f, "{c}")?,
                            }
                        }
                        f.write_str("`")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Anything that names a path: a `&str` (parsed), a `String`, or a parsed [`Path`].
pub trait AsPath {
    /// The path, parsed if it was text (borrowed when it already was a [`Path`]); an error if the text is not a
    /// valid path.
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

impl FromStr for Path {
    type Err = PathError;
    /// Same as [`Path::parse`].
    fn from_str(s: &str) -> Result<Path, PathError> {
        Path::parse(s)
    }
}

impl serde::Serialize for Path {
    /// Serializes as the canonical path text (see [`Path`]'s `Display`).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Path {
    /// Deserializes from path text, validating it with [`Path::parse`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Path, D::Error> {
        let s = String::deserialize(deserializer)?;
        Path::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// True when `k` can be written without backticks at any position of a path.
fn is_bare_key(k: &str) -> bool {
    let mut chars = k.chars();
    match chars.next() {
        Some(c) if is_ident_start(c) => chars.all(is_ident_continue) && !is_keyword(k),
        _ => false,
    }
}

/// Scans the longest path starting at byte `start` of `src`.
///
/// Returns the path and the byte offset just past it. Used by [`Path::parse`]
/// and by the filter lexer, so both accept exactly the same syntax. Errors
/// carry absolute offsets into `src`.
pub(crate) fn scan_path(src: &str, start: usize) -> Result<(Path, usize), PathError> {
    let bytes = src.as_bytes();
    let mut segments = Vec::new();
    let (first, mut pos) = scan_key(src, start, true)?;
    segments.push(PathSegment::Key(first));
    loop {
        match bytes.get(pos) {
            Some(b'.') => {
                let (key, end) = scan_key(src, pos + 1, false)?;
                segments.push(PathSegment::Key(key));
                pos = end;
            }
            Some(b'[') => {
                let (index, end) = scan_index(src, pos)?;
                segments.push(PathSegment::Index(index));
                pos = end;
            }
            _ => break,
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(PathError::at(start, format!("a path has at most {MAX_PATH_SEGMENTS} segments")));
        }
    }
    Ok((Path { segments }, pos))
}

/// Scans one key (bare identifier or backtick-quoted) at `pos`.
fn scan_key(src: &str, pos: usize, first: bool) -> Result<(String, usize), PathError> {
    let rest = src.get(pos..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return Err(PathError::at(pos, if first { "expected a field name" } else { "path ends with '.'" }));
    };
    if c == '`' {
        return scan_quoted(src, pos).map_err(|(p, m)| PathError::at(p, m));
    }
    if is_ident_start(c) {
        let len = rest.char_indices().find(|&(_, c)| !is_ident_continue(c)).map_or(rest.len(), |(i, _)| i);
        return Ok((rest[..len].to_string(), pos + len));
    }
    let message = match c {
        '.' => "empty path segment".to_string(),
        '0'..='9' => "a key cannot start with a digit: write array indexes as [n] \
                      and numeric keys in backticks, e.g. a.`0`"
            .to_string(),
        '"' | '\'' if !first => "quote odd keys with backticks, e.g. a.`key`".to_string(),
        c if c.is_whitespace() => "whitespace is not allowed in a path".to_string(),
        c => format!("expected a field name, found {c:?}"),
    };
    Err(PathError::at(pos, message))
}

/// Scans `[digits]` at `pos` (which holds the `[`).
fn scan_index(src: &str, pos: usize) -> Result<(usize, usize), PathError> {
    let bytes = src.as_bytes();
    let digits_start = pos + 1;
    let mut end = digits_start;
    while bytes.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    if end == digits_start {
        let message = match bytes.get(digits_start) {
            Some(b'-') => "array indexes cannot be negative",
            Some(b'"') | Some(b'\'') => "quote odd keys with backticks, e.g. a.`key`, not a[\"key\"]",
            Some(b']') => "empty array index",
            None => "unclosed '['",
            _ => "expected an array index (a non-negative integer)",
        };
        return Err(PathError::at(digits_start, message));
    }
    let digits = &src[digits_start..end];
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(PathError::at(digits_start, "array indexes cannot have leading zeros"));
    }
    let index = digits
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_PATH_INDEX)
        .ok_or_else(|| PathError::at(digits_start, format!("array index is larger than {MAX_PATH_INDEX}")))?;
    if bytes.get(end) != Some(&b']') {
        return Err(PathError::at(end, "expected ']' after array index"));
    }
    Ok((index, end + 1))
}

/// Words with a meaning of their own in filters (case-sensitive).
const KEYWORDS: &[&str] = &["true", "false", "null", "and", "or", "not", "contains", "in", "exists"];

/// True for a reserved word of the filter language.
pub(crate) fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// Characters that can start a bare key or parameter name.
pub(crate) fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

/// Characters that can continue a bare key or parameter name.
pub(crate) fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Scans a quoted string (`"..."`, `'...'` or `` `...` ``) whose opening quote
/// is at byte `start`, decoding escapes. Returns the text and the offset just
/// past the closing quote; errors are `(offset, message)`.
///
/// Escapes: `\n \r \t \b \f \0 \\ \/ \" \' \``, `\uXXXX` (UTF-16, surrogate
/// pairs combined), `\u{X..XXXXXX}` (a Unicode scalar value).
pub(crate) fn scan_quoted(src: &str, start: usize) -> Result<(String, usize), (usize, String)> {
    let Some(quote) = src[start..].chars().next() else {
        return Err((start, "expected a quote".into()));
    };
    let body = start + quote.len_utf8();
    let mut out = String::new();
    let mut chars = src[body..].char_indices().map(|(i, c)| (i + body, c));
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((out, i + c.len_utf8()));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else { break };
        let decoded = match e {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'b' => '\u{8}',
            'f' => '\u{c}',
            '0' => '\0',
            '\\' | '/' | '"' | '\'' | '`' => e,
            'u' => decode_unicode_escape(src, i, &mut chars)?,
            other => return Err((i, format!("unknown escape sequence '\\{other}'"))),
        };
        out.push(decoded);
    }
    let what = if quote == '`' { "quoted key" } else { "string" };
    Err((start, format!("unterminated {what}")))
}

/// Decodes the part of a `\u` escape after the `u`; `esc` is the offset of the
/// backslash.
fn decode_unicode_escape(
    src: &str,
    esc: usize,
    chars: &mut impl Iterator<Item = (usize, char)>,
) -> Result<char, (usize, String)> {
    let bad = |m: &str| (esc, m.to_string());
    let hex4 = |chars: &mut dyn Iterator<Item = (usize, char)>| -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let (_, c) = chars.next()?;
            v = v * 16 + c.to_digit(16)?;
        }
        Some(v)
    };
    // Peek at the next char without consuming via a small lookahead on `src`.
    let after_u = esc + 2;
    if src.as_bytes().get(after_u) == Some(&b'{') {
        chars.next(); // '{'
        let mut v = 0u32;
        let mut n = 0;
        loop {
            let Some((_, c)) = chars.next() else {
                return Err(bad("unterminated \\u{...} escape"));
            };
            if c == '}' {
                break;
            }
            let Some(d) = c.to_digit(16) else {
                return Err(bad("invalid hex digit in \\u{...} escape"));
            };
            n += 1;
            if n > 6 {
                return Err(bad("\\u{...} escape has more than 6 hex digits"));
            }
            v = v * 16 + d;
        }
        if n == 0 {
            return Err(bad("empty \\u{} escape"));
        }
        return char::from_u32(v).ok_or_else(|| bad("\\u{...} escape is not a Unicode scalar value"));
    }
    let hi = hex4(chars).ok_or_else(|| bad("expected 4 hex digits or {...} after \\u"))?;
    match hi {
        0xD800..=0xDBFF => {
            let pair = (|| {
                let (_, a) = chars.next()?;
                let (_, b) = chars.next()?;
                if a != '\\' || b != 'u' {
                    return None;
                }
                let lo = hex4(chars)?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return None;
                }
                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
            })();
            pair.ok_or_else(|| bad("high surrogate \\u escape must be followed by a low surrogate \\u escape"))
        }
        0xDC00..=0xDFFF => Err(bad("unpaired low surrogate in \\u escape")),
        v => char::from_u32(v).ok_or_else(|| bad("invalid \\u escape")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathSegment::*;

    #[test]
    fn parses_keys_indexes_and_quoted_keys() {
        let p = Path::parse("a.b[2].`odd key`.c").unwrap();
        assert_eq!(p.segments(), &[Key("a".into()), Key("b".into()), Index(2), Key("odd key".into()), Key("c".into())]);
        assert_eq!(Path::parse(&p.to_string()).unwrap(), p);
        assert_eq!(Path::parse("x[0][1]").unwrap().segments(), &[Key("x".into()), Index(0), Index(1)]);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a[",
            "a[]",
            "a[x]",
            "a[-1]",
            "a b",
            "a]",
            "a[1]b",
            "a[\"x]",
            "a[99999999999999999999]",
            "a.[1]",
            "a[01]",
        ] {
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
