//! The error type of the vector fields.

/// What can go wrong when building or calling a vector field.
///
/// Every hot call checks its buffer lengths up front (a few comparisons) and returns one of
/// these instead of panicking; nothing is written to the outputs when a check fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The state buffer's length is not a multiple of the field's dimension `d`
    /// (a batch is `B × d`, sample-major).
    #[error("state buffer of length {len} is not a whole batch of {dim}-dimensional states")]
    BatchShape {
        /// Length of the state buffer passed.
        len: usize,
        /// The field's dimension d.
        dim: usize,
    },
    /// A buffer's length does not match the batch (`B × d` for states and their
    /// cotangents/tangents, `B` for per-sample scalars, `n_params` for θ).
    #[error("buffer `{buffer}` has length {found}, expected {expected}")]
    BufferLength {
        /// The argument's name (`"f"`, `"q"`, `"eps"`, `"theta_cot"`, …).
        buffer: &'static str,
        /// The length the call needs.
        expected: usize,
        /// The length passed.
        found: usize,
    },
    /// A configuration value is out of its valid range (zero dimension, zero width, zero
    /// chunk size, …).
    #[error("invalid configuration: `{field}` = {value} (must be at least {min})")]
    InvalidConfig {
        /// The configuration field's name.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The smallest valid value.
        min: usize,
    },
    /// A configuration value is above its valid range: a chunk size beyond
    /// [`MAX_CHUNK_SIZE`](super::MAX_CHUNK_SIZE), or widths whose parameter vector cannot be
    /// held (its count overflows, or its bytes cannot be allocated).
    #[error("invalid configuration: `{field}` {reason}")]
    TooLarge {
        /// The configuration field's name.
        field: &'static str,
        /// What is too large about it.
        reason: String,
    },
    /// A workspace made by a field of another architecture (widths or chunk size) was passed;
    /// make one with that field's `workspace`.
    #[error("workspace was made for a field of another architecture")]
    WorkspaceMismatch,
    /// The field does not implement the requested derivative (e.g. the default
    /// [`VectorField::vjp_aug_jac`](super::VectorField::vjp_aug_jac) of a field that cannot
    /// differentiate `‖J V‖²`).
    #[error("this field does not implement `{op}`")]
    Unsupported {
        /// The method called.
        op: &'static str,
    },
    /// A parameter vector of the wrong length was given to a constructor.
    #[error("parameter vector has length {found}, the architecture needs {expected}")]
    ParamLength {
        /// `n_params` of the architecture.
        expected: usize,
        /// The length given.
        found: usize,
    },
}

/// Checks `buf.len() == expected`.
#[inline]
pub(crate) fn check_len<T>(
    buffer: &'static str,
    buf: &[T],
    expected: usize,
) -> Result<(), FieldError> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(FieldError::BufferLength { buffer, expected, found: buf.len() })
    }
}

/// Returns the batch size B of a `B × dim` state buffer.
#[inline]
pub(crate) fn batch_of(len: usize, dim: usize) -> Result<usize, FieldError> {
    if dim == 0 || !len.is_multiple_of(dim) {
        Err(FieldError::BatchShape { len, dim })
    } else {
        Ok(len / dim)
    }
}
