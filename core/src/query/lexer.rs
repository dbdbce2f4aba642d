//! Tokenizer for the filter language.

use serde_json::Number;

use super::error::QueryError;
use crate::crdt::path::{is_ident_continue, is_ident_start, scan_path, scan_quoted, Path};

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    Path(Path),
    Param(String),
    Number(Number),
    Str(String),
    True,
    False,
    Null,
    And,
    Or,
    Not,
    Contains,
    In,
    Exists,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eof,
}

impl Tok {
    /// Short description used in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Path(p) => format!("field `{p}`"),
            Tok::Param(n) => format!("parameter `${n}`"),
            Tok::Number(n) => format!("number {n}"),
            Tok::Str(_) => "string literal".to_string(),
            Tok::True => "`true`".into(),
            Tok::False => "`false`".into(),
            Tok::Null => "`null`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Not => "`!`".into(),
            Tok::Contains => "`contains`".into(),
            Tok::In => "`in`".into(),
            Tok::Exists => "`exists`".into(),
            Tok::EqEq => "`==`".into(),
            Tok::NotEq => "`!=`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eof => "end of query".into(),
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, QueryError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while let Some(c) = src[pos..].chars().next() {
        if c.is_whitespace() {
            pos += c.len_utf8();
            continue;
        }
        let start = pos;
        let next = bytes.get(pos + 1).copied();
        let (tok, end) = match c {
            '(' => (Tok::LParen, pos + 1),
            ')' => (Tok::RParen, pos + 1),
            '[' => (Tok::LBracket, pos + 1),
            ']' => (Tok::RBracket, pos + 1),
            ',' => (Tok::Comma, pos + 1),
            '=' if next == Some(b'=') => (Tok::EqEq, pos + 2),
            '=' => return Err(QueryError::syntax(pos, "unexpected '=': use '==' to compare")),
            '!' if next == Some(b'=') => (Tok::NotEq, pos + 2),
            '!' => (Tok::Not, pos + 1),
            '<' if next == Some(b'=') => (Tok::Le, pos + 2),
            '<' => (Tok::Lt, pos + 1),
            '>' if next == Some(b'=') => (Tok::Ge, pos + 2),
            '>' => (Tok::Gt, pos + 1),
            '&' if next == Some(b'&') => (Tok::And, pos + 2),
            '&' => return Err(QueryError::syntax(pos, "unexpected '&': use '&&' for logical and")),
            '|' if next == Some(b'|') => (Tok::Or, pos + 2),
            '|' => return Err(QueryError::syntax(pos, "unexpected '|': use '||' for logical or")),
            '"' | '\'' => {
                let (s, end) = scan_quoted(src, pos).map_err(|(p, m)| QueryError::syntax(p, m))?;
                (Tok::Str(s), end)
            }
            '-' | '0'..='9' => {
                let (n, end) = scan_number(src, pos)?;
                (Tok::Number(n), end)
            }
            '$' => {
                let rest = &src[pos + 1..];
                let len = match rest.chars().next() {
                    Some(c) if is_ident_start(c) => {
                        rest.char_indices().find(|&(_, c)| !is_ident_continue(c)).map_or(rest.len(), |(i, _)| i)
                    }
                    _ => {
                        return Err(QueryError::syntax(
                            pos,
                            "expected a parameter name after '$' (a letter or '_' first)",
                        ))
                    }
                };
                (Tok::Param(rest[..len].to_string()), pos + 1 + len)
            }
            '`' => {
                let (p, end) = scan_path(src, pos)?;
                (Tok::Path(p), end)
            }
            c if is_ident_start(c) => {
                let rest = &src[pos..];
                let len = rest.char_indices().find(|&(_, c)| !is_ident_continue(c)).map_or(rest.len(), |(i, _)| i);
                let kw = match &rest[..len] {
                    "true" => Some(Tok::True),
                    "false" => Some(Tok::False),
                    "null" => Some(Tok::Null),
                    "and" => Some(Tok::And),
                    "or" => Some(Tok::Or),
                    "not" => Some(Tok::Not),
                    "contains" => Some(Tok::Contains),
                    "in" => Some(Tok::In),
                    "exists" => Some(Tok::Exists),
                    _ => None,
                };
                match kw {
                    Some(kw) => (kw, pos + len),
                    None => {
                        let (p, end) = scan_path(src, pos)?;
                        (Tok::Path(p), end)
                    }
                }
            }
            c => return Err(QueryError::syntax(pos, format!("unexpected character {c:?}"))),
        };
        tokens.push(Token { tok, pos: start });
        pos = end;
    }
    tokens.push(Token { tok: Tok::Eof, pos: src.len() });
    Ok(tokens)
}

/// Scans a JSON-style number at `start`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
///
/// Integers that fit are kept exact (`i64`, then `u64`); everything else
/// becomes an `f64`, which must be finite.
fn scan_number(src: &str, start: usize) -> Result<(Number, usize), QueryError> {
    let bytes = src.as_bytes();
    let digits = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut pos = start;
    if bytes.get(pos) == Some(&b'-') {
        pos += 1;
    }
    let int_start = pos;
    pos = digits(pos);
    if pos == int_start {
        return Err(QueryError::syntax(start, "expected a digit after '-'"));
    }
    if bytes.get(int_start) == Some(&b'0') && pos - int_start > 1 {
        return Err(QueryError::syntax(int_start, "numbers cannot have leading zeros"));
    }
    let mut is_float = false;
    if bytes.get(pos) == Some(&b'.') {
        let frac_start = pos + 1;
        pos = digits(frac_start);
        if pos == frac_start {
            return Err(QueryError::syntax(frac_start, "expected a digit after the decimal point"));
        }
        is_float = true;
    }
    if matches!(bytes.get(pos), Some(b'e') | Some(b'E')) {
        let mut exp = pos + 1;
        if matches!(bytes.get(exp), Some(b'+') | Some(b'-')) {
            exp += 1;
        }
        let exp_digits = digits(exp);
        if exp_digits == exp {
            return Err(QueryError::syntax(exp, "expected a digit in the exponent"));
        }
        pos = exp_digits;
        is_float = true;
    }
    if let Some(c) = src[pos..].chars().next() {
        if is_ident_continue(c) || c == '.' || c == '`' {
            return Err(QueryError::syntax(pos, format!("unexpected {c:?} after a number")));
        }
    }
    let text = &src[start..pos];
    if !is_float {
        if let Ok(i) = text.parse::<i64>() {
            return Ok((Number::from(i), pos));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok((Number::from(u), pos));
        }
    }
    let number = text
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .ok_or_else(|| QueryError::syntax(start, "number is out of range"))?;
    Ok((number, pos))
}
