//! Recursive-descent parser producing the filter syntax tree.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! or      := and (("||" | "or") and)*        -- parsed in one loop with `and`
//! and     := cmp (("&&" | "and") cmp)*
//! cmp     := unary (cmp_op unary)?          -- comparisons do not chain
//! cmp_op  := "==" | "!=" | "<" | "<=" | ">" | ">=" | "contains" | "in"
//! unary   := ("!" | "not") unary | primary
//! primary := literal | "$" name | path | array | "exists" "(" path ")" | "(" or ")"
//! array   := "[" (element ("," element)*)? "]"
//! element := literal | "$" name | array
//! literal := number | string | "true" | "false" | "null"
//! ```

use serde_json::Value;

use super::error::QueryError;
use super::lexer::{Tok, Token};
use super::{MAX_ARRAY_LITERAL_LEN, MAX_DEPTH};
use crate::crdt::path::Path;

/// A comparison-level binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    In,
}

/// The syntax tree of a filter. `And`/`Or` are n-ary so that long chains do
/// not make the tree deep.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    /// A constant, including array literals without parameters.
    Literal(Value),
    /// A `$name` parameter.
    Param(String),
    /// A field path.
    Path(Path),
    /// An array literal containing at least one parameter.
    Array(Vec<Expr>),
    /// `exists(path)`.
    Exists(Path),
    /// `!expr`.
    Not(Box<Expr>),
    /// `a && b && ...` (at least two operands).
    And(Vec<Expr>),
    /// `a || b || ...` (at least two operands).
    Or(Vec<Expr>),
    /// `a op b`.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
}

/// Parses a whole token stream (ending in `Eof`) into an expression.
pub(crate) fn parse(tokens: &[Token]) -> Result<Expr, QueryError> {
    let mut p = Parser { tokens, index: 0, depth: 0 };
    if matches!(p.peek().tok, Tok::Eof) {
        return Err(QueryError::syntax(0, "empty query"));
    }
    let expr = p.parse_or()?;
    let t = p.peek();
    match t.tok {
        Tok::Eof => Ok(expr),
        Tok::RParen => Err(QueryError::syntax(t.pos, "unmatched ')'")),
        _ => Err(QueryError::syntax(t.pos, format!("unexpected {} after a complete expression", t.tok.describe()))),
    }
}

struct Parser<'t> {
    tokens: &'t [Token],
    index: usize,
    depth: usize,
}

/// Returned by `peek` past the end; `tokenize` always ends with `Eof`, so this
/// is only a safety net.
static EOF: Token = Token { tok: Tok::Eof, pos: 0 };

impl<'t> Parser<'t> {
    fn peek(&self) -> &'t Token {
        self.tokens.get(self.index).or_else(|| self.tokens.last()).unwrap_or(&EOF)
    }

    fn advance(&mut self) -> &'t Token {
        let t = self.peek();
        if self.index < self.tokens.len() {
            self.index += 1;
        }
        t
    }

    /// Enters one nesting level at `pos`, failing past [`MAX_DEPTH`].
    fn enter(&mut self, pos: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::TooDeep { position: pos, limit: MAX_DEPTH });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Parses `or`/`and`/`cmp` levels in one frame (n-ary `Or` of n-ary
    /// `And` of comparisons), so each nesting level costs few stack frames.
    fn parse_or(&mut self) -> Result<Expr, QueryError> {
        let mut ors = Vec::new();
        loop {
            let mut ands = Vec::new();
            loop {
                let left = self.parse_operand()?;
                let item = match Self::cmp_op(&self.peek().tok) {
                    None => left,
                    Some(op) => {
                        self.advance();
                        let right = self.parse_operand()?;
                        let t = self.peek();
                        if Self::cmp_op(&t.tok).is_some() {
                            return Err(chained_comparison(t.pos));
                        }
                        Expr::Cmp(op, Box::new(left), Box::new(right))
                    }
                };
                ands.push(item);
                if !matches!(self.peek().tok, Tok::And) {
                    break;
                }
                self.advance();
            }
            ors.push(collapse(ands, Expr::And));
            if !matches!(self.peek().tok, Tok::Or) {
                break;
            }
            self.advance();
        }
        Ok(collapse(ors, Expr::Or))
    }

    fn cmp_op(tok: &Tok) -> Option<CmpOp> {
        Some(match tok {
            Tok::EqEq => CmpOp::Eq,
            Tok::NotEq => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Contains => CmpOp::Contains,
            Tok::In => CmpOp::In,
            _ => return None,
        })
    }

    /// `unary`: any number of `!`/`not` (counted iteratively, each one a
    /// nesting level) followed by a primary.
    fn parse_operand(&mut self) -> Result<Expr, QueryError> {
        let mut nots = 0usize;
        while matches!(self.peek().tok, Tok::Not) {
            let t = self.advance();
            self.enter(t.pos)?;
            nots += 1;
        }
        let result = self.parse_primary();
        for _ in 0..nots {
            self.leave();
        }
        let mut expr = result?;
        for _ in 0..nots {
            expr = Expr::Not(Box::new(expr));
        }
        Ok(expr)
    }

    fn parse_primary(&mut self) -> Result<Expr, QueryError> {
        let t = self.advance();
        match &t.tok {
            Tok::Number(n) => Ok(Expr::Literal(Value::Number(n.clone()))),
            Tok::Str(s) => Ok(Expr::Literal(Value::String(s.clone()))),
            Tok::True => Ok(Expr::Literal(Value::Bool(true))),
            Tok::False => Ok(Expr::Literal(Value::Bool(false))),
            Tok::Null => Ok(Expr::Literal(Value::Null)),
            Tok::Param(name) => Ok(Expr::Param(name.clone())),
            Tok::Path(p) => Ok(Expr::Path(p.clone())),
            Tok::LBracket => self.parse_array(t.pos),
            Tok::Exists => self.parse_exists(),
            Tok::LParen => {
                self.enter(t.pos)?;
                let inner = self.parse_or();
                self.leave();
                let inner = inner?;
                let close = self.advance();
                if !matches!(close.tok, Tok::RParen) {
                    return Err(unclosed_paren(t.pos, close));
                }
                Ok(inner)
            }
            _ => Err(expected_operand(t)),
        }
    }

    /// Parses `(path)` after `exists`.
    #[inline(never)]
    fn parse_exists(&mut self) -> Result<Expr, QueryError> {
        let open = self.advance();
        if !matches!(open.tok, Tok::LParen) {
            return Err(QueryError::syntax(open.pos, "expected '(' after `exists`, as in exists(a.b)"));
        }
        let arg = self.advance();
        let Tok::Path(path) = &arg.tok else {
            return Err(QueryError::syntax(
                arg.pos,
                format!("`exists` takes a field path, found {}", arg.tok.describe()),
            ));
        };
        let close = self.advance();
        if !matches!(close.tok, Tok::RParen) {
            return Err(QueryError::syntax(
                close.pos,
                format!("expected ')' to close `exists(`, found {}", close.tok.describe()),
            ));
        }
        Ok(Expr::Exists(path.clone()))
    }

    /// Parses the rest of an array literal whose `[` is at `open`.
    #[inline(never)]
    fn parse_array(&mut self, open: usize) -> Result<Expr, QueryError> {
        self.enter(open)?;
        let result = self.parse_array_items(open);
        self.leave();
        result
    }

    fn parse_array_items(&mut self, open: usize) -> Result<Expr, QueryError> {
        let mut items: Vec<Expr> = Vec::new();
        if matches!(self.peek().tok, Tok::RBracket) {
            self.advance();
            return Ok(Expr::Literal(Value::Array(Vec::new())));
        }
        loop {
            let t = self.advance();
            if items.len() >= MAX_ARRAY_LITERAL_LEN {
                return Err(QueryError::TooManyElements { position: t.pos, limit: MAX_ARRAY_LITERAL_LEN });
            }
            let item = match &t.tok {
                Tok::Number(n) => Expr::Literal(Value::Number(n.clone())),
                Tok::Str(s) => Expr::Literal(Value::String(s.clone())),
                Tok::True => Expr::Literal(Value::Bool(true)),
                Tok::False => Expr::Literal(Value::Bool(false)),
                Tok::Null => Expr::Literal(Value::Null),
                Tok::Param(name) => Expr::Param(name.clone()),
                Tok::LBracket => self.parse_array(t.pos)?,
                Tok::Path(_) => {
                    return Err(QueryError::syntax(
                        t.pos,
                        "array literal elements must be literals or $parameters, not fields",
                    ))
                }
                Tok::RBracket => return Err(QueryError::syntax(t.pos, "expected a value after ','")),
                Tok::Eof => return Err(QueryError::syntax(open, "unterminated array literal: missing ']'")),
                other => {
                    return Err(QueryError::syntax(t.pos, format!("unexpected {} in array literal", other.describe())))
                }
            };
            items.push(item);
            let sep = self.advance();
            match sep.tok {
                Tok::Comma => continue,
                Tok::RBracket => break,
                Tok::Eof => return Err(QueryError::syntax(open, "unterminated array literal: missing ']'")),
                _ => {
                    return Err(QueryError::syntax(
                        sep.pos,
                        format!("expected ',' or ']' in array literal, found {}", sep.tok.describe()),
                    ))
                }
            }
        }
        // Fold constant arrays into a single literal value.
        if items.iter().all(|e| matches!(e, Expr::Literal(_))) {
            let values = items
                .into_iter()
                .filter_map(|e| match e {
                    Expr::Literal(v) => Some(v),
                    _ => None,
                })
                .collect();
            Ok(Expr::Literal(Value::Array(values)))
        } else {
            Ok(Expr::Array(items))
        }
    }
}

/// Wraps several operands in `make`, or returns the only one.
fn collapse(mut items: Vec<Expr>, make: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1 {
        items.swap_remove(0)
    } else {
        make(items)
    }
}

#[cold]
#[inline(never)]
fn chained_comparison(pos: usize) -> QueryError {
    QueryError::syntax(pos, "comparisons cannot be chained; use parentheses, e.g. (a == b) == c")
}

#[cold]
#[inline(never)]
fn unclosed_paren(open: usize, found: &Token) -> QueryError {
    QueryError::syntax(
        found.pos,
        format!("expected ')' to close the '(' at byte {open}, found {}", found.tok.describe()),
    )
}

#[cold]
#[inline(never)]
fn expected_operand(found: &Token) -> QueryError {
    let message = match found.tok {
        Tok::Eof => "unexpected end of query: expected a value, field or '('".to_string(),
        ref other => format!("unexpected {}: expected a value, field or '('", other.describe()),
    };
    QueryError::syntax(found.pos, message)
}
