//! Coupling layers (survey §3.4): NICE's additive and RealNVP's affine coupling with MLP
//! conditioners.

use rand::RngCore;

use super::net::MaskedMlp;
use super::spline::{eval_raw, inverse_raw, vjp_raw, RqShape};
use super::{c, check_map, check_vjp, Flow, FlowWs};
use crate::{Error, Real};

/// The elementwise map applied to the transformed half.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CouplingKind {
    /// NICE (Dinh et al. 2014): `x_B = z_B + t(z_A)`, log-det 0.
    Additive,
    /// RealNVP (Dinh et al. 2016): `x_B = z_B ⊙ e^{s} + t`, with the bounded scale
    /// `s = a·tanh(ŝ/a)` of the network output ŝ (`a = scale_bound > 0`), so
    /// `|s| < a` and the layer cannot blow up early in training.
    Affine {
        /// The bound a of |s|.
        scale_bound: f64,
    },
    /// Neural spline coupling (Durkan et al. 2019): `z_B = RQ(x_B; h(x_A))`, a monotone
    /// rational-quadratic spline per transformed coordinate ([`RqShape`]), identity outside
    /// `[−B, B]`; the density direction is the closed-form spline, sampling solves a
    /// quadratic per coordinate. log-det `Σ_{i∈B} log RQ_i'`.
    RationalQuadratic(RqShape),
}

/// A coupling layer (survey §3.4): split the coordinates into a conditioning set A and a
/// transformed set B,
///
/// ```text
/// x_A = z_A,   x_B = f(z_B; h(z_A)),   log|det ∂x/∂z| = Σ_{i∈B} log ∂f_i/∂z_i,
/// ```
///
/// where `h` is a tanh MLP `|A| → k·|B|` (θ: its weight matrices `[out, in]` and biases,
/// layer after layer, as PyTorch's `nn.Linear`) and `f` is given by
/// [`CouplingKind`] (additive: log-det 0; affine: `Σ_{i∈B} s_i`). The inverse is one pass:
/// `z_A = x_A`, `z_B = (x_B − t) ⊙ e^{−s}`. A is the first `⌊d/2⌋` coordinates, or the
/// last `⌈d/2⌉` when `flip`; alternate `flip` (or put a [`super::Permutation`] between
/// layers) so every coordinate gets transformed.
#[derive(Debug, Clone)]
pub struct Coupling {
    dim: usize,
    cond: Vec<usize>,
    trans: Vec<usize>,
    kind: CouplingKind,
    net: MaskedMlp,
}

impl Coupling {
    /// A coupling layer of dimension `dim ≥ 2` with conditioner hidden widths `hidden`.
    /// Errors ([`Error::InvalidConfig`]): `dim < 2`, a bad scale bound or spline shape, a
    /// zero hidden width, or a conditioner whose parameter count overflows.
    pub fn new(
        dim: usize,
        kind: CouplingKind,
        hidden: &[usize],
        flip: bool,
    ) -> Result<Self, Error> {
        if dim < 2 {
            return Err(Error::InvalidConfig {
                name: "coupling dim",
                value: dim as f64,
                expected: "≥ 2",
            });
        }
        if let CouplingKind::Affine { scale_bound } = kind {
            if !(scale_bound.is_finite() && scale_bound > 0.0) {
                return Err(Error::InvalidConfig {
                    name: "scale_bound",
                    value: scale_bound,
                    expected: "finite and > 0",
                });
            }
        }
        let m = dim / 2;
        let (cond, trans): (Vec<usize>, Vec<usize>) = if flip {
            ((dim - m..dim).collect(), (0..dim - m).collect())
        } else {
            ((0..m).collect(), (m..dim).collect())
        };
        if let CouplingKind::RationalQuadratic(shape) = kind {
            shape.validate()?;
        }
        let k = match kind {
            CouplingKind::Additive => 1,
            CouplingKind::Affine { .. } => 2,
            CouplingKind::RationalQuadratic(shape) => shape.n_params(),
        };
        let mut sizes = vec![cond.len()];
        sizes.extend_from_slice(hidden);
        sizes.push(k * trans.len());
        Ok(Coupling { dim, cond, trans, kind, net: MaskedMlp::dense(&sizes)? })
    }

    /// The conditioning coordinates A.
    pub fn conditioning(&self) -> &[usize] {
        &self.cond
    }

    /// The transformed coordinates B.
    pub fn transformed(&self) -> &[usize] {
        &self.trans
    }

    /// Runs the conditioner on `input`'s A-coordinates (which are the same in z and x).
    /// ws layout: `[u (b·|A|), out (b·k|B|), g_out (b·k|B|), g_u (b·|A|)]`, the net's
    /// scratch in child 0.
    fn condition<T: Real>(&self, theta: &[T], input: &[T], b: usize, ws: &mut FlowWs<T>) {
        let (na, no) = (self.cond.len(), self.net.n_out());
        let (buf, sub) = ws.split(2 * b * (na + no), 0);
        let (u, rest) = buf.split_at_mut(b * na);
        for r in 0..b {
            for (j, &a) in self.cond.iter().enumerate() {
                u[r * na + j] = input[r * self.dim + a];
            }
        }
        self.net.forward(theta, u, b, &mut rest[..b * no], sub);
    }

    /// (s, t) of transformed coordinate j of sample r from the conditioner output.
    #[inline]
    fn st<T: Real>(&self, out: &[T], r: usize, j: usize) -> (T, T) {
        let nb = self.trans.len();
        match self.kind {
            CouplingKind::Additive => (T::zero(), out[r * nb + j]),
            CouplingKind::Affine { scale_bound } => {
                let a: T = c(scale_bound);
                let raw = out[r * 2 * nb + j];
                (a * (raw / a).tanh(), out[r * 2 * nb + nb + j])
            }
            CouplingKind::RationalQuadratic(_) => (T::zero(), T::zero()),
        }
    }

    fn run<T: Real>(
        &self,
        theta: &[T],
        input: &[T],
        output: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
        inverse: bool,
    ) -> Result<(), Error> {
        let d = self.dim;
        let b = check_map(d, self.net.n_params(), theta, input, output.len(), ld.len())?;
        self.condition(theta, input, b, ws);
        let (na, no) = (self.cond.len(), self.net.n_out());
        let out = &ws.buf[b * na..b * (na + no)];
        output.copy_from_slice(input);
        if let CouplingKind::RationalQuadratic(shape) = self.kind {
            let np = shape.n_params();
            for r in 0..b {
                let mut sum = T::zero();
                for (j, &i) in self.trans.iter().enumerate() {
                    let raw = &out[r * no + j * np..r * no + (j + 1) * np];
                    let v = input[r * d + i];
                    let (y, l) =
                        if inverse { eval_raw(shape, raw, v) } else { inverse_raw(shape, raw, v) };
                    output[r * d + i] = y;
                    sum += l;
                }
                ld[r] = sum;
            }
            return Ok(());
        }
        for r in 0..b {
            let mut sum = T::zero();
            for (j, &i) in self.trans.iter().enumerate() {
                let (s, t) = self.st(out, r, j);
                let v = input[r * d + i];
                output[r * d + i] = if inverse { (v - t) * (-s).exp() } else { v * s.exp() + t };
                sum += s;
            }
            ld[r] = if inverse { -sum } else { sum };
        }
        Ok(())
    }
}

impl<T: Real> Flow<T> for Coupling {
    fn name(&self) -> &'static str {
        match self.kind {
            CouplingKind::Additive => "additive-coupling",
            CouplingKind::Affine { .. } => "affine-coupling",
            CouplingKind::RationalQuadratic(_) => "spline-coupling",
        }
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.net.n_params()
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        self.net.init(theta, rng, true);
        Ok(())
    }
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        self.run(theta, z, x, ld, ws, false)
    }
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        self.run(theta, x, z, ld, ws, true)
    }
    fn inverse_vjp(
        &self,
        theta: &[T],
        x: &[T],
        z_cot: &[T],
        ld_cot: &[T],
        x_cot: &mut [T],
        theta_cot: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let d = self.dim;
        let b = check_vjp(d, self.net.n_params(), theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        self.condition(theta, x, b, ws);
        let (na, nb, no) = (self.cond.len(), self.trans.len(), self.net.n_out());
        let (buf, sub) = ws.split(2 * b * (na + no), 0);
        let (u, rest) = buf.split_at_mut(b * na);
        let (out, rest) = rest.split_at_mut(b * no);
        let (g_out, gu) = rest.split_at_mut(b * no);
        x_cot.copy_from_slice(z_cot);
        if let CouplingKind::RationalQuadratic(shape) = self.kind {
            let np = shape.n_params();
            g_out.iter_mut().for_each(|v| *v = T::zero());
            for r in 0..b {
                for (j, &i) in self.trans.iter().enumerate() {
                    let o = r * no + j * np..r * no + (j + 1) * np;
                    x_cot[r * d + i] = vjp_raw(
                        shape,
                        &out[o.clone()],
                        x[r * d + i],
                        z_cot[r * d + i],
                        ld_cot[r],
                        &mut g_out[o],
                    );
                }
            }
        }
        for r in 0..b {
            if let CouplingKind::RationalQuadratic(_) = self.kind {
                break;
            }
            for (j, &i) in self.trans.iter().enumerate() {
                let (s, t) = self.st(out, r, j);
                let e = (-s).exp();
                let g = z_cot[r * d + i];
                let z = (x[r * d + i] - t) * e;
                x_cot[r * d + i] = g * e;
                match self.kind {
                    CouplingKind::Additive => g_out[r * nb + j] = -g,
                    CouplingKind::RationalQuadratic(_) => {}
                    CouplingKind::Affine { scale_bound } => {
                        // Φ ∋ g·z + ℓ̄·(−s): ∂/∂s = −g z − ℓ̄; ∂s/∂ŝ = 1 − (s/a)²; ∂/∂t = −g e^{−s}.
                        let a: T = c(scale_bound);
                        let q = s / a;
                        g_out[r * 2 * nb + j] = (-g * z - ld_cot[r]) * (T::one() - q * q);
                        g_out[r * 2 * nb + nb + j] = -g * e;
                    }
                }
            }
        }
        self.net.backward(theta, u, b, g_out, Some(gu), Some(theta_cot), sub);
        for r in 0..b {
            for (j, &a) in self.cond.iter().enumerate() {
                x_cot[r * d + a] += gu[r * na + j];
            }
        }
        Ok(())
    }
}
