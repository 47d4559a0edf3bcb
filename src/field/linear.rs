//! The linear field `f = A z + b` with hand-written exact derivatives.

use super::error::{batch_of, check_len, FieldError};
use super::{check_aug_lens, AugmentedVjp, Divergence, JacobianTerm, Real, VectorField};

/// The autonomous linear field `f(t, z) = A z + b` (`A`: `d × d`, `b`: `d`).
///
/// Its flow is `z(t) = e^{At} z₀ + …` and its density transport is known in closed form
/// (`log p` changes at the constant rate `−tr A`), which makes it the reference problem for
/// CNF tests. Derivatives (per sample): `J = A`, `tr J = tr A`, Hutchinson `εᵀAε`,
/// `‖J‖²_F = Σ A_ij²`, VJP `aᵀA`, `∂f/∂t = 0`; for `Φ = Σ_b [a_bᵀ f_b + c_b q_b]`:
/// `∂Φ/∂z_b = a_bᵀ A`, `∂Φ/∂A = Σ_b a_b z_bᵀ + Σ_b c_b I` (exact) or
/// `+ Σ_b c_b ε_b ε_bᵀ` (Hutchinson), `∂Φ/∂b = Σ_b a_b`. With RNODE's Jacobian term
/// `+ w_b ‖J_b V_b‖²` ([`VectorField::vjp_aug_jac`]): `‖A‖²_F` (exact) or `‖A ε_b‖²`
/// (Hutchinson), independent of z and t, adding `2 (Σ_b w_b) A` (exact) or
/// `Σ_b 2 w_b (A ε_b) ε_bᵀ` (Hutchinson) to `∂Φ/∂A`.
///
/// Parameter layout: θ = `[A (row-major, d·d), b (d)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearField<T> {
    d: usize,
    params: Vec<T>,
}

impl<T: Real> LinearField<T> {
    /// `f = A z + b` from a row-major `A` (`d·d`) and `b` (`d`).
    pub fn new(a: &[T], b: &[T]) -> Result<Self, FieldError> {
        let d = b.len();
        if d == 0 {
            return Err(FieldError::InvalidConfig { field: "dim", value: 0, min: 1 });
        }
        check_len("a", a, d * d)?;
        let mut params = a.to_vec();
        params.extend_from_slice(b);
        Ok(LinearField { d, params })
    }

    /// The matrix `A` (row-major).
    pub fn a(&self) -> &[T] {
        &self.params[..self.d * self.d]
    }

    /// The offset `b`.
    pub fn b(&self) -> &[T] {
        &self.params[self.d * self.d..]
    }

    /// `out_b = A x_b` for every row.
    fn apply(&self, x: &[T], out: &mut [T]) {
        let d = self.d;
        let rows = x.len() / d;
        T::gemm(rows, d, d, T::one(), x, (d, 1), self.a(), (1, d), T::zero(), out, (d, 1));
    }

    /// `q_b` (and `‖J V‖²`) into `q`, `jac_sq`; uses `ws` for `A ε`.
    fn div(&self, div: Divergence<'_, T>, q: &mut [T], jac_sq: Option<&mut [T]>, ws: &mut Vec<T>) {
        let d = self.d;
        let a = self.a();
        match div {
            Divergence::Exact => {
                let tr = (0..d).fold(T::zero(), |s, i| s + a[i * d + i]);
                let fro = a.iter().fold(T::zero(), |s, &x| s + x * x);
                q.fill(tr);
                if let Some(s) = jac_sq {
                    s.fill(fro);
                }
            }
            Divergence::Hutchinson(e) => {
                if ws.len() < e.len() {
                    ws.resize(e.len(), T::zero());
                }
                let ae = &mut ws[..e.len()];
                self.apply(e, ae);
                for (b, qb) in q.iter_mut().enumerate() {
                    let (er, ar) = (&e[b * d..(b + 1) * d], &ae[b * d..(b + 1) * d]);
                    *qb = er.iter().zip(ar).fold(T::zero(), |s, (&x, &y)| s + x * y);
                }
                if let Some(s) = jac_sq {
                    for (b, sb) in s.iter_mut().enumerate() {
                        let ar = &ae[b * d..(b + 1) * d];
                        *sb = ar.iter().fold(T::zero(), |s, &x| s + x * x);
                    }
                }
            }
        }
    }

    /// `f = A z + b`.
    fn eval_into(&self, z: &[T], f: &mut [T]) {
        self.apply(z, f);
        let b = self.b();
        for row in f.chunks_exact_mut(self.d) {
            for (x, &bj) in row.iter_mut().zip(b) {
                *x += bj;
            }
        }
    }

    /// `θ̄ = [Σ_b a_b z_bᵀ, Σ_b a_b]` into `th` (overwritten).
    fn theta_cot(&self, z: &[T], a: &[T], th: &mut [T]) {
        let d = self.d;
        let rows = z.len() / d;
        let (ta, tb) = th.split_at_mut(d * d);
        T::gemm(d, rows, d, T::one(), a, (1, d), z, (d, 1), T::zero(), ta, (d, 1));
        tb.fill(T::zero());
        for row in a.chunks_exact(d) {
            for (x, &y) in tb.iter_mut().zip(row) {
                *x += y;
            }
        }
    }
}

impl<T: Real> VectorField<T> for LinearField<T> {
    /// Room for `A ε` (Hutchinson), `B × d`.
    type Workspace = Vec<T>;

    fn dim(&self) -> usize {
        self.d
    }

    fn n_params(&self) -> usize {
        self.params.len()
    }

    fn params(&self) -> &[T] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [T] {
        &mut self.params
    }

    fn workspace(&self, batch: usize) -> Vec<T> {
        vec![T::zero(); batch * self.d]
    }

    fn eval(&self, _t: T, z: &[T], f: &mut [T], _ws: &mut Vec<T>) -> Result<(), FieldError> {
        let batch = batch_of(z.len(), self.d)?;
        check_len("f", f, batch * self.d)?;
        self.eval_into(z, f);
        Ok(())
    }

    fn eval_div(
        &self,
        _t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        jac_sq: Option<&mut [T]>,
        ws: &mut Vec<T>,
    ) -> Result<(), FieldError> {
        let batch = batch_of(z.len(), self.d)?;
        check_len("f", f, batch * self.d)?;
        check_len("q", q, batch)?;
        if let Divergence::Hutchinson(e) = div {
            check_len("eps", e, batch * self.d)?;
        }
        if let Some(s) = &jac_sq {
            check_len("jac_sq", s, batch)?;
        }
        self.eval_into(z, f);
        self.div(div, q, jac_sq, ws);
        Ok(())
    }

    fn jvp(
        &self,
        _t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        _ws: &mut Vec<T>,
    ) -> Result<(), FieldError> {
        let batch = batch_of(z.len(), self.d)?;
        check_len("v", v, batch * self.d)?;
        check_len("f", f, batch * self.d)?;
        check_len("jv", jv, batch * self.d)?;
        self.eval_into(z, f);
        self.apply(v, jv);
        Ok(())
    }

    fn vjp(
        &self,
        _t: T,
        z: &[T],
        a: &[T],
        f: &mut [T],
        z_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        _ws: &mut Vec<T>,
    ) -> Result<T, FieldError> {
        let d = self.d;
        let batch = batch_of(z.len(), d)?;
        check_len("a", a, batch * d)?;
        check_len("f", f, batch * d)?;
        check_len("z_cot", z_cot, batch * d)?;
        if let Some(th) = &theta_cot {
            check_len("theta_cot", th, self.params.len())?;
        }
        self.eval_into(z, f);
        T::gemm(batch, d, d, T::one(), a, (d, 1), self.a(), (d, 1), T::zero(), z_cot, (d, 1));
        if let Some(th) = theta_cot {
            self.theta_cot(z, a, th);
        }
        Ok(T::zero())
    }

    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut Vec<T>,
    ) -> Result<T, FieldError> {
        self.aug(t, z, div, a, c, None, out, ws)
    }

    fn vjp_aug_jac(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: JacobianTerm<'_, T>,
        out: AugmentedVjp<'_, T>,
        ws: &mut Vec<T>,
    ) -> Result<T, FieldError> {
        self.aug(t, z, div, a, c, Some(jac), out, ws)
    }
}

impl<T: Real> LinearField<T> {
    /// [`VectorField::vjp_aug`] (`jac: None`) and [`VectorField::vjp_aug_jac`].
    #[allow(clippy::too_many_arguments)]
    fn aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: Option<JacobianTerm<'_, T>>,
        out: AugmentedVjp<'_, T>,
        ws: &mut Vec<T>,
    ) -> Result<T, FieldError> {
        let d = self.d;
        let batch = batch_of(z.len(), d)?;
        check_aug_lens(batch, d, self.params.len(), &div, a, c, &out, jac.as_ref())?;
        let (w, jac_sq) = match jac {
            Some(JacobianTerm { w, jac_sq }) => (w, Some(jac_sq)),
            None => (&[][..], None),
        };
        let want_jac = jac_sq.is_some();
        let AugmentedVjp { f, q, z_cot, mut theta_cot } = out;
        let t_cot = self.vjp(t, z, a, f, z_cot, theta_cot.as_deref_mut(), ws)?;
        // Leaves A ε in ws[..B·d] (Hutchinson).
        self.div(div, q, jac_sq, ws);
        if let Some(th) = theta_cot {
            let ta = &mut th[..d * d];
            let two = T::one() + T::one();
            match div {
                Divergence::Exact => {
                    let cs = c.iter().fold(T::zero(), |s, &x| s + x);
                    for i in 0..d {
                        ta[i * d + i] += cs;
                    }
                    if want_jac {
                        // ∂(w ‖A‖²_F)/∂A = 2 w A.
                        let ws2 = two * w.iter().fold(T::zero(), |s, &x| s + x);
                        for (x, &aij) in ta.iter_mut().zip(self.a()) {
                            *x += ws2 * aij;
                        }
                    }
                }
                Divergence::Hutchinson(e) => {
                    for (b, &cb) in c.iter().enumerate() {
                        let er = &e[b * d..(b + 1) * d];
                        for i in 0..d {
                            for j in 0..d {
                                ta[i * d + j] += cb * er[i] * er[j];
                            }
                        }
                    }
                    if want_jac {
                        // ∂(w ‖A ε‖²)/∂A = 2 w (A ε) εᵀ.
                        for (b, &wb) in w.iter().enumerate() {
                            let er = &e[b * d..(b + 1) * d];
                            let ae = &ws[b * d..(b + 1) * d];
                            for i in 0..d {
                                let s = two * wb * ae[i];
                                for j in 0..d {
                                    ta[i * d + j] += s * er[j];
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(t_cot)
    }
}
