//! Errors produced while parsing or evaluating queries.

/// An error produced while parsing a filter or path, or while evaluating a filter.
///
/// Every parse error carries the byte offset (0-based, counted in UTF-8 bytes
/// from the start of the text that was parsed) of the problem; see
/// [`QueryError::position`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// The filter text is not valid query syntax.
    #[error("syntax error at byte {position}: {message}")]
    Syntax {
        /// Byte offset of the offending token or character.
        position: usize,
        /// Human-readable description of the problem.
        message: String,
    },

    /// The text is longer than the allowed maximum.
    #[error("text is too long: {length} bytes (limit {limit} bytes)")]
    TooLong {
        /// Length of the rejected text in bytes.
        length: usize,
        /// The maximum accepted length in bytes.
        limit: usize,
    },

    /// Parentheses, `!`/`not` operators or array literals are nested more
    /// deeply than allowed.
    #[error("expression nests too deeply at byte {position} (limit {limit} levels)")]
    TooDeep {
        /// Byte offset of the token that exceeded the limit.
        position: usize,
        /// The maximum nesting depth.
        limit: usize,
    },

    /// An array literal has more elements than allowed.
    #[error("array literal at byte {position} has too many elements (limit {limit})")]
    TooManyElements {
        /// Byte offset of the element that exceeded the limit.
        position: usize,
        /// The maximum number of elements in one array literal.
        limit: usize,
    },

    /// The filter uses a `$parameter` for which no value was supplied.
    #[error("no value supplied for parameter `${0}`")]
    UnknownParameter(String),

    /// A field path is malformed (empty segment, trailing dot, bad index, ...).
    #[error("invalid path at byte {position}: {message}")]
    InvalidPath {
        /// Byte offset of the problem within the parsed text.
        position: usize,
        /// Human-readable description of the problem.
        message: String,
    },
}

impl QueryError {
    /// The byte offset of the problem in the parsed text, if the error has one.
    ///
    /// For [`QueryError::TooLong`] this is the limit, i.e. the first byte that
    /// is past the allowed length. [`QueryError::UnknownParameter`] has no
    /// position because it is detected at evaluation time.
    pub fn position(&self) -> Option<usize> {
        match self {
            QueryError::Syntax { position, .. }
            | QueryError::TooDeep { position, .. }
            | QueryError::TooManyElements { position, .. }
            | QueryError::InvalidPath { position, .. } => Some(*position),
            QueryError::TooLong { limit, .. } => Some(*limit),
            QueryError::UnknownParameter(_) => None,
        }
    }

    pub(crate) fn syntax(position: usize, message: impl Into<String>) -> Self {
        QueryError::Syntax { position, message: message.into() }
    }
}

impl From<crate::crdt::path::PathError> for QueryError {
    fn from(e: crate::crdt::path::PathError) -> Self {
        QueryError::InvalidPath { position: e.position, message: e.message }
    }
}
