//! Text content: [`Chars`], a string whose items are code points, and the text of a [`Sequence<Chars>`].

use super::{SeqContent, Sequence};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Bytes stored inline (without a heap allocation) by [`Chars`].
const INLINE_BYTES: usize = 22;

/// String storage with a small-string optimisation: short text (the common case for typed runs and single-key
/// operations) needs no allocation.
#[derive(Clone)]
pub(super) enum Buf {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(String),
}

impl Buf {
    #[inline]
    fn from_str(s: &str) -> Buf {
        if s.len() <= INLINE_BYTES {
            let mut bytes = [0u8; INLINE_BYTES];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Buf::Inline { len: s.len() as u8, bytes }
        } else {
            Buf::Heap(s.to_owned())
        }
    }

    #[inline]
    fn as_str(&self) -> &str {
        match self {
            // Always valid UTF-8: inline bytes are only ever copied from whole `str`s cut at char boundaries.
            Buf::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default(),
            Buf::Heap(s) => s,
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Inline { len, bytes } => &bytes[..*len as usize],
            Buf::Heap(s) => s.as_bytes(),
        }
    }

    /// Appends `other`.
    #[inline]
    fn push_buf(&mut self, other: &Buf) {
        if let (Buf::Inline { len, bytes }, Buf::Inline { len: ol, bytes: ob }) = (&mut *self, other) {
            let (l, o) = (*len as usize, *ol as usize);
            if l + o <= INLINE_BYTES {
                // Both are whole UTF-8 strings, so the concatenation is one too.
                bytes[l..l + o].copy_from_slice(&ob[..o]);
                *len = (l + o) as u8;
                return;
            }
        }
        self.push_str(other.as_str())
    }

    fn push_str(&mut self, t: &str) {
        match self {
            Buf::Inline { len, bytes } => {
                let l = *len as usize;
                if l + t.len() <= INLINE_BYTES {
                    bytes[l..l + t.len()].copy_from_slice(t.as_bytes());
                    *len = (l + t.len()) as u8;
                } else {
                    let mut s = String::with_capacity((l + t.len()).max(2 * INLINE_BYTES));
                    s.push_str(self.as_str());
                    s.push_str(t);
                    *self = Buf::Heap(s);
                }
            }
            Buf::Heap(s) => s.push_str(t),
        }
    }

    /// Keeps bytes `[0, b)` and returns the rest; `b` is a char boundary.
    fn split_off(&mut self, b: usize) -> Buf {
        match self {
            Buf::Inline { len, bytes } => {
                let l = *len as usize;
                let b = b.min(l);
                let mut right = [0u8; INLINE_BYTES];
                right[..l - b].copy_from_slice(&bytes[b..l]);
                *len = b as u8;
                Buf::Inline { len: (l - b) as u8, bytes: right }
            }
            Buf::Heap(s) => {
                let b = b.min(s.len());
                let right = if s.len() - b <= INLINE_BYTES {
                    let r = Buf::from_str(s.get(b..).unwrap_or_default());
                    s.truncate(b);
                    r
                } else {
                    Buf::Heap(s.split_off(b))
                };
                if s.len() <= INLINE_BYTES {
                    *self = Buf::from_str(s);
                }
                right
            }
        }
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Inline { len: 0, bytes: [0; INLINE_BYTES] }
    }
}

/// Text content: a string whose items are Unicode scalar values (positions count code points). Short strings are
/// stored inline.
#[derive(Clone, Default)]
pub struct Chars {
    pub(super) buf: Buf,
    /// Number of `char`s.
    n: usize,
}

impl Chars {
    /// No text.
    pub fn new() -> Self {
        Chars::default()
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.buf.as_str()
    }

    /// Number of code points.
    pub fn char_len(&self) -> usize {
        self.n
    }

    /// Appends the text to `out`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.as_str())
    }

    /// Appends one character.
    pub fn push(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.buf.push_str(c.encode_utf8(&mut b));
        self.n += 1;
    }

    /// Appends `s`.
    pub fn push_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.n += s.chars().count();
    }

    /// The text, as a `String`.
    pub fn into_string(self) -> String {
        match self.buf {
            Buf::Heap(s) => s,
            b @ Buf::Inline { .. } => b.as_str().to_owned(),
        }
    }

    /// Byte offset of code point `at` (clamped to the end).
    fn byte_offset(&self, at: usize) -> usize {
        let b = self.buf.bytes();
        if at >= self.n {
            b.len()
        } else if self.n == b.len() {
            at // ASCII
        } else {
            // The `at`-th byte that starts a char (is not a UTF-8 continuation byte).
            b.iter().enumerate().filter(|(_, &x)| (x & 0xC0) != 0x80).nth(at).map_or(b.len(), |(i, _)| i)
        }
    }
}

impl PartialEq for Chars {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Chars {}

impl std::hash::Hash for Chars {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl SeqContent for Chars {
    #[inline]
    fn len(&self) -> usize {
        self.n
    }

    fn placeholder(len: usize) -> Option<Self> {
        Some(Chars::from("\0".repeat(len)))
    }

    fn split_off(&mut self, at: usize) -> Self {
        let b = self.byte_offset(at);
        let right = self.buf.split_off(b);
        let at = at.min(self.n);
        let rn = self.n - at;
        self.n = at;
        Chars { buf: right, n: rn }
    }

    #[inline]
    fn append(&mut self, other: Self) {
        match (&mut self.buf, other.buf) {
            (Buf::Inline { len: 0, .. }, ob) => self.buf = ob,
            (sb, ob) => sb.push_buf(&ob),
        }
        self.n += other.n;
    }
}

impl From<&str> for Chars {
    #[inline]
    fn from(s: &str) -> Self {
        let n = if s.len() == 1 { 1 } else { s.chars().count() };
        Chars { buf: Buf::from_str(s), n }
    }
}

impl From<String> for Chars {
    fn from(s: String) -> Self {
        let n = s.chars().count();
        let buf = if s.len() <= INLINE_BYTES { Buf::from_str(&s) } else { Buf::Heap(s) };
        Chars { buf, n }
    }
}

impl From<char> for Chars {
    fn from(c: char) -> Self {
        let mut b = [0u8; 4];
        Chars { buf: Buf::from_str(c.encode_utf8(&mut b)), n: 1 }
    }
}

impl From<Chars> for String {
    fn from(c: Chars) -> Self {
        c.into_string()
    }
}

impl AsRef<str> for Chars {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Chars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Chars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Chars {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Chars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Chars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Chars, E> {
                Ok(Chars::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Chars, E> {
                Ok(Chars::from(v))
            }
        }
        deserializer.deserialize_string(V)
    }
}

impl Sequence<Chars> {
    /// The visible text.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.vis_len);
        for (_, c) in self.visible_runs() {
            c.push_to(&mut out);
        }
        out
    }

    /// The visible text (same as [`Sequence::text`]).
    #[allow(clippy::inherent_to_string)]
    pub fn to_string(&self) -> String {
        self.text()
    }
}
