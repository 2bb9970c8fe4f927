//! The rule for a `hello` name or kind: one topic level (a name appears in `$SYS/nodes/<name>`
//! and in node topics such as `pin/<name>/state`), printable, short.

/// Longest node name or kind, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a `hello` name or kind: one topic level, printable, at most [`MAX_NAME_BYTES`].
///
/// # Errors
/// A [`NameError`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.starts_with('$') {
        return Err(NameError::Dollar);
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control() || c.is_whitespace())
    {
        return Err(NameError::Forbidden(c));
    }
    Ok(())
}

/// Why a `hello` name or kind is refused (see [`check_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The empty string.
    #[error("name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("name is {0} bytes long, the limit is {MAX_NAME_BYTES}")]
    TooLong(usize),
    /// Starting with `$`, which belongs to the broker.
    #[error("name may not start with '$'")]
    Dollar,
    /// Holding a character a topic level cannot (`/`, `+`, `#`, control, whitespace).
    #[error("name may not contain {0:?}")]
    Forbidden(char),
}
