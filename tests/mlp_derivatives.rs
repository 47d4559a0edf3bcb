//! Every derivative of the MLP field, for every activation × time conditioning, at random
//! points, times and weights (proptest), against two independent routes:
//!
//! 1. a naive per-sample scalar MLP under `num-dual` dual / hyper-dual numbers (exact up to
//!    rounding): tolerance `max_relative = 1e-9` with an absolute floor `1e-11`, since both
//!    sides are exact and differ only by summation order (reverse vs forward accumulation of
//!    O(1) terms, a few hundred flops each);
//! 2. central finite differences with step `h = 1e-5` of f (or of q computed by the field
//!    itself, for the second-order terms): tolerance `max_relative = 1e-6` with an absolute
//!    floor `1e-8`. The truncation error is `h²/6·|g‴| ≈ 2e-11` and the rounding error
//!    `ε_mach·|g|/h ≈ 2e-11` for O(1) quantities, so 1e-6 leaves a wide margin while still
//!    failing for any wrong term (a missing term is O(1e-2..1)); the floor is for components
//!    that are ~0 by cancellation, where a relative error is meaningless.
//!
//! Per quantity (B = 3 samples in two chunks of 2 and 1, d ∈ {1, 2, 3}, 0–3 hidden layers):
//!
//! | quantity | reference (1e-9) | finite differences (1e-6) |
//! |---|---|---|
//! | f | naive f64 MLP | — |
//! | JVP `Jv` | one dual pass, `ż = v` | `[f(z + hv) − f(z − hv)]/2h` |
//! | exact `tr J` | d dual passes, `ż = e_i` | `Σ_i [f_i(z + he_i) − f_i(z − he_i)]/2h` |
//! | Hutchinson `εᵀJε` | one dual pass, `ż = ε` | `εᵀ[f(z + hε) − f(z − hε)]/2h` |
//! | `‖J V‖²_F` (exact, Hutchinson) | from the dual passes above | — (built from the two rows above) |
//! | VJP in z, t, θ | `Σ_b a_bᵀ ∂f/∂x` by one dual pass per variable x | `∂/∂x Σ_b a_bᵀ f_b` |
//! | aug. VJP in z, t, θ (exact, Hutchinson) | + `c_b ∂q_b/∂x` by hyper-dual passes (ε₁ on the trace direction, ε₂ on x) | `∂/∂x Φ` with q from `eval_div` |
//!
//! The second-order rows difference `q`, itself a first derivative: its truncation error
//! `h²/6·|q‴|` is still ≈ 1e-10 for these O(1) nets, and its rounding error
//! `ε_mach·|q|/h` ≈ 1e-11, so the same 1e-6 bound applies with the same margin. f, q and the
//! outputs of every call are also required to be *bit-identical* across `eval`, `eval_div`,
//! `jvp`, `vjp` and `vjp_aug`.
//!
//! ELU's σ″ jumps at 0: a case whose hidden pre-activations come within 1e-3 of 0 skips the
//! finite-difference comparison for ELU (the hyper-dual reference still runs): with h = 1e-5
//! the differenced points then stay on one branch.

mod common;

use approx::relative_eq;
use common::*;
use odeflow::field::{AugmentedVjp, Divergence, JacobianTerm, Mlp, MlpConfig, VectorField};
use proptest::prelude::*;

const H: f64 = 1e-5;
const FD_REL: f64 = 1e-6;
const FD_ABS: f64 = 1e-8;
const REF_REL: f64 = 1e-9;
const REF_ABS: f64 = 1e-11;

#[track_caller]
fn check(what: &str, ctx: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what} [{ctx}]: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            relative_eq!(g, w, epsilon = abs, max_relative = rel),
            "{what}[{i}] [{ctx}]: got {g:e}, want {w:e} (rel err {:e})",
            (g - w).abs() / w.abs().max(1e-300)
        );
    }
}

struct Case {
    arch: Arch,
    mlp: Mlp<f64>,
    t: f64,
    z: Vec<f64>,
    v: Vec<f64>,
    eps: Vec<f64>,
    a: Vec<f64>,
    c: Vec<f64>,
    batch: usize,
    fd_ok: bool,
    ctx: String,
}

fn make_case(
    d: usize,
    hidden: &[usize],
    act: odeflow::field::Activation,
    time: odeflow::field::TimeConditioning,
    seed: u64,
    t: f64,
) -> Case {
    let batch = 3;
    let cfg = MlpConfig {
        dim: d,
        hidden: hidden.to_vec(),
        activation: act,
        time,
        seed,
        chunk_size: 2, // two chunks, the last one partial
        parallel: true,
    };
    let mlp = Mlp::<f64>::new(&cfg).unwrap();
    let mut g = Gen(seed ^ 0xA5A5);
    let z = g.vec(batch * d, -2.0, 2.0);
    let v = g.vec(batch * d, -1.0, 1.0);
    let eps = g.vec(batch * d, -1.5, 1.5);
    let a = g.vec(batch * d, -1.0, 1.0);
    let c = g.vec(batch, -1.0, 1.0);
    let arch = Arch { d, hidden: cfg.hidden.clone(), act, time };
    let min_u = (0..batch)
        .map(|b| ref_f(&arch, mlp.params(), t, &z[b * d..(b + 1) * d]).1)
        .fold(f64::INFINITY, f64::min);
    let fd_ok = act != odeflow::field::Activation::Elu || min_u > 1e-3;
    let ctx = format!("{act:?}/{time:?} d={d} hidden={hidden:?} seed={seed} t={t}");
    Case { arch, mlp, t, z, v, eps, a, c, batch, fd_ok, ctx }
}

impl Case {
    fn d(&self) -> usize {
        self.arch.d
    }
    fn row<'x>(&self, x: &'x [f64], b: usize) -> &'x [f64] {
        &x[b * self.d()..(b + 1) * self.d()]
    }
    fn f_at(&self, mlp: &Mlp<f64>, t: f64, z: &[f64]) -> Vec<f64> {
        let mut f = vec![0.0; z.len()];
        let mut ws = mlp.workspace(self.batch);
        mlp.eval(t, z, &mut f, &mut ws).unwrap();
        f
    }
    fn q_at(&self, mlp: &Mlp<f64>, t: f64, z: &[f64], div: Divergence<'_, f64>) -> Vec<f64> {
        let mut f = vec![0.0; z.len()];
        let mut q = vec![0.0; self.batch];
        let mut ws = mlp.workspace(self.batch);
        mlp.eval_div(t, z, div, &mut f, &mut q, None, &mut ws).unwrap();
        q
    }
    /// Φ = Σ_b a_bᵀ f_b + c_b q_b (or without the q term when `div` is None).
    fn phi(&self, mlp: &Mlp<f64>, t: f64, z: &[f64], div: Option<Divergence<'_, f64>>) -> f64 {
        let f = self.f_at(mlp, t, z);
        let mut s: f64 = f.iter().zip(&self.a).map(|(x, y)| x * y).sum();
        if let Some(div) = div {
            let q = self.q_at(mlp, t, z, div);
            s += q.iter().zip(&self.c).map(|(x, y)| x * y).sum::<f64>();
        }
        s
    }
    /// Gradient of Φ by central differences in z (B×d), t, θ.
    fn phi_fd(&self, div: Option<Divergence<'_, f64>>) -> (Vec<f64>, f64, Vec<f64>) {
        let mut zg = vec![0.0; self.z.len()];
        for (k, zk) in zg.iter_mut().enumerate() {
            *zk = central(H, |h| {
                let mut z = self.z.clone();
                z[k] += h;
                self.phi(&self.mlp, self.t, &z, div)
            });
        }
        let tg = central(H, |h| self.phi(&self.mlp, self.t + h, &self.z, div));
        let mut thg = vec![0.0; self.mlp.n_params()];
        let mut m = self.mlp.clone();
        for (k, g) in thg.iter_mut().enumerate() {
            let p0 = m.params()[k];
            *g = central(H, |h| {
                m.params_mut()[k] = p0 + h;
                let v = self.phi(&m, self.t, &self.z, div);
                m.params_mut()[k] = p0;
                v
            });
        }
        (zg, tg, thg)
    }
    /// Gradient of Φ by the dual / hyper-dual reference.
    fn phi_ref(&self, eps: Option<Option<&[f64]>>) -> (Vec<f64>, f64, Vec<f64>) {
        let d = self.d();
        let th = self.mlp.params();
        let grad = |b: usize, var: Var| -> f64 {
            let z = self.row(&self.z, b);
            let df = ref_df(&self.arch, th, self.t, z, var);
            let mut s: f64 = df.iter().zip(self.row(&self.a, b)).map(|(x, y)| x * y).sum();
            if let Some(e) = eps {
                let e = e.map(|e| self.row(e, b));
                s += self.c[b] * ref_div_and_grad(&self.arch, th, self.t, z, e, var).1;
            }
            s
        };
        let mut zg = vec![0.0; self.z.len()];
        for b in 0..self.batch {
            for k in 0..d {
                zg[b * d + k] = grad(b, Var::Z(k));
            }
        }
        let tg = (0..self.batch).map(|b| grad(b, Var::T)).sum();
        let thg =
            (0..th.len()).map(|k| (0..self.batch).map(|b| grad(b, Var::Theta(k))).sum()).collect();
        (zg, tg, thg)
    }
}

fn check_case(cs: &Case) {
    let (d, bsz, ctx) = (cs.d(), cs.batch, cs.ctx.as_str());
    let th = cs.mlp.params();
    let mut ws = cs.mlp.workspace(bsz);

    // f against the reference.
    let f = cs.f_at(&cs.mlp, cs.t, &cs.z);
    let f_ref: Vec<f64> =
        (0..bsz).flat_map(|b| ref_f(&cs.arch, th, cs.t, cs.row(&cs.z, b)).0).collect();
    check("f", ctx, &f, &f_ref, REF_REL, REF_ABS);

    // JVP.
    let (mut f2, mut jv) = (vec![0.0; bsz * d], vec![0.0; bsz * d]);
    cs.mlp.jvp(cs.t, &cs.z, &cs.v, &mut f2, &mut jv, &mut ws).unwrap();
    check("jvp.f", ctx, &f2, &f, 0.0, 0.0);
    let jv_ref: Vec<f64> = (0..bsz)
        .flat_map(|b| ref_jvp(&cs.arch, th, cs.t, cs.row(&cs.z, b), cs.row(&cs.v, b)))
        .collect();
    check("jvp", ctx, &jv, &jv_ref, REF_REL, REF_ABS);
    if cs.fd_ok {
        let fd: Vec<f64> = (0..bsz * d)
            .map(|k| {
                central(H, |h| {
                    let z: Vec<f64> = cs.z.iter().zip(&cs.v).map(|(z, v)| z + h * v).collect();
                    cs.f_at(&cs.mlp, cs.t, &z)[k]
                })
            })
            .collect();
        check("jvp vs FD", ctx, &jv, &fd, FD_REL, FD_ABS);
    }

    // Divergence: exact and Hutchinson, with ‖J V‖².
    for hutch in [false, true] {
        let div = if hutch { Divergence::Hutchinson(&cs.eps) } else { Divergence::Exact };
        let name = if hutch { "hutchinson" } else { "exact div" };
        let (mut f3, mut q, mut sq) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz]);
        cs.mlp.eval_div(cs.t, &cs.z, div, &mut f3, &mut q, Some(&mut sq), &mut ws).unwrap();
        check("eval_div.f", ctx, &f3, &f, 0.0, 0.0);
        let mut q_ref = vec![0.0; bsz];
        let mut sq_ref = vec![0.0; bsz];
        for b in 0..bsz {
            let z = cs.row(&cs.z, b);
            let e = hutch.then(|| cs.row(&cs.eps, b));
            q_ref[b] = ref_div_and_grad(&cs.arch, th, cs.t, z, e, Var::T).0;
            sq_ref[b] = match e {
                Some(e) => ref_jvp(&cs.arch, th, cs.t, z, e).iter().map(|x| x * x).sum(),
                None => (0..d)
                    .map(|k| {
                        ref_df(&cs.arch, th, cs.t, z, Var::Z(k)).iter().map(|x| x * x).sum::<f64>()
                    })
                    .sum(),
            };
        }
        check(name, ctx, &q, &q_ref, REF_REL, REF_ABS);
        check("jac_sq", ctx, &sq, &sq_ref, REF_REL, REF_ABS);
        if cs.fd_ok {
            let mut q_fd = vec![0.0; bsz];
            for (b, qb) in q_fd.iter_mut().enumerate() {
                if hutch {
                    let e = cs.row(&cs.eps, b);
                    *qb = central(H, |h| {
                        let mut z = cs.z.clone();
                        for i in 0..d {
                            z[b * d + i] += h * e[i];
                        }
                        let f = cs.f_at(&cs.mlp, cs.t, &z);
                        (0..d).map(|i| e[i] * f[b * d + i]).sum()
                    });
                } else {
                    for i in 0..d {
                        *qb += central(H, |h| {
                            let mut z = cs.z.clone();
                            z[b * d + i] += h;
                            cs.f_at(&cs.mlp, cs.t, &z)[b * d + i]
                        });
                    }
                }
            }
            check(&format!("{name} vs FD"), ctx, &q, &q_fd, FD_REL, FD_ABS);
        }
    }

    // Plain VJP in z, t, θ.
    let (mut f4, mut zc) = (vec![0.0; bsz * d], vec![0.0; bsz * d]);
    let mut thc = vec![f64::NAN; th.len()]; // overwritten, never accumulated
    let tc = cs.mlp.vjp(cs.t, &cs.z, &cs.a, &mut f4, &mut zc, Some(&mut thc), &mut ws).unwrap();
    check("vjp.f", ctx, &f4, &f, 0.0, 0.0);
    let (zr, tr, thr) = cs.phi_ref(None);
    check("vjp z", ctx, &zc, &zr, REF_REL, REF_ABS);
    check("vjp t", ctx, &[tc], &[tr], REF_REL, REF_ABS);
    check("vjp θ", ctx, &thc, &thr, REF_REL, REF_ABS);
    // Without θ the z part is unchanged, bit for bit. The t part is the same sum taken in
    // another order (with θ, ConcatSquash's g ⊙ ḡ comes from the row sums of the weight
    // gradient M̄; without θ, from elementwise sums of ū ⊙ p): equal to a few ulp.
    let mut zc2 = vec![0.0; bsz * d];
    let tc2 = cs.mlp.vjp(cs.t, &cs.z, &cs.a, &mut f4, &mut zc2, None, &mut ws).unwrap();
    check("vjp z (no θ)", ctx, &zc2, &zc, 0.0, 0.0);
    check("vjp t (no θ)", ctx, &[tc2], &[tc], 1e-13, 1e-15);
    if cs.fd_ok {
        let (zf, tf, thf) = cs.phi_fd(None);
        check("vjp z vs FD", ctx, &zc, &zf, FD_REL, FD_ABS);
        check("vjp t vs FD", ctx, &[tc], &[tf], FD_REL, FD_ABS);
        check("vjp θ vs FD", ctx, &thc, &thf, FD_REL, FD_ABS);
    }

    // Augmented VJP (f, q and the gradients of Φ = Σ aᵀf + c q), exact and Hutchinson.
    for hutch in [false, true] {
        let div = if hutch { Divergence::Hutchinson(&cs.eps) } else { Divergence::Exact };
        let name = if hutch { "aug(hutchinson)" } else { "aug(exact)" };
        let (mut f5, mut q5, mut zc5) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz * d]);
        let mut thc5 = vec![f64::NAN; th.len()];
        let out =
            AugmentedVjp { f: &mut f5, q: &mut q5, z_cot: &mut zc5, theta_cot: Some(&mut thc5) };
        let tc5 = cs.mlp.vjp_aug(cs.t, &cs.z, div, &cs.a, &cs.c, out, &mut ws).unwrap();
        check(&format!("{name}.f"), ctx, &f5, &f, 0.0, 0.0);
        let q_direct = cs.q_at(&cs.mlp, cs.t, &cs.z, div);
        check(&format!("{name}.q"), ctx, &q5, &q_direct, 0.0, 0.0);
        let (zr, tr, thr) = cs.phi_ref(Some(hutch.then_some(&cs.eps[..])));
        check(&format!("{name} z"), ctx, &zc5, &zr, REF_REL, REF_ABS);
        check(&format!("{name} t"), ctx, &[tc5], &[tr], REF_REL, REF_ABS);
        check(&format!("{name} θ"), ctx, &thc5, &thr, REF_REL, REF_ABS);
        // Without θ: f, q and the z part bit for bit (the adjoint's step-size probe relies
        // on it), t to a few ulp (see the plain VJP above).
        let (mut f6, mut q6, mut zc6) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz * d]);
        let out = AugmentedVjp { f: &mut f6, q: &mut q6, z_cot: &mut zc6, theta_cot: None };
        let tc6 = cs.mlp.vjp_aug(cs.t, &cs.z, div, &cs.a, &cs.c, out, &mut ws).unwrap();
        check(&format!("{name}.f (no θ)"), ctx, &f6, &f5, 0.0, 0.0);
        check(&format!("{name}.q (no θ)"), ctx, &q6, &q5, 0.0, 0.0);
        check(&format!("{name} z (no θ)"), ctx, &zc6, &zc5, 0.0, 0.0);
        check(&format!("{name} t (no θ)"), ctx, &[tc6], &[tc5], 1e-13, 1e-15);
        if cs.fd_ok {
            let (zf, tf, thf) = cs.phi_fd(Some(div));
            check(&format!("{name} z vs FD"), ctx, &zc5, &zf, FD_REL, FD_ABS);
            check(&format!("{name} t vs FD"), ctx, &[tc5], &[tf], FD_REL, FD_ABS);
            check(&format!("{name} θ vs FD"), ctx, &thc5, &thf, FD_REL, FD_ABS);
        }
    }
}

/// `Φ_J = Σ_b [a_bᵀ f_b + c_b q_b + w_b ‖J_b V_b‖²]` with q and ‖J V‖² from `eval_div`.
fn phi_jac(
    cs: &Case,
    w: &[f64],
    mlp: &Mlp<f64>,
    t: f64,
    z: &[f64],
    div: Divergence<'_, f64>,
) -> f64 {
    let (mut f, mut q, mut sq) = (vec![0.0; z.len()], vec![0.0; cs.batch], vec![0.0; cs.batch]);
    let mut ws = mlp.workspace(cs.batch);
    mlp.eval_div(t, z, div, &mut f, &mut q, Some(&mut sq), &mut ws).unwrap();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    dot(&f, &cs.a) + dot(&q, &cs.c) + dot(&sq, w)
}

/// `vjp_aug_jac` (RNODE's Jacobian term `w_b ‖J_b V_b‖²` added to Φ), exact and Hutchinson:
/// f, q and ‖J V‖² bit-identical to `eval_div`'s; with w = 0 every output bit-identical to
/// `vjp_aug`'s; the z, t and θ gradients against the hyper-dual reference
/// (`ref_div_and_grad` + `ref_jac_sq_and_grad`, 1e-9) and central differences of Φ_J (1e-6).
fn check_jac_case(cs: &Case) {
    let (d, bsz, ctx) = (cs.d(), cs.batch, cs.ctx.as_str());
    let th = cs.mlp.params();
    let mut ws = cs.mlp.workspace(bsz);
    let w = Gen(cs.z.len() as u64 ^ 0x5EED).vec(bsz, -1.0, 1.0);
    for hutch in [false, true] {
        let div = if hutch { Divergence::Hutchinson(&cs.eps) } else { Divergence::Exact };
        let name = if hutch { "aug_jac(hutchinson)" } else { "aug_jac(exact)" };
        let run = |w: &[f64], ws: &mut odeflow::field::MlpWorkspace<f64>| {
            let (mut f, mut q, mut zc) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz * d]);
            let (mut thc, mut sq) = (vec![f64::NAN; th.len()], vec![f64::NAN; bsz]);
            let out =
                AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: Some(&mut thc) };
            let jac = JacobianTerm { w, jac_sq: &mut sq };
            let tc = cs.mlp.vjp_aug_jac(cs.t, &cs.z, div, &cs.a, &cs.c, jac, out, ws).unwrap();
            (f, q, sq, zc, tc, thc)
        };
        let (f, q, sq, zc, tc, thc) = run(&w, &mut ws);
        // f, q, ‖J V‖² as eval_div computes them.
        let (mut f0, mut q0, mut sq0) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz]);
        cs.mlp.eval_div(cs.t, &cs.z, div, &mut f0, &mut q0, Some(&mut sq0), &mut ws).unwrap();
        check(&format!("{name}.f"), ctx, &f, &f0, 0.0, 0.0);
        check(&format!("{name}.q"), ctx, &q, &q0, 0.0, 0.0);
        check(&format!("{name}.jac_sq"), ctx, &sq, &sq0, 0.0, 0.0);
        // w = 0: exactly vjp_aug.
        let (_, _, _, zc0, tc0, thc0) = run(&vec![0.0; bsz], &mut ws);
        let (mut f5, mut q5, mut zc5) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz * d]);
        let mut thc5 = vec![0.0; th.len()];
        let out =
            AugmentedVjp { f: &mut f5, q: &mut q5, z_cot: &mut zc5, theta_cot: Some(&mut thc5) };
        let tc5 = cs.mlp.vjp_aug(cs.t, &cs.z, div, &cs.a, &cs.c, out, &mut ws).unwrap();
        check(&format!("{name} w=0 z"), ctx, &zc0, &zc5, 0.0, 0.0);
        check(&format!("{name} w=0 t"), ctx, &[tc0], &[tc5], 0.0, 0.0);
        check(&format!("{name} w=0 θ"), ctx, &thc0, &thc5, 0.0, 0.0);
        // Reference: Φ's gradient plus w_b ∂‖J_b V_b‖²/∂x.
        let e = hutch.then_some(&cs.eps[..]);
        let (mut zr, mut tr, mut thr) = cs.phi_ref(Some(e));
        let jgrad = |b: usize, var: Var| {
            let z = cs.row(&cs.z, b);
            w[b] * ref_jac_sq_and_grad(&cs.arch, th, cs.t, z, e.map(|e| cs.row(e, b)), var).1
        };
        for b in 0..bsz {
            for k in 0..d {
                zr[b * d + k] += jgrad(b, Var::Z(k));
            }
            tr += jgrad(b, Var::T);
            for (k, x) in thr.iter_mut().enumerate() {
                *x += jgrad(b, Var::Theta(k));
            }
        }
        check(&format!("{name} z"), ctx, &zc, &zr, REF_REL, REF_ABS);
        check(&format!("{name} t"), ctx, &[tc], &[tr], REF_REL, REF_ABS);
        check(&format!("{name} θ"), ctx, &thc, &thr, REF_REL, REF_ABS);
        let sq_ref: Vec<f64> = (0..bsz)
            .map(|b| {
                let z = cs.row(&cs.z, b);
                ref_jac_sq_and_grad(&cs.arch, th, cs.t, z, e.map(|e| cs.row(e, b)), Var::T).0
            })
            .collect();
        check(&format!("{name}.jac_sq ref"), ctx, &sq, &sq_ref, REF_REL, REF_ABS);
        if cs.fd_ok {
            let mut zf = vec![0.0; cs.z.len()];
            for (k, g) in zf.iter_mut().enumerate() {
                *g = central(H, |h| {
                    let mut z = cs.z.clone();
                    z[k] += h;
                    phi_jac(cs, &w, &cs.mlp, cs.t, &z, div)
                });
            }
            let tf = central(H, |h| phi_jac(cs, &w, &cs.mlp, cs.t + h, &cs.z, div));
            let mut m = cs.mlp.clone();
            let mut thf = vec![0.0; th.len()];
            for (k, g) in thf.iter_mut().enumerate() {
                let p0 = m.params()[k];
                *g = central(H, |h| {
                    m.params_mut()[k] = p0 + h;
                    let v = phi_jac(cs, &w, &m, cs.t, &cs.z, div);
                    m.params_mut()[k] = p0;
                    v
                });
            }
            check(&format!("{name} z vs FD"), ctx, &zc, &zf, FD_REL, FD_ABS);
            check(&format!("{name} t vs FD"), ctx, &[tc], &[tf], FD_REL, FD_ABS);
            check(&format!("{name} θ vs FD"), ctx, &thc, &thf, FD_REL, FD_ABS);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// RNODE's Jacobian term of the augmented VJP, every activation × time conditioning,
    /// d ∈ {1, 2, 3}, 0 to 3 hidden layers (widths 5, 4, 3); see `check_jac_case`.
    #[test]
    fn mlp_jacobian_term_matches_fd_and_dual_reference(
        seed in any::<u64>(),
        t in -1.0f64..2.0,
        d in 1usize..4,
        depth in 0usize..4,
    ) {
        for act in ACTIVATIONS {
            for time in TIMES {
                check_jac_case(&make_case(d, &[5, 4, 3][..depth], act, time, seed, t));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every derivative, every activation × time conditioning, d ∈ {1, 2, 3}, 0 to 3 hidden
    /// layers (widths 5, 4, 3).
    #[test]
    fn mlp_derivatives_match_fd_and_dual_reference(
        seed in any::<u64>(),
        t in -1.0f64..2.0,
        d in 1usize..4,
        depth in 0usize..4,
    ) {
        for act in ACTIVATIONS {
            for time in TIMES {
                check_case(&make_case(d, &[5, 4, 3][..depth], act, time, seed, t));
            }
        }
    }
}
