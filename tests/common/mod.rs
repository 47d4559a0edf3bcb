//! Test-only references: a naive per-sample scalar MLP evaluated with `num-dual`'s forward-mode
//! dual and hyper-dual numbers (written from FFJORD's layer definitions, sharing no code with
//! `odeflow::field`), and central finite differences.
#![allow(dead_code)]

use num_dual::{Dual, DualNum, HyperDual};
use odeflow::field::{Activation, TimeConditioning};

/// The architecture the reference reads θ with.
#[derive(Debug, Clone)]
pub struct Arch {
    pub d: usize,
    pub hidden: Vec<usize>,
    pub act: Activation,
    pub time: TimeConditioning,
}

fn sigmoid<D: DualNum<Primitive = f64> + Copy>(x: D) -> D {
    D::from(1.0) / ((-x).exp() + D::from(1.0))
}

fn act<D: DualNum<Primitive = f64> + Copy>(a: Activation, x: D) -> D {
    match a {
        Activation::Tanh => x.tanh(),
        Activation::Softplus => (x.exp() + D::from(1.0)).ln(),
        Activation::Silu => x * sigmoid(x),
        Activation::Elu => {
            if x.re() > 0.0 {
                x
            } else {
                x.exp() - D::from(1.0)
            }
        }
        _ => unreachable!(),
    }
}

/// f(t, z; θ) for one sample, straightforwardly; also returns min |u| over hidden
/// pre-activations (to keep finite differences off ELU's kink).
pub fn naive_f<D: DualNum<Primitive = f64> + Copy>(
    arch: &Arch,
    th: &[D],
    t: D,
    z: &[D],
) -> (Vec<D>, f64) {
    let mut widths = vec![arch.d];
    widths.extend_from_slice(&arch.hidden);
    widths.push(arch.d);
    let n_layers = widths.len() - 1;
    let mut x: Vec<D> = z.to_vec();
    let mut off = 0;
    let mut min_u = f64::INFINITY;
    for l in 0..n_layers {
        let (n_in, n_out) = (widths[l], widths[l + 1]);
        let mut out = vec![D::from(0.0); n_out];
        match arch.time {
            TimeConditioning::Concat => {
                let w = &th[off..off + n_out * (n_in + 1)];
                off += n_out * (n_in + 1);
                let b = &th[off..off + n_out];
                off += n_out;
                for j in 0..n_out {
                    // torch.cat([t, x]) @ W.T + b
                    let mut s = b[j] + w[j * (n_in + 1)] * t;
                    for k in 0..n_in {
                        s += w[j * (n_in + 1) + 1 + k] * x[k];
                    }
                    out[j] = s;
                }
            }
            TimeConditioning::ConcatSquash => {
                let w = &th[off..off + n_out * n_in];
                off += n_out * n_in;
                let b = &th[off..off + n_out];
                off += n_out;
                let hb = &th[off..off + n_out];
                off += n_out;
                let hg = &th[off..off + n_out];
                off += n_out;
                let hgb = &th[off..off + n_out];
                off += n_out;
                for j in 0..n_out {
                    let mut s = b[j];
                    for k in 0..n_in {
                        s += w[j * n_in + k] * x[k];
                    }
                    out[j] = s * sigmoid(hg[j] * t + hgb[j]) + hb[j] * t;
                }
            }
            TimeConditioning::Ignore => {
                let w = &th[off..off + n_out * n_in];
                off += n_out * n_in;
                let b = &th[off..off + n_out];
                off += n_out;
                for j in 0..n_out {
                    let mut s = b[j];
                    for k in 0..n_in {
                        s += w[j * n_in + k] * x[k];
                    }
                    out[j] = s;
                }
            }
            _ => unreachable!(),
        }
        if l + 1 < n_layers {
            for u in &out {
                min_u = min_u.min(u.re().abs());
            }
            x = out.into_iter().map(|u| act(arch.act, u)).collect();
        } else {
            x = out;
        }
    }
    assert_eq!(off, th.len(), "reference consumed a different number of parameters");
    (x, min_u)
}

/// The variable a derivative is taken in.
#[derive(Debug, Clone, Copy)]
pub enum Var {
    Z(usize),
    T,
    Theta(usize),
}

fn lift<D: DualNum<Primitive = f64> + Copy>(x: &[f64]) -> Vec<D> {
    x.iter().map(|&v| D::from(v)).collect()
}

/// f and min |u| in plain f64.
pub fn ref_f(arch: &Arch, th: &[f64], t: f64, z: &[f64]) -> (Vec<f64>, f64) {
    naive_f::<f64>(arch, th, t, z)
}

/// (∂f/∂z) v by one dual evaluation.
pub fn ref_jvp(arch: &Arch, th: &[f64], t: f64, z: &[f64], v: &[f64]) -> Vec<f64> {
    let zd: Vec<Dual<f64>> = z.iter().zip(v).map(|(&x, &e)| Dual::new(x, e)).collect();
    let (f, _) = naive_f(arch, &lift(th), Dual::from(t), &zd);
    f.iter().map(|x| x.eps).collect()
}

/// ∂f/∂(var) by one dual evaluation.
pub fn ref_df(arch: &Arch, th: &[f64], t: f64, z: &[f64], var: Var) -> Vec<f64> {
    let mut thd: Vec<Dual<f64>> = lift(th);
    let mut zd: Vec<Dual<f64>> = lift(z);
    let mut td = Dual::from(t);
    match var {
        Var::Z(k) => zd[k].eps = 1.0,
        Var::T => td.eps = 1.0,
        Var::Theta(k) => thd[k].eps = 1.0,
    }
    let (f, _) = naive_f(arch, &thd, td, &zd);
    f.iter().map(|x| x.eps).collect()
}

/// (q, ∂q/∂var) with q = tr(∂f/∂z) (`eps = None`) or εᵀ(∂f/∂z)ε, by hyper-dual numbers:
/// eps1 carries the z-direction (e_i or ε), eps2 the variable.
pub fn ref_div_and_grad(
    arch: &Arch,
    th: &[f64],
    t: f64,
    z: &[f64],
    eps: Option<&[f64]>,
    var: Var,
) -> (f64, f64) {
    let d = arch.d;
    let run = |dir: &[f64]| -> Vec<HyperDual<f64>> {
        let mut thd: Vec<HyperDual<f64>> = lift(th);
        let mut zd: Vec<HyperDual<f64>> =
            z.iter().zip(dir).map(|(&x, &e)| HyperDual::new(x, e, 0.0, 0.0)).collect();
        let mut td = HyperDual::from(t);
        match var {
            Var::Z(k) => zd[k].eps2 = 1.0,
            Var::T => td.eps2 = 1.0,
            Var::Theta(k) => thd[k].eps2 = 1.0,
        }
        naive_f(arch, &thd, td, &zd).0
    };
    match eps {
        None => {
            let (mut q, mut dq) = (0.0, 0.0);
            for i in 0..d {
                let mut e = vec![0.0; d];
                e[i] = 1.0;
                let f = run(&e);
                q += f[i].eps1;
                dq += f[i].eps1eps2;
            }
            (q, dq)
        }
        Some(e) => {
            let f = run(e);
            let q = (0..d).map(|i| e[i] * f[i].eps1).sum();
            let dq = (0..d).map(|i| e[i] * f[i].eps1eps2).sum();
            (q, dq)
        }
    }
}

/// (‖J V‖², ∂‖J V‖²/∂var) with V = I (`eps = None`, the squared Frobenius norm, a sum over
/// the unit lanes e_i) or V = ε, by hyper-dual numbers: eps1 carries the lane, eps2 the
/// variable, so f_i's eps1 part is (J v)_i and its eps1eps2 part ∂(J v)_i/∂var, and
/// ∂‖J v‖²/∂var = 2 Σ_i (J v)_i ∂(J v)_i/∂var.
pub fn ref_jac_sq_and_grad(
    arch: &Arch,
    th: &[f64],
    t: f64,
    z: &[f64],
    eps: Option<&[f64]>,
    var: Var,
) -> (f64, f64) {
    let d = arch.d;
    let run = |dir: &[f64]| -> (f64, f64) {
        let mut thd: Vec<HyperDual<f64>> = lift(th);
        let mut zd: Vec<HyperDual<f64>> =
            z.iter().zip(dir).map(|(&x, &e)| HyperDual::new(x, e, 0.0, 0.0)).collect();
        let mut td = HyperDual::from(t);
        match var {
            Var::Z(k) => zd[k].eps2 = 1.0,
            Var::T => td.eps2 = 1.0,
            Var::Theta(k) => thd[k].eps2 = 1.0,
        }
        let f = naive_f(arch, &thd, td, &zd).0;
        let sq = f.iter().map(|x| x.eps1 * x.eps1).sum();
        let dsq = f.iter().map(|x| 2.0 * x.eps1 * x.eps1eps2).sum();
        (sq, dsq)
    };
    match eps {
        None => (0..d)
            .map(|i| {
                let mut e = vec![0.0; d];
                e[i] = 1.0;
                run(&e)
            })
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y)),
        Some(e) => run(e),
    }
}

/// Central difference of a scalar function of one variable.
pub fn central(h: f64, mut g: impl FnMut(f64) -> f64) -> f64 {
    (g(h) - g(-h)) / (2.0 * h)
}

/// A small deterministic generator for test data (SplitMix64), so helpers need no RNG crate.
pub struct Gen(pub u64);

impl Gen {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub const ACTIVATIONS: [Activation; 4] =
    [Activation::Tanh, Activation::Softplus, Activation::Silu, Activation::Elu];
pub const TIMES: [TimeConditioning; 3] =
    [TimeConditioning::Concat, TimeConditioning::ConcatSquash, TimeConditioning::Ignore];
