//! The conditioner network of coupling and autoregressive layers: a batched tanh MLP with
//! optional MADE masks (Germain et al. 2015).
//!
//! Internal to the flows: the layers that own a conditioner size its buffers and check
//! every length at their [`super::Flow`] entry points, so its hot methods take them as
//! given (checked by debug assertions only).

use rand::{Rng, RngCore};

use super::{c, FlowWs};
use crate::field::checked_net_params;
use crate::{Error, Real};

/// A batched multilayer perceptron `n_in → h_1 → … → n_out` with tanh hidden units and a
/// linear output,
///
/// ```text
/// a_0 = u,   a_l = tanh(a_{l−1} (W_l ⊙ M_l)ᵀ + b_l)  (l < L),   y = a_{L−1} (W_L ⊙ M_L)ᵀ + b_L,
/// ```
///
/// with optional binary masks `M_l` (all ones for a plain MLP). θ holds, layer after layer,
/// `W_l` (`[out, in]`, row-major, as PyTorch's `nn.Linear`) then `b_l`. Masked entries are
/// ignored by the forward pass and receive zero gradient.
///
/// [`MaskedMlp::made`] builds MADE's masks: input `j` has degree `j + 1`, hidden unit `k`
/// degree `m(k) = 1 + (k mod max(d − 1, 1))`, a hidden connection exists iff
/// `m(k) ≥ m(j)`, and output `o` (parameter kind `o / d` of coordinate `i = o mod d`,
/// degree `i + 1`) sees unit `j` iff `i + 1 > m(j)`; so output `i` depends on `u_{<i}` only.
///
/// This is not [`crate::field::Mlp`]: that is a vector field `ℝᵈ → ℝᵈ`, while a conditioner
/// maps `m` inputs to `k·(d − m)` outputs and MADE needs masked weights.
#[derive(Debug, Clone)]
pub(crate) struct MaskedMlp {
    sizes: Vec<usize>,
    masks: Option<Vec<Vec<bool>>>,
    w_off: Vec<usize>,
    n_params: usize,
}

impl MaskedMlp {
    /// A plain MLP with layer widths `sizes = [n_in, h_1, …, n_out]`. Errors
    /// ([`Error::InvalidConfig`]): fewer than two widths, a zero width, or a parameter
    /// count that overflows.
    pub(crate) fn dense(sizes: &[usize]) -> Result<Self, Error> {
        Self::build(sizes.to_vec(), None)
    }

    /// MADE for `d` inputs with hidden widths `hidden`, producing `kinds` outputs per
    /// coordinate laid out `[kind·d + i]`; output `i` of every kind depends on `u_{<i}` only.
    /// Errors as [`MaskedMlp::dense`], and masks too large to allocate.
    pub(crate) fn made(d: usize, hidden: &[usize], kinds: usize) -> Result<Self, Error> {
        let n_out = kinds.checked_mul(d).ok_or(Error::InvalidConfig {
            name: "conditioner outputs",
            value: f64::INFINITY,
            expected: "a count that fits in usize",
        })?;
        let mut sizes = vec![d];
        sizes.extend_from_slice(hidden);
        sizes.push(n_out);
        Self::check_sizes(&sizes)?;
        let mut deg_prev: Vec<usize> = (1..=d).collect();
        let mut masks = Vec::new();
        for &h in hidden {
            let deg: Vec<usize> = (0..h).map(|k| 1 + k % (d.max(2) - 1)).collect();
            let mut m = mask(h * deg_prev.len())?;
            for k in 0..h {
                for j in 0..deg_prev.len() {
                    m[k * deg_prev.len() + j] = deg[k] >= deg_prev[j];
                }
            }
            masks.push(m);
            deg_prev = deg;
        }
        let mut m = mask(n_out * deg_prev.len())?;
        for o in 0..n_out {
            let deg = o % d + 1;
            for j in 0..deg_prev.len() {
                m[o * deg_prev.len() + j] = deg > deg_prev[j];
            }
        }
        masks.push(m);
        Self::build(sizes, Some(masks))
    }

    /// At least two widths, none zero, and a parameter count (so every offset and weight
    /// block) that fits in usize; returns the count.
    fn check_sizes(sizes: &[usize]) -> Result<usize, Error> {
        let bad = |value: f64, expected| Error::InvalidConfig {
            name: "conditioner widths",
            value,
            expected,
        };
        let [first, hidden @ .., last] = sizes else {
            return Err(bad(sizes.len() as f64, "at least two widths (inputs and outputs)"));
        };
        if sizes.contains(&0) {
            return Err(bad(0.0, "every width ≥ 1"));
        }
        checked_net_params(*first, hidden, *last, 1)
            .ok_or(bad(f64::INFINITY, "a parameter count that fits in usize"))
    }

    fn build(sizes: Vec<usize>, masks: Option<Vec<Vec<bool>>>) -> Result<Self, Error> {
        Self::check_sizes(&sizes)?;
        let mut w_off = Vec::new();
        let mut off = 0;
        for l in 0..sizes.len() - 1 {
            w_off.push(off);
            off += sizes[l] * sizes[l + 1] + sizes[l + 1];
        }
        Ok(MaskedMlp { sizes, masks, w_off, n_params: off })
    }

    /// The number of parameters.
    pub(crate) fn n_params(&self) -> usize {
        self.n_params
    }

    /// Output width.
    pub(crate) fn n_out(&self) -> usize {
        self.sizes[self.sizes.len() - 1]
    }

    fn n_layers(&self) -> usize {
        self.sizes.len() - 1
    }

    fn max_width(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }

    fn n_hidden_total(&self) -> usize {
        self.sizes[1..self.sizes.len() - 1].iter().sum()
    }

    /// PyTorch's `nn.Linear` initialisation `U(−1/√in, 1/√in)` for weights and biases;
    /// with `zero_last` the output layer is zero (the flow layer starts as the identity).
    pub(crate) fn init<T: Real>(&self, theta: &mut [T], rng: &mut dyn RngCore, zero_last: bool) {
        debug_assert_eq!(theta.len(), self.n_params);
        for l in 0..self.n_layers() {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let bound = 1.0 / (i.max(1) as f64).sqrt();
            let last = l + 1 == self.n_layers();
            for p in &mut theta[self.w_off[l]..self.w_off[l] + i * o + o] {
                *p = if last && zero_last {
                    T::zero()
                } else {
                    c(bound * (2.0 * rng.random::<f64>() - 1.0))
                };
            }
            if let Some(m) = &self.masks {
                for (p, &k) in theta[self.w_off[l]..self.w_off[l] + i * o].iter_mut().zip(&m[l]) {
                    if !k {
                        *p = T::zero();
                    }
                }
            }
        }
    }

    /// Scratch length for a batch of `b` (masked weights, activations, two gradient
    /// buffers, one weight-gradient block).
    fn ws_len(&self, b: usize) -> usize {
        let n_w: usize = (0..self.n_layers()).map(|l| self.sizes[l] * self.sizes[l + 1]).sum();
        let masked = if self.masks.is_some() { n_w } else { 0 };
        let max_w = (0..self.n_layers()).map(|l| self.sizes[l] * self.sizes[l + 1]).max();
        masked + b * self.n_hidden_total() + 2 * b * self.max_width() + max_w.unwrap_or(0)
    }

    /// `y = net(u)` for a batch of `b` inputs (`u`: `b × n_in`, `y`: `b × n_out`). Keeps
    /// the activations in `ws` for a following [`MaskedMlp::backward`].
    pub(crate) fn forward<T: Real>(
        &self,
        theta: &[T],
        u: &[T],
        b: usize,
        y: &mut [T],
        ws: &mut FlowWs<T>,
    ) {
        debug_assert_eq!(theta.len(), self.n_params);
        debug_assert!(u.len() >= b * self.sizes[0] && y.len() == b * self.n_out());
        let buf = ws.take(self.ws_len(b));
        let n_w: usize = if let Some(masks) = &self.masks {
            let mut off = 0;
            for l in 0..self.n_layers() {
                let nw = self.sizes[l] * self.sizes[l + 1];
                let w = &theta[self.w_off[l]..self.w_off[l] + nw];
                for k in 0..nw {
                    buf[off + k] = if masks[l][k] { w[k] } else { T::zero() };
                }
                off += nw;
            }
            off
        } else {
            0
        };
        let (mw, rest) = buf.split_at_mut(n_w);
        let acts = &mut rest[..b * self.n_hidden_total()];
        let mut a_off = 0;
        let mut mw_off = 0;
        for l in 0..self.n_layers() {
            let (ni, no) = (self.sizes[l], self.sizes[l + 1]);
            let w: &[T] = if self.masks.is_some() {
                &mw[mw_off..mw_off + ni * no]
            } else {
                &theta[self.w_off[l]..self.w_off[l] + ni * no]
            };
            mw_off += ni * no;
            let bias = &theta[self.w_off[l] + ni * no..self.w_off[l] + ni * no + no];
            let last = l + 1 == self.n_layers();
            let (prev, cur): (&[T], &mut [T]) = if l == 0 {
                if last {
                    (u, &mut *y)
                } else {
                    (u, &mut acts[..b * no])
                }
            } else {
                let (p, c) = acts.split_at_mut(a_off);
                let prev = &p[a_off - b * ni..];
                if last {
                    (prev, &mut *y)
                } else {
                    (prev, &mut c[..b * no])
                }
            };
            T::gemm(b, ni, no, T::one(), prev, (ni, 1), w, (1, ni), T::zero(), cur, (no, 1));
            for r in 0..b {
                for k in 0..no {
                    let v = cur[r * no + k] + bias[k];
                    cur[r * no + k] = if last { v } else { v.tanh() };
                }
            }
            if !last {
                a_off += b * no;
            }
        }
    }

    /// Reverse mode after [`MaskedMlp::forward`] on the same `u`, `b` and `ws`: for the
    /// output cotangent `g_y` (`b × n_out`) adds `∂(g_y·y)/∂θ` to `theta_cot` (if given) and, if
    /// given, writes `∂(g_y·y)/∂u` into `g_u`.
    pub(crate) fn backward<T: Real>(
        &self,
        theta: &[T],
        u: &[T],
        b: usize,
        g_y: &[T],
        g_u: Option<&mut [T]>,
        mut theta_cot: Option<&mut [T]>,
        ws: &mut FlowWs<T>,
    ) {
        debug_assert_eq!(theta.len(), self.n_params);
        debug_assert!(g_y.len() >= b * self.n_out());
        let buf = ws.take(self.ws_len(b));
        let n_w: usize = if self.masks.is_some() {
            (0..self.n_layers()).map(|l| self.sizes[l] * self.sizes[l + 1]).sum()
        } else {
            0
        };
        let (mw, rest) = buf.split_at_mut(n_w);
        let (acts, rest) = rest.split_at_mut(b * self.n_hidden_total());
        let mw_width = b * self.max_width();
        let (g1, rest) = rest.split_at_mut(mw_width);
        let (g2, gw) = rest.split_at_mut(mw_width);
        let nl = self.n_layers();
        // Offsets of each layer's masked weights and of each hidden activation block.
        let mut g_out_is_y = true;
        let mut a_end = acts.len();
        let mut mw_end = n_w;
        let mut g_u = g_u;
        for l in (0..nl).rev() {
            let (ni, no) = (self.sizes[l], self.sizes[l + 1]);
            mw_end -= if self.masks.is_some() { ni * no } else { 0 };
            let w: &[T] = if self.masks.is_some() {
                &mw[mw_end..mw_end + ni * no]
            } else {
                &theta[self.w_off[l]..self.w_off[l] + ni * no]
            };
            let gp: &[T] = if g_out_is_y { g_y } else { &g1[..b * no] };
            let input: &[T] = if l == 0 { u } else { &acts[a_end - b * ni..a_end] };
            // ∂θ: gW = gpᵀ a_{l−1}; gb = Σ_rows gp.
            if let Some(theta_cot) = theta_cot.as_deref_mut() {
                let gw_blk = &mut gw[..ni * no];
                T::gemm(
                    no,
                    b,
                    ni,
                    T::one(),
                    gp,
                    (1, no),
                    input,
                    (ni, 1),
                    T::zero(),
                    gw_blk,
                    (ni, 1),
                );
                let tw = &mut theta_cot[self.w_off[l]..self.w_off[l] + ni * no + no];
                match &self.masks {
                    Some(m) => {
                        for k in 0..ni * no {
                            if m[l][k] {
                                tw[k] += gw_blk[k];
                            }
                        }
                    }
                    None => {
                        for k in 0..ni * no {
                            tw[k] += gw_blk[k];
                        }
                    }
                }
                for r in 0..b {
                    for k in 0..no {
                        tw[ni * no + k] += gp[r * no + k];
                    }
                }
            }
            if l == 0 && g_u.is_none() {
                break;
            }
            // g_in = gp W  (b × ni).
            let gin = &mut g2[..b * ni];
            T::gemm(b, no, ni, T::one(), gp, (no, 1), w, (ni, 1), T::zero(), gin, (ni, 1));
            if l == 0 {
                if let Some(gu) = g_u.take() {
                    gu[..b * ni].copy_from_slice(gin);
                }
                break;
            }
            // Through tanh: g_pre = g_in ⊙ (1 − a²).
            for k in 0..b * ni {
                let a = input[k];
                gin[k] *= T::one() - a * a;
            }
            g1[..b * ni].copy_from_slice(gin);
            g_out_is_y = false;
            a_end -= b * ni;
        }
    }
}

/// A mask of `n` entries, all `false`, allocated fallibly (a MADE mask is as large as its
/// weight block).
fn mask(n: usize) -> Result<Vec<bool>, Error> {
    let mut m = Vec::new();
    m.try_reserve_exact(n).map_err(|_| Error::InvalidConfig {
        name: "conditioner widths",
        value: n as f64,
        expected: "MADE masks that fit in memory",
    })?;
    m.resize(n, false);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_checked_at_construction() {
        for sizes in [&[][..], &[3], &[2, 0, 2], &[0, 4], &[2, 4, 0]] {
            let err = MaskedMlp::dense(sizes).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { name: "conditioner widths", .. }),
                "{sizes:?}: {err}"
            );
        }
        // Widths whose weight blocks overflow usize.
        assert!(MaskedMlp::dense(&[1 << 40, 1 << 40, 2]).is_err());
        assert!(MaskedMlp::made(3, &[0], 2).is_err());
        assert!(MaskedMlp::made(2, &[4], usize::MAX).is_err());
        let net = MaskedMlp::dense(&[2, 3, 4]).unwrap();
        assert_eq!((net.n_params(), net.n_out()), (2 * 3 + 3 + 3 * 4 + 4, 4));
        assert_eq!(MaskedMlp::made(3, &[5], 2).unwrap().n_params(), 3 * 5 + 5 + 5 * 6 + 6);
    }
}
