//! The scalar type of every solve: `f32` or `f64`.

use std::fmt::{Debug, Display};

/// A real scalar that a solve can run in. Implemented for exactly `f32` and `f64`.
///
/// Coefficients (Butcher tableaux, controller constants) are stored as `f64` and converted
/// once with [`Real::from_f64c`].
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::NumAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// The type's name (`"f32"`, `"f64"`), for messages.
    const NAME: &'static str;
    /// Converts an `f64` constant to this type (rounding to nearest for `f32`).
    fn from_f64c(x: f64) -> Self;
    /// Converts to `f64` (exact for both implementations).
    fn to_f64c(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn from_f64c(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64c(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn from_f64c(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64c(self) -> f64 {
        self
    }
}
