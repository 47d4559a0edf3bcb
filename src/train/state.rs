//! The training state and its file format (the one place it is serialised).
//!
//! A [`TrainState`] holds everything a run needs to continue exactly where it stopped: the
//! iteration count, the model's flat parameters, the positive-time parameters τ of the
//! blocks (T = τ²), Adam's moments and step count, and the position of the training random
//! generator (ChaCha8: its seed, stream and word position).
//!
//! File layout (little-endian), written atomically ([`crate::io::write_atomically`]):
//!
//! ```text
//! magic "ODEFLOW-TRAINSTATE\0\0" (20 bytes) | version u32 = 1 | scalar width u32 (4 or 8)
//! iteration u64 | adam_t u64 | rng seed [u8; 32] | rng stream u64 | rng word_pos u128
//! n_params u64 | params f64[n_params] | n_tau u64 | tau f64[n_tau]
//! n_moment u64 | m f64[n_moment] | v f64[n_moment]
//! checksum u64 (FNV-1a of every byte before it)
//! ```
//!
//! Values are stored as f64 whatever the scalar type (exact for f32), and the scalar width is
//! checked on load, so a state resumes bit for bit.

use std::io::Write;
use std::path::Path;

use rand_chacha::ChaCha8Rng;

use crate::error::Error;
use crate::field::Real;

const MAGIC: &[u8; 20] = b"ODEFLOW-TRAINSTATE\0\0";
const VERSION: u32 = 1;

/// Everything needed to resume a training run exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState<T> {
    /// Iterations completed.
    pub iteration: u64,
    /// The model's parameters, all blocks' θ laid end to end.
    pub params: Vec<T>,
    /// The time parameters τ_k of the blocks (T_k = τ_k²); empty when T is not trained.
    pub tau: Vec<T>,
    /// Adam's first moments (over `params` then `tau`).
    pub adam_m: Vec<T>,
    /// Adam's second moments.
    pub adam_v: Vec<T>,
    /// Adam's step count.
    pub adam_t: u64,
    /// The training random generator (batches, Hutchinson noise), at its current position.
    pub rng: ChaCha8Rng,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl<T: Real> TrainState<T> {
    /// The state as bytes (the file format in the [module docs](self)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            128 + 8 * (self.params.len() + self.tau.len() + 2 * self.adam_m.len()),
        );
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(std::mem::size_of::<T>() as u32).to_le_bytes());
        b.extend_from_slice(&self.iteration.to_le_bytes());
        b.extend_from_slice(&self.adam_t.to_le_bytes());
        b.extend_from_slice(&self.rng.get_seed());
        b.extend_from_slice(&self.rng.get_stream().to_le_bytes());
        b.extend_from_slice(&self.rng.get_word_pos().to_le_bytes());
        let mut vec = |v: &[T], with_len: bool| {
            if with_len {
                b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            }
            for x in v {
                b.extend_from_slice(&x.to_f64c().to_le_bytes());
            }
        };
        vec(&self.params, true);
        vec(&self.tau, true);
        vec(&self.adam_m, true);
        vec(&self.adam_v, false);
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses bytes written by [`TrainState::to_bytes`]; `path` only names the source in
    /// errors. A wrong magic, version or scalar width, a truncated body or a bad checksum is
    /// an [`Error::StateFile`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let err =
            |reason: &str| Error::StateFile { path: path.to_path_buf(), reason: reason.into() };
        if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(err("not an odeflow training state (bad magic)"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(sum.try_into().unwrap_or_default()) {
            return Err(err("checksum mismatch (truncated or corrupt)"));
        }
        let mut r = Reader { b: body, at: MAGIC.len() };
        let version = r.u32().ok_or_else(|| err("truncated header"))?;
        if version != VERSION {
            return Err(err(&format!("format version {version}, this build reads {VERSION}")));
        }
        let width = r.u32().ok_or_else(|| err("truncated header"))?;
        if width as usize != std::mem::size_of::<T>() {
            return Err(err(&format!(
                "saved with {}-byte scalars, resumed with {}-byte scalars",
                width,
                std::mem::size_of::<T>()
            )));
        }
        let trunc = || err("truncated body");
        let iteration = r.u64().ok_or_else(trunc)?;
        let adam_t = r.u64().ok_or_else(trunc)?;
        let seed: [u8; 32] = r.take(32).ok_or_else(trunc)?.try_into().map_err(|_| trunc())?;
        let stream = r.u64().ok_or_else(trunc)?;
        let word_pos =
            u128::from_le_bytes(r.take(16).ok_or_else(trunc)?.try_into().map_err(|_| trunc())?);
        let params = r.vec::<T>(None).ok_or_else(trunc)?;
        let tau = r.vec::<T>(None).ok_or_else(trunc)?;
        let adam_m = r.vec::<T>(None).ok_or_else(trunc)?;
        let adam_v = r.vec::<T>(Some(adam_m.len())).ok_or_else(trunc)?;
        if r.at != body.len() {
            return Err(err("trailing bytes"));
        }
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::from_seed(seed);
        rng.set_stream(stream);
        rng.set_word_pos(word_pos);
        Ok(TrainState { iteration, params, tau, adam_m, adam_v, adam_t, rng })
    }

    /// Writes the state to `path` atomically (a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let bytes = self.to_bytes();
        crate::io::write_atomically(path.as_ref(), |w| w.write_all(&bytes))?;
        Ok(())
    }

    /// Reads a state written by [`TrainState::save`].
    ///
    /// ```
    /// use odeflow::train::TrainState;
    /// use rand::{Rng, SeedableRng};
    ///
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    /// let _: u64 = rng.random(); // the generator has moved on
    /// let s = TrainState::<f32> {
    ///     iteration: 7, params: vec![0.1, -2.0], tau: vec![0.7], adam_m: vec![0.0; 3],
    ///     adam_v: vec![1e-9; 3], adam_t: 7, rng,
    /// };
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("train_state.bin");
    /// s.save(&path)?;
    /// let mut back = TrainState::<f32>::load(&path)?;
    /// assert_eq!(back, s);
    /// assert!(TrainState::<f64>::load(&path).is_err()); // saved as f32
    /// let (a, b): (u64, u64) = (back.rng.random(), s.rng.clone().random());
    /// assert_eq!(a, b);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::StateFile { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::from_bytes(&bytes, path)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn vec<T: Real>(&mut self, len: Option<usize>) -> Option<Vec<T>> {
        let n = match len {
            Some(n) => n,
            None => usize::try_from(self.u64()?).ok()?,
        };
        let raw = self.take(n.checked_mul(8)?)?;
        Some(
            raw.chunks_exact(8)
                .map(|c| T::from_f64c(f64::from_le_bytes(c.try_into().unwrap_or_default())))
                .collect(),
        )
    }
}
