//! FFJORD's ODEnet as a batched MLP with exact tangent and reverse-over-tangent passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::act::{tanh_derivatives, Activation};
use super::error::{batch_of, check_len, FieldError};
use super::{check_aug_lens, AugmentedVjp, Divergence, JacobianTerm, Real, VectorField};

/// How each layer sees the time `t` (FFJORD's layer types).
///
/// With `p = W x + b` the plain affine map of the layer's input `x`:
/// - `Concat` (`ConcatLinear`): `t` is an extra input column, `out = W [t; x] + b`; in the
///   layout the time column is column 0 of the `[out, in + 1]` weight, as FFJORD's
///   `torch.cat([tt, x], 1)` puts it first.
/// - `ConcatSquash` (`ConcatSquashLinear`): `out = (W x + b) ⊙ sigmoid(W_g t + b_g) + W_b t`
///   (`W_g`, `W_b`: `[out, 1]`; no bias on the hyper-bias).
/// - `Ignore` (`IgnoreLinear`): `out = W x + b`, autonomous.
///
/// In flow specs (serde) the names are lowercase: `concat`, `concatsquash`, `ignore`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TimeConditioning {
    /// `out = W [t; x] + b` (t is input column 0).
    Concat,
    /// `out = (W x + b) ⊙ sigmoid(W_g t + b_g) + W_b t`.
    #[default]
    ConcatSquash,
    /// `out = W x + b`.
    Ignore,
}

/// The architecture and construction options of an [`Mlp`]: a plain struct with `Default`
/// (FFJORD's toy net).
///
/// Layers: `d → hidden[0] → … → hidden[n−1] → d`, the activation after every layer but the
/// last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    /// State dimension `d` (input and output width). Default 2; at least 1.
    pub dim: usize,
    /// Hidden widths, any number (including none: then `f` is one time-conditioned affine
    /// map). Default `[64, 64, 64]`; each at least 1.
    pub hidden: Vec<usize>,
    /// Nonlinearity between layers. Default `Tanh`.
    pub activation: Activation,
    /// Time conditioning of every layer. Default `ConcatSquash`.
    pub time: TimeConditioning,
    /// Seed of the PyTorch-style initialisation (ChaCha8). Default 0.
    pub seed: u64,
    /// Samples per batch chunk: the unit of work (the chunks of a call are split into one
    /// contiguous run per worker of the rayon pool; each worker reuses one scratch for its
    /// chunks, so a large batch stays in cache: on 10,000 points in one state this made a
    /// log-density evaluation 1.5× faster than one scratch per chunk). Results are
    /// bit-identical for any thread count at a fixed chunk size (θ-gradients are reduced over
    /// chunks in chunk order). Default 128 (measured on 2 cores: 64 costs the FFJORD toy net
    /// ~10% in GEMM packing overhead, 256 is ~5–15% faster at batch 512 but leaves a batch of
    /// 256, W4's, on one core); at least 1.
    pub chunk_size: usize,
    /// Run the chunks on the current rayon pool (`true`) or sequentially. Default `true`.
    pub parallel: bool,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            hidden: vec![64, 64, 64],
            activation: Activation::Tanh,
            time: TimeConditioning::ConcatSquash,
            seed: 0,
            chunk_size: 128,
            parallel: true,
        }
    }
}

/// The largest [`MlpConfig::chunk_size`]: a chunk is the unit of work of one worker, and
/// every workspace holds a chunk's rows whatever the batch (beyond a few hundred rows a
/// chunk only costs memory).
pub const MAX_CHUNK_SIZE: usize = 1 << 16;

impl MlpConfig {
    /// Checks every field's range: `dim ≥ 1`, each hidden width `≥ 1`, `chunk_size` from 1
    /// to [`MAX_CHUNK_SIZE`], and a parameter count whose f64 bytes fit in `isize::MAX` (the
    /// largest allocation there can be).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.dim == 0 {
            return Err(FieldError::InvalidConfig { field: "dim", value: 0, min: 1 });
        }
        if self.hidden.contains(&0) {
            return Err(FieldError::InvalidConfig { field: "hidden", value: 0, min: 1 });
        }
        if self.chunk_size == 0 {
            return Err(FieldError::InvalidConfig { field: "chunk_size", value: 0, min: 1 });
        }
        if self.chunk_size > MAX_CHUNK_SIZE {
            return Err(FieldError::TooLarge {
                field: "chunk_size",
                reason: format!("= {} (must be at most {MAX_CHUNK_SIZE})", self.chunk_size),
            });
        }
        let bytes = self.checked_n_params().and_then(|n| n.checked_mul(8));
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(FieldError::TooLarge {
                field: "hidden",
                reason: format!(
                    "= {:?}: more parameters than memory can address ({})",
                    self.hidden,
                    self.checked_n_params().map_or("overflows usize".into(), |n| n.to_string())
                ),
            });
        }
        Ok(())
    }

    /// The number of parameters of the network of this configuration, in checked arithmetic
    /// and without building it (`None` if it overflows `usize`): per layer of fan-in `i` and
    /// fan-out `o`, `o·(i + k)` values with `k` = 1 (the bias), 2 (concat: bias and a time
    /// column) or 4 (concatsquash: bias and three hyper-network values); the layout of
    /// [`Mlp`]'s [`ParamBlock`]s. Model files check their architecture with it before
    /// anything of its size is allocated.
    pub fn checked_n_params(&self) -> Option<usize> {
        let k = match self.time {
            TimeConditioning::Ignore => 1,
            TimeConditioning::Concat => 2,
            TimeConditioning::ConcatSquash => 4,
        };
        checked_net_params(self.dim, &self.hidden, self.dim, k)
    }
}

/// The parameter count, `None` on overflow, of a dense network of widths
/// `first → hidden… → last` whose layer of fan-in `i` and fan-out `o` holds `o·(i + k)`
/// values (its weights and `k` values per output).
pub(crate) fn checked_net_params(
    first: usize,
    hidden: &[usize],
    last: usize,
    k: usize,
) -> Option<usize> {
    let widths = std::iter::once(first).chain(hidden.iter().copied()).chain([last]);
    let outs = widths.clone().skip(1);
    widths.zip(outs).try_fold(0usize, |n, (i, o)| o.checked_mul(i.checked_add(k)?)?.checked_add(n))
}

/// One named parameter block of the flat vector θ: `θ[offset..offset + Π shape]`, row-major,
/// named and shaped as PyTorch names FFJORD's layers (`layers.{i}._layer.weight`
/// `[out, in]`, `layers.{i}._layer.bias` `[out]`, `layers.{i}._hyper_bias.weight` `[out, 1]`,
/// `layers.{i}._hyper_gate.weight` `[out, 1]`, `layers.{i}._hyper_gate.bias` `[out]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamBlock {
    /// PyTorch state-dict name relative to the ODEnet, e.g. `layers.0._layer.weight`.
    pub name: String,
    /// Offset of the block in θ.
    pub offset: usize,
    /// Shape, `[out, in]` for weights and `[out]` for biases.
    pub shape: Vec<usize>,
}

impl ParamBlock {
    /// Number of elements, `Π shape`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `offset..offset + len`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of one layer's blocks in θ.
#[derive(Debug, Clone)]
struct Layer {
    n_in: usize,
    n_out: usize,
    /// Weight block `[n_out, wcols]`.
    w: usize,
    /// Columns of the weight: `n_in`, or `n_in + 1` for `Concat`.
    wcols: usize,
    /// First input column of the weight (1 for `Concat`, whose column 0 is time).
    x0: usize,
    /// Bias `[n_out]`.
    b: usize,
    /// `ConcatSquash`: `_hyper_bias.weight` `[n_out, 1]`.
    hb: usize,
    /// `ConcatSquash`: `_hyper_gate.weight` `[n_out, 1]`.
    hg: usize,
    /// `ConcatSquash`: `_hyper_gate.bias` `[n_out]`.
    hgb: usize,
    /// Offset of this layer in the per-call time vectors (gate, shift).
    tv: usize,
}

/// FFJORD's ODEnet `f(t, z; θ)` as a batched MLP, with exact derivatives.
///
/// # The network
/// Layer ℓ = 1..L maps its input `h_{ℓ−1}` (`h₀ = z`) by
///
/// ```text
/// p_ℓ = W_ℓ h_{ℓ−1} + b_ℓ,   u_ℓ = p_ℓ ⊙ g_ℓ(t) + β_ℓ(t),   h_ℓ = σ(u_ℓ) (ℓ < L),   f = u_L
/// ```
///
/// with `g = 1, β = 0` (`Ignore`), `g = 1, β = w_t t` (`Concat`, `w_t` the time column) or
/// `g = sigmoid(W_g t + b_g), β = W_b t` (`ConcatSquash`). `J = ∂f/∂z = M_L D_{L−1} ⋯ D₁ M₁`
/// with `M_ℓ = diag(g_ℓ) W_ℓ`, `D_ℓ = diag(σ′(u_ℓ))`. Each call forms the gated weights `M_ℓ`
/// once and computes `u_ℓ = M_ℓ h_{ℓ−1} + (b_ℓ ⊙ g_ℓ + β_ℓ)`: the gate costs no elementwise
/// pass over the batch, forward or reverse.
///
/// # Tangent pass (JVP, exact trace, Hutchinson form)
/// `u̇_ℓ = M_ℓ ḣ_{ℓ−1}`, `ḣ_ℓ = σ′(u_ℓ) ⊙ u̇_ℓ`, `ḣ₀ = v` ⇒ `J v = u̇_L`.
/// Hutchinson: `v = ε`, `q = εᵀ u̇_L`, `‖Jε‖² = ‖u̇_L‖²`. Exact trace: `d` lanes `v = e_i`
/// stacked into the batch dimension (row `b·d + i`), `q = Σ_i (u̇_L⁽ⁱ⁾)_i`; the first layer's
/// lane `i` is column `i` of `M₁`, the same for every sample (stored once per chunk, no GEMM),
/// every later layer one GEMM over `B·d` rows.
///
/// # Reverse over the tangent pass (VJP and the divergence cotangent)
/// For `Φ = Σ_b [a_bᵀ f_b + c_b q_b]`: seed `ū_L = a`, `u̇̄_L = c·ε` (Hutchinson) or `c·e_i`
/// (lane i); with RNODE's Jacobian term `+ w_b ‖J_b V_b‖² = w_b Σ_lanes ‖u̇_L‖²`
/// ([`VectorField::vjp_aug_jac`]) add `2 w_b u̇_L` to every lane's `u̇̄_L`; then for
/// ℓ = L..1, summing tangent terms over lanes:
///
/// ```text
/// M̄ = Σ_b (ū h_{ℓ−1}ᵀ + u̇̄ ḣ_{ℓ−1}ᵀ),  W̄ = diag(g) M̄,  β̄ = Σ_b ū,  b̄ = g ⊙ β̄
/// g ⊙ ḡ = rowsum(M ⊙ M̄) + g ⊙ b ⊙ β̄  (= Σ_b (ū ⊙ M h_{ℓ−1} + u̇̄ ⊙ u̇) + g ⊙ b ⊙ β̄)
/// h̄_{ℓ−1} = Mᵀ ū,  ḣ̄_{ℓ−1} = Mᵀ u̇̄
/// ū_{ℓ−1} = σ′(u_{ℓ−1}) ⊙ h̄_{ℓ−1} + σ″(u_{ℓ−1}) ⊙ Σ_lanes u̇_{ℓ−1} ⊙ ḣ̄_{ℓ−1},   u̇̄_{ℓ−1} = σ′(u_{ℓ−1}) ⊙ ḣ̄_{ℓ−1}
/// ```
///
/// (the row sums of `M ⊙ M̄` when θ's gradient is wanted, the batch sums otherwise) and at the
/// input `∂Φ/∂z = h̄₀`. Time parameters: `ConcatSquash` `W̄_g = t·ḡ⊙g(1−g)`,
/// `b̄_g = ḡ⊙g(1−g)`, `W̄_b = t·β̄`; `Concat` `w̄_t = t·β̄`; and
/// `∂Φ/∂t = Σ_ℓ [ḡ⊙g(1−g)·W_g + β̄·W_b]` (`ConcatSquash`) or `Σ_ℓ β̄·w_t` (`Concat`).
///
/// # Parameter layout
/// θ is the concatenation, layer by layer, of the blocks listed by [`Mlp::blocks`] in
/// PyTorch's state-dict order: `_layer.weight` `[out, in]` (`[out, in + 1]` for `Concat`,
/// time first), `_layer.bias` `[out]`, and for `ConcatSquash` `_hyper_bias.weight`
/// `[out, 1]`, `_hyper_gate.weight` `[out, 1]`, `_hyper_gate.bias` `[out]`. Initialisation
/// is PyTorch's `nn.Linear`: every weight and bias uniform in `±1/√fan_in` (`fan_in` of the
/// `_layer` is `in`, or `in + 1` for `Concat`; of the hyper layers 1).
#[derive(Debug)]
pub struct Mlp<T> {
    cfg: MlpConfig,
    layers: Vec<Layer>,
    params: Vec<T>,
    blocks: Vec<ParamBlock>,
    /// Σ_ℓ n_out(ℓ).
    n_tv: usize,
    /// Largest width among d and the hidden widths.
    max_w: usize,
    /// Workspaces handed back by [`VectorField::recycle`], reused by
    /// [`VectorField::workspace`] (at most [`SPARE_WORKSPACES`], each of at most
    /// [`SPARE_MAX_CHUNKS`] chunks).
    spare: Mutex<Vec<MlpWorkspace<T>>>,
}

/// Elements of θ per task of the chunk reduction.
const REDUCE_PART: usize = 16_384;
/// The chunk reduction of θ runs on the rayon pool from this many summed elements (θ's
/// length × chunks; W4's net: 167,000 × 2) — the toy net's 13,000 × 4 stays on the caller.
const PARALLEL_REDUCE_MIN: usize = 1 << 18;

/// How many recycled workspaces an [`Mlp`] keeps.
const SPARE_WORKSPACES: usize = 4;
/// The largest recycled workspace an [`Mlp`] keeps, in chunks (16 chunks of 128 = 2048
/// points: a training batch's per-chunk θ-gradients, not a whole evaluation set's, stay in
/// memory between calls).
const SPARE_MAX_CHUNKS: usize = 16;

impl<T: Clone> Clone for Mlp<T> {
    /// A copy of the network (the recycled workspaces are not copied).
    fn clone(&self) -> Self {
        Mlp {
            cfg: self.cfg.clone(),
            layers: self.layers.clone(),
            params: self.params.clone(),
            blocks: self.blocks.clone(),
            n_tv: self.n_tv,
            max_w: self.max_w,
            spare: Mutex::new(Vec::new()),
        }
    }
}

fn layout(cfg: &MlpConfig) -> (Vec<Layer>, Vec<ParamBlock>, usize, usize) {
    let mut widths = vec![cfg.dim];
    widths.extend_from_slice(&cfg.hidden);
    widths.push(cfg.dim);
    let mut layers = Vec::new();
    let mut blocks = Vec::new();
    let mut off = 0;
    let mut tv = 0;
    for (i, win) in widths.windows(2).enumerate() {
        let (n_in, n_out) = (win[0], win[1]);
        let concat = cfg.time == TimeConditioning::Concat;
        let wcols = if concat { n_in + 1 } else { n_in };
        let mut push = |name: &str, shape: Vec<usize>| {
            let b = ParamBlock { name: format!("layers.{i}.{name}"), offset: off, shape };
            off += b.len();
            let o = b.offset;
            blocks.push(b);
            o
        };
        let w = push("_layer.weight", vec![n_out, wcols]);
        let b = push("_layer.bias", vec![n_out]);
        let (mut hb, mut hg, mut hgb) = (0, 0, 0);
        if cfg.time == TimeConditioning::ConcatSquash {
            hb = push("_hyper_bias.weight", vec![n_out, 1]);
            hg = push("_hyper_gate.weight", vec![n_out, 1]);
            hgb = push("_hyper_gate.bias", vec![n_out]);
        }
        layers.push(Layer { n_in, n_out, w, wcols, x0: usize::from(concat), b, hb, hg, hgb, tv });
        tv += n_out;
    }
    let max_w = widths.iter().copied().max().unwrap_or(1);
    (layers, blocks, tv, max_w)
}

impl<T: Real> Mlp<T> {
    /// Builds the network of `cfg` with PyTorch's `nn.Linear` initialisation from `cfg.seed`:
    /// each block `~ U(−1/√fan_in, 1/√fan_in)`, drawn in f64 (ChaCha8) in layout order and
    /// rounded to `T`, so f32 and f64 nets of one seed agree to f32 rounding.
    pub fn new(cfg: &MlpConfig) -> Result<Self, FieldError> {
        cfg.validate()?;
        let (layers, blocks, _, _) = layout(cfg);
        let n: usize = blocks.iter().map(ParamBlock::len).sum();
        let mut params = Vec::new();
        params.try_reserve_exact(n).map_err(|e| FieldError::TooLarge {
            field: "hidden",
            reason: format!("= {:?}: its {n} parameters cannot be allocated ({e})", cfg.hidden),
        })?;
        params.resize(n, T::zero());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        for blk in &blocks {
            // The nn.Linear a block belongs to: `layers.{i}._layer.*` has fan_in = weight
            // columns; the hyper layers `layers.{i}._hyper_*` have fan_in = 1.
            let li: usize = blk.name.split('.').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let fan_in = if blk.name.contains("._hyper_") { 1 } else { layers[li].wcols };
            let bound = 1.0 / (fan_in as f64).sqrt();
            for x in &mut params[blk.range()] {
                *x = T::from_f64c(rng.random_range(-bound..bound));
            }
        }
        Self::from_params(cfg, params)
    }

    /// Builds the network of `cfg` with the given parameters (layout as on [`Mlp`]).
    pub fn from_params(cfg: &MlpConfig, params: Vec<T>) -> Result<Self, FieldError> {
        cfg.validate()?;
        let (layers, blocks, n_tv, max_w) = layout(cfg);
        let n: usize = blocks.iter().map(ParamBlock::len).sum();
        if params.len() != n {
            return Err(FieldError::ParamLength { expected: n, found: params.len() });
        }
        Ok(Mlp {
            cfg: cfg.clone(),
            layers,
            params,
            blocks,
            n_tv,
            max_w,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// The named parameter blocks of θ, in layout order (see [`Mlp`]).
    pub fn blocks(&self) -> &[ParamBlock] {
        &self.blocks
    }

    /// `[chunk_size, dim, hidden…]`: what a workspace's layout depends on.
    fn ws_shape(&self) -> Vec<usize> {
        let mut v = vec![self.cfg.chunk_size, self.cfg.dim];
        v.extend_from_slice(&self.cfg.hidden);
        v
    }

    /// How many workers run the `n_chunks` chunks of a call: the rayon pool's threads
    /// (at most one per chunk) when running in parallel, else one.
    fn workers(&self, n_chunks: usize) -> usize {
        if self.cfg.parallel && n_chunks > 1 {
            rayon::current_num_threads().min(n_chunks)
        } else {
            1
        }
    }

    /// Sets whether chunks run on the rayon pool (see [`MlpConfig::parallel`]).
    pub fn set_parallel(&mut self, parallel: bool) {
        self.cfg.parallel = parallel;
    }

    /// The per-call time vectors of every layer: the gate `g_ℓ(t)` and the shift with the bias
    /// folded in, `b_ℓ ⊙ g_ℓ(t) + β_ℓ(t)`, so that `u = (W x + b) ⊙ g + β = M x + shift`
    /// with `M = diag(g) W` (see [`Mlp::fold_gate`]) and the GEMM need not start from a copy
    /// of the bias.
    fn time_vectors(&self, t: T, ws: &mut MlpWorkspace<T>) {
        let MlpWorkspace { gate, shift, .. } = ws;
        let th = &self.params;
        for ly in &self.layers {
            let g = &mut gate[ly.tv..ly.tv + ly.n_out];
            let s = &mut shift[ly.tv..ly.tv + ly.n_out];
            match self.cfg.time {
                TimeConditioning::ConcatSquash => {
                    for j in 0..ly.n_out {
                        let x = th[ly.hg + j] * t + th[ly.hgb + j];
                        g[j] = T::one() / (T::one() + (-x).exp());
                        s[j] = th[ly.b + j] * g[j] + th[ly.hb + j] * t;
                    }
                }
                TimeConditioning::Concat => {
                    for j in 0..ly.n_out {
                        g[j] = T::one();
                        s[j] = th[ly.b + j] + th[ly.w + j * ly.wcols] * t;
                    }
                }
                TimeConditioning::Ignore => {
                    g.fill(T::one());
                    s.copy_from_slice(&th[ly.b..ly.b + ly.n_out]);
                }
            }
        }
    }

    /// `ConcatSquash`: the gated weights `M_ℓ = diag(g_ℓ) W_ℓ` of a call, at θ's offsets in
    /// `mg`, so that no elementwise pass over the batch scales by the gate (the other
    /// conditionings have `g = 1`, `M = W`, and use θ itself). Each worker forms its own
    /// copy when it starts on a call: a copy written by the calling thread and read by the
    /// workers cost more in cache-line transfers than the products.
    fn fold_gate(&self, gate: &[T], mg: &mut [T]) {
        if self.cfg.time != TimeConditioning::ConcatSquash {
            return;
        }
        let th = &self.params;
        for ly in &self.layers {
            let n = ly.n_out * ly.wcols;
            let rows = mg[ly.w..ly.w + n].chunks_exact_mut(ly.wcols);
            let g = &gate[ly.tv..ly.tv + ly.n_out];
            for ((mr, wr), gj) in rows.zip(th[ly.w..ly.w + n].chunks_exact(ly.wcols)).zip(g) {
                for (m, w) in mr.iter_mut().zip(wr) {
                    *m = *gj * *w;
                }
            }
        }
    }

    /// Weight view of layer `l` in `w` (θ or its gated copy) starting at its first input
    /// column (`n_out × n_in` with strides `(wcols, 1)`; its transpose has strides
    /// `(1, wcols)`).
    #[inline]
    fn wx<'a>(&self, w: &'a [T], l: usize) -> &'a [T] {
        let ly = &self.layers[l];
        &w[ly.w + ly.x0..ly.w + ly.n_out * ly.wcols]
    }
}

/// Scratch of one worker: the buffers of the chunk it is running (chunks run one after
/// another on a worker, so a batch of any size needs one of these per worker, and the
/// buffers stay in that core's cache).
#[derive(Debug, Clone, Default)]
struct WorkerWs<T> {
    /// Lane capacity of the tangent buffers.
    lanes: usize,
    /// `h_ℓ` (hidden layers), `rows × n_out`, then the tangents `ḣ_ℓ`, `lanes·rows × n_out`.
    h: Vec<Vec<T>>,
    /// `M_ℓ h_{ℓ−1}` (all layers; gated, the bias folded into the shift), `rows × n_out`,
    /// then the tangents `u̇_ℓ = M_ℓ ḣ_{ℓ−1}`, `lanes·rows × n_out`.
    p: Vec<Vec<T>>,
    /// σ′(u_ℓ), σ″(u_ℓ) (hidden layers).
    s1: Vec<Vec<T>>,
    s2: Vec<Vec<T>>,
    /// Reverse ping-pong buffers, `(1 + lanes)·rows × max_w`: the primal cotangent rows,
    /// then the tangent ones.
    ub: Vec<T>,
    ub2: Vec<T>,
    /// The gated weights of the current call (`ConcatSquash`; see [`Mlp::fold_gate`]).
    mg: Vec<T>,
}

/// The reverse-pass sums of one batch chunk, kept per chunk so that the reduction runs in
/// chunk order whatever worker ran the chunk (results independent of the thread count).
#[derive(Debug, Clone, Default)]
struct ChunkSums<T> {
    /// Chunk-local θ-gradient.
    theta: Vec<T>,
    /// Chunk-local `g ⊙ ḡ` and `β̄` sums, `Σ n_out`.
    gsum: Vec<T>,
    bsum: Vec<T>,
}

/// Scratch of an [`Mlp`]: per-call time vectors; per worker of the rayon pool, the layer
/// activations, σ′, σ″, tangents and reverse buffers of the chunk it runs; per batch chunk,
/// the reverse-pass sums and a chunk-local θ-gradient.
///
/// Made by [`VectorField::workspace`]; grows (once) when a call needs more chunks, more tangent
/// lanes (the exact trace needs `d`) or a θ-gradient buffer.
#[derive(Debug, Clone)]
pub struct MlpWorkspace<T> {
    /// The architecture the buffers are laid out for: `[chunk_size, dim, hidden…]`.
    shape: Vec<usize>,
    gate: Vec<T>,
    shift: Vec<T>,
    gsum: Vec<T>,
    bsum: Vec<T>,
    scratch: Vec<WorkerWs<T>>,
    sums: Vec<ChunkSums<T>>,
}

impl<T: Real> MlpWorkspace<T> {
    fn new(m: &Mlp<T>, batch: usize) -> Self {
        let mut ws = MlpWorkspace {
            shape: m.ws_shape(),
            gate: vec![T::zero(); m.n_tv],
            shift: vec![T::zero(); m.n_tv],
            gsum: vec![T::zero(); m.n_tv],
            bsum: vec![T::zero(); m.n_tv],
            scratch: Vec::new(),
            sums: Vec::new(),
        };
        ws.fit(m, batch);
        ws
    }

    /// Grows the workspace for batches of `batch` samples with the lanes of an exact trace
    /// (up to d = 8; one lane beyond).
    fn fit(&mut self, m: &Mlp<T>, batch: usize) {
        let lanes = if m.cfg.dim <= 8 { m.cfg.dim } else { 1 };
        self.grow(m, batch.div_ceil(m.cfg.chunk_size), lanes, false);
    }

    /// Checks that the workspace was made for an architecture like `m`'s, then grows it.
    fn ensure(
        &mut self,
        m: &Mlp<T>,
        n_chunks: usize,
        lanes: usize,
        theta: bool,
    ) -> Result<(), FieldError> {
        let ok = self.shape.len() == m.layers.len() + 1
            && self.shape[0] == m.cfg.chunk_size
            && self.shape[1] == m.cfg.dim
            && self.shape[2..] == m.cfg.hidden[..];
        if !ok {
            return Err(FieldError::WorkspaceMismatch);
        }
        self.grow(m, n_chunks, lanes, theta);
        Ok(())
    }

    fn grow(&mut self, m: &Mlp<T>, n_chunks: usize, lanes: usize, theta: bool) {
        let rows = m.cfg.chunk_size;
        let l_n = m.layers.len();
        let z = T::zero();
        while self.sums.len() < n_chunks {
            self.sums.push(ChunkSums {
                theta: Vec::new(),
                gsum: vec![z; m.n_tv],
                bsum: vec![z; m.n_tv],
            });
        }
        if theta {
            for c in &mut self.sums {
                if c.theta.len() < m.params.len() {
                    c.theta = vec![z; m.params.len()];
                }
            }
        }
        while self.scratch.len() < m.workers(n_chunks) {
            let hid = |k: usize| m.layers[k].n_out * rows;
            self.scratch.push(WorkerWs {
                lanes: 0,
                h: (0..l_n - 1).map(|k| vec![z; hid(k)]).collect(),
                p: (0..l_n).map(|k| vec![z; hid(k)]).collect(),
                s1: (0..l_n - 1).map(|k| vec![z; hid(k)]).collect(),
                s2: (0..l_n - 1).map(|k| vec![z; hid(k)]).collect(),
                ub: vec![z; rows * m.max_w],
                ub2: vec![z; rows * m.max_w],
                mg: Vec::new(),
            });
        }
        let gated = m.cfg.time == TimeConditioning::ConcatSquash;
        for c in &mut self.scratch {
            // (A workspace made for a net of the same widths but another time conditioning
            // may lack the gated weights.)
            if gated && c.mg.len() < m.params.len() {
                c.mg = vec![z; m.params.len()];
            }
            if c.lanes < lanes {
                c.lanes = lanes;
                // Room for the tangent rows after the primal ones (see `run_chunk_impl`).
                let all = (1 + lanes) * rows;
                for (k, v) in c.h.iter_mut().enumerate() {
                    v.resize(all * m.layers[k].n_out, z);
                }
                for (k, v) in c.p.iter_mut().enumerate() {
                    v.resize(all * m.layers[k].n_out, z);
                }
                c.ub.resize(all * m.max_w, z);
                c.ub2.resize(all * m.max_w, z);
            }
        }
    }
}

/// A raw output pointer shared by the chunk workers, each of which writes only its own
/// disjoint row range.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T, usize);

// SAFETY: the pointer is only used to form disjoint sub-slices, one per chunk (see `rows`).
unsafe impl<T: Send> Send for OutPtr<T> {}
// SAFETY: as above; concurrent workers never address overlapping ranges.
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    fn new(s: &mut [T]) -> Self {
        OutPtr(s.as_mut_ptr(), s.len())
    }
    /// The sub-slice `[start, start + len)`.
    ///
    /// # Safety
    /// The range must lie within the buffer and no other live reference may overlap it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows<'s>(self, start: usize, len: usize) -> &'s mut [T] {
        assert!(start + len <= self.1);
        // SAFETY: in bounds (asserted); disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// The tangent directions of a call.
#[derive(Clone, Copy)]
enum Tan<'a, T> {
    None,
    Exact,
    Dir(&'a [T]),
}

/// Everything one call hands to the chunk workers.
struct Job<'a, T> {
    t: T,
    z: &'a [T],
    batch: usize,
    tan: Tan<'a, T>,
    /// Reverse pass: cotangents `a` and (with tangents) `c`, and whether θ is wanted.
    rev: Option<(&'a [T], Option<&'a [T]>, bool)>,
    /// Reverse pass with the Jacobian term: the weights `w_b` of `‖J_b V_b‖²`.
    jw: Option<&'a [T]>,
    f: OutPtr<T>,
    q: Option<OutPtr<T>>,
    jv: Option<OutPtr<T>>,
    jsq: Option<OutPtr<T>>,
    zbar: Option<OutPtr<T>>,
    gate: &'a [T],
    shift: &'a [T],
}

/// `u = p + shift` (`p = M x` with the gate folded into `M`) then `h = σ(u)` and, by `level`,
/// σ′ and σ″, over `rows × n` buffers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn act_pass<T: Real>(
    act: Activation,
    level: u8,
    n: usize,
    p: &[T],
    sh: &[T],
    h: &mut [T],
    s1: &mut [T],
    s2: &mut [T],
) {
    // One monomorphic loop per activation (the closure is inlined), so each vectorizes.
    match act {
        Activation::Tanh => act_loop(level, n, p, sh, h, s1, s2, |u| Activation::Tanh.value_d2(u)),
        Activation::Softplus => {
            act_loop(level, n, p, sh, h, s1, s2, |u| Activation::Softplus.value_d2(u))
        }
        Activation::Silu => act_loop(level, n, p, sh, h, s1, s2, |u| Activation::Silu.value_d2(u)),
        Activation::Elu => act_loop(level, n, p, sh, h, s1, s2, |u| Activation::Elu.value_d2(u)),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn act_loop<T: Real, F: Fn(T) -> (T, T, T)>(
    level: u8,
    n: usize,
    p: &[T],
    sh: &[T],
    h: &mut [T],
    s1: &mut [T],
    s2: &mut [T],
    f: F,
) {
    let sh = &sh[..n];
    // Zipped iterators over whole rows (no indexing): LLVM proves every access in bounds and
    // vectorizes all three loops (indexed versions of the σ′ loops stayed scalar).
    match level {
        0 => {
            for (pr, hr) in p.chunks_exact(n).zip(h.chunks_exact_mut(n)) {
                for ((x, o), s) in pr.iter().zip(hr.iter_mut()).zip(sh) {
                    *o = f(*x + *s).0;
                }
            }
        }
        1 => {
            for ((pr, hr), ar) in
                p.chunks_exact(n).zip(h.chunks_exact_mut(n)).zip(s1.chunks_exact_mut(n))
            {
                for (((x, o), d1), s) in pr.iter().zip(hr.iter_mut()).zip(ar.iter_mut()).zip(sh) {
                    let (v, y, _) = f(*x + *s);
                    *o = v;
                    *d1 = y;
                }
            }
        }
        _ => {
            for (((pr, hr), ar), br) in p
                .chunks_exact(n)
                .zip(h.chunks_exact_mut(n))
                .zip(s1.chunks_exact_mut(n))
                .zip(s2.chunks_exact_mut(n))
            {
                for ((((x, o), d1), d2), s) in
                    pr.iter().zip(hr.iter_mut()).zip(ar.iter_mut()).zip(br.iter_mut()).zip(sh)
                {
                    let (v, y, z) = f(*x + *s);
                    *o = v;
                    *d1 = y;
                    *d2 = z;
                }
            }
        }
    }
}

/// Through an activation in the reverse pass with two tangent lanes, per element, with
/// `(σ′, σ″) = d(a_j, b_j)`: `ū ← σ′ū + σ″(u̇₀ḣ̄₀) + σ″(u̇₁ḣ̄₁)` (rounded in that order), then
/// `u̇̄ᵢ = σ′ ⊙ ḣ̄ᵢ` (in place of `ḣ̄ᵢ`). `(a, b)` are the stored σ′, σ″ with `d` passing
/// them through, or `a = h` with `d` recomputing tanh's ([`tanh_derivatives`], the same
/// bits). A function of its own, every slice a parameter, so that they are known not to
/// overlap and the loop vectorizes without run-time overlap checks (reading h through a
/// closure's capture instead cost W1 about 1.7%).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reverse_two_lanes<T: Real>(
    u: &mut [T],
    a: &[T],
    b: &[T],
    x0: &[T],
    o0: &mut [T],
    x1: &[T],
    o1: &mut [T],
    d: impl Fn(T, T) -> (T, T),
) {
    let n = u.len();
    let (a, b, x0, x1, o0, o1) = (&a[..n], &b[..n], &x0[..n], &x1[..n], &mut o0[..n], &mut o1[..n]);
    for j in 0..n {
        let (s1, s2) = d(a[j], b[j]);
        let mut v = u[j] * s1;
        v += s2 * (x0[j] * o0[j]);
        v += s2 * (x1[j] * o1[j]);
        u[j] = v;
        o0[j] *= s1;
        o1[j] *= s1;
    }
}

/// [`reverse_two_lanes`] for one lane: `ū ← σ′ū + σ″(u̇₀ḣ̄₀)`, `u̇̄₀ = σ′ ⊙ ḣ̄₀`.
#[inline(always)]
fn reverse_one_lane<T: Real>(
    u: &mut [T],
    a: &[T],
    b: &[T],
    x0: &[T],
    o0: &mut [T],
    d: impl Fn(T, T) -> (T, T),
) {
    let n = u.len();
    let (a, b, x0, o0) = (&a[..n], &b[..n], &x0[..n], &mut o0[..n]);
    for j in 0..n {
        let (s1, s2) = d(a[j], b[j]);
        let v = u[j] * s1;
        u[j] = v + s2 * (x0[j] * o0[j]);
        o0[j] *= s1;
    }
}

/// `out_j = f(a_j) · x_j` (σ′ stored, `f` the identity, or recomputed from `a = h`; as
/// parameters, the slices are known not to overlap: no run-time checks).
#[inline(always)]
fn scale_into<T: Real>(out: &mut [T], a: &[T], x: &[T], f: impl Fn(T) -> T) {
    let n = out.len();
    let (a, x) = (&a[..n], &x[..n]);
    for j in 0..n {
        out[j] = f(a[j]) * x[j];
    }
}

/// Whether [`Mlp`] may run its elementwise kernels in AVX2/AVX-512 copies (on by default;
/// the tests switch it off to check that both routes give bit-identical results).
static SIMD_DISPATCH: AtomicBool = AtomicBool::new(true);

/// Enables or disables the run-time choice of SIMD copies of the elementwise kernels
/// (testing aid). Results are bit-identical either way: every elementwise operation is an
/// IEEE operation on one element (no FMA contraction), whatever the vector width.
#[doc(hidden)]
pub fn set_simd_dispatch(enabled: bool) {
    SIMD_DISPATCH.store(enabled, Ordering::Relaxed);
}

impl<T: Real> Mlp<T> {
    /// Forward, tangent and reverse pass of chunk `k`: the same code compiled three times,
    /// for AVX-512, AVX2 + FMA and the baseline target, chosen at run time (the GEMMs inside
    /// do their own dispatch in [`super::gemm`]). The elementwise loops (activations with
    /// σ′ σ″, tangent scaling, the σ″ term of the reverse pass) run 8/4/2 f64 lanes wide.
    fn run_chunk(&self, k: usize, job: &Job<'_, T>, cw: &mut WorkerWs<T>, sums: &mut ChunkSums<T>) {
        #[cfg(target_arch = "x86_64")]
        if SIMD_DISPATCH.load(Ordering::Relaxed) {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { self.run_chunk_avx512(k, job, cw, sums) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { self.run_chunk_avx2(k, job, cw, sums) };
            }
        }
        self.run_chunk_impl(k, job, cw, sums)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_chunk_avx512(
        &self,
        k: usize,
        job: &Job<'_, T>,
        cw: &mut WorkerWs<T>,
        sums: &mut ChunkSums<T>,
    ) {
        self.run_chunk_impl(k, job, cw, sums)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_chunk_avx2(
        &self,
        k: usize,
        job: &Job<'_, T>,
        cw: &mut WorkerWs<T>,
        sums: &mut ChunkSums<T>,
    ) {
        self.run_chunk_impl(k, job, cw, sums)
    }

    #[inline(always)]
    fn run_chunk_impl(
        &self,
        k: usize,
        job: &Job<'_, T>,
        cw: &mut WorkerWs<T>,
        sums: &mut ChunkSums<T>,
    ) {
        let cs = self.cfg.chunk_size;
        let d = self.cfg.dim;
        let r0 = k * cs;
        let nb = cs.min(job.batch - r0);
        let l_n = self.layers.len();
        let zc = &job.z[r0 * d..(r0 + nb) * d];
        let lanes = match job.tan {
            Tan::None => 0,
            Tan::Exact => d,
            Tan::Dir(_) => 1,
        };
        let vc = match job.tan {
            Tan::Dir(v) => &v[r0 * d..(r0 + nb) * d],
            _ => &[][..],
        };
        let level: u8 = match (lanes > 0, job.rev.is_some()) {
            (false, false) => 0,
            (true, true) => 2,
            _ => 1,
        };
        let one = T::one();
        let zero = T::zero();
        // tanh's σ′ and σ″ follow from h = tanh u (`tanh_derivatives`): with at most two
        // tangent lanes (the loops below that know this) they are recomputed where needed
        // instead of stored, which leaves the activation pass one output stream instead of
        // three (it was bound by the L2 traffic of the stores).
        let from_h = self.cfg.activation == Activation::Tanh && lanes <= 2;
        let WorkerWs { h, p, s1, s2, ub, ub2, mg, .. } = cw;
        // The GEMMs' weights: M = diag(g) W (formed by `drive`) or θ itself (g = 1).
        let wts: &[T] =
            if self.cfg.time == TimeConditioning::ConcatSquash { mg } else { &self.params };
        let ChunkSums { theta, gsum, bsum } = sums;
        // Row layout of h, p and the reverse buffers: the chunk's nb primal rows, then (with
        // tangents) its rt = lanes·nb tangent rows, so that one GEMM per layer serves both.
        let rt = lanes * nb;
        // With the exact trace the first layer's tangent rows are the same d rows for every
        // sample (u̇ = M₀ eᵢ): unless that layer is also the output, only those d rows are
        // stored, and tangent row r reads row r mod d.
        let shared0 = matches!(job.tan, Tan::Exact) && l_n > 1;

        // ── Forward pass: primal and tangent rows together, layer by layer ──
        for l in 0..l_n {
            let ly = &self.layers[l];
            let (n_in, n_out) = (ly.n_in, ly.n_out);
            let sh = &job.shift[ly.tv..ly.tv + n_out];
            let (hprev, hcur) = h.split_at_mut(l);
            // [p; ṗ] = [h; ḣ] Mᵀ (M = diag(g) W) without the bias (folded into the shift,
            // see `time_vectors`); the first layer's tangent rows are set apart below. From
            // here on p stands for M h and ṗ for u̇ = M ḣ.
            let m = if l == 0 { nb } else { nb + rt };
            let x: &[T] = if l == 0 { zc } else { &hprev[l - 1][..m * n_in] };
            let out = &mut p[l][..m * n_out];
            T::gemm(
                m,
                n_in,
                n_out,
                one,
                x,
                (n_in, 1),
                self.wx(wts, l),
                (1, ly.wcols),
                zero,
                out,
                (n_out, 1),
            );
            let (pl, pdl) = p[l][..(nb + rt) * n_out].split_at_mut(nb * n_out);
            if l == 0 && lanes > 0 {
                match job.tan {
                    Tan::Exact => {
                        // u̇ = M₀ eᵢ, the same d rows for every sample: gather the
                        // columns of M₀ once (and copy them down the chunk only if this
                        // is the output layer; see `shared0`).
                        let w = &wts[ly.w + ly.x0..];
                        let (first, rest) = pdl.split_at_mut(d * n_out);
                        for (i, row) in first.chunks_exact_mut(n_out).enumerate() {
                            for (j, v) in row.iter_mut().enumerate() {
                                *v = w[j * ly.wcols + i];
                            }
                        }
                        if !shared0 {
                            for block in rest.chunks_exact_mut(d * n_out) {
                                block.copy_from_slice(first);
                            }
                        }
                    }
                    Tan::Dir(_) => T::gemm(
                        nb,
                        d,
                        n_out,
                        one,
                        vc,
                        (d, 1),
                        self.wx(wts, 0),
                        (1, ly.wcols),
                        zero,
                        pdl,
                        (n_out, 1),
                    ),
                    // No tangent rows (and no lanes: this branch does not run for it).
                    Tan::None => {}
                }
            }
            if l + 1 < l_n {
                let (hl, hdl) = hcur[0][..(nb + rt) * n_out].split_at_mut(nb * n_out);
                act_pass(
                    self.cfg.activation,
                    if from_h { 0 } else { level },
                    n_out,
                    pl,
                    sh,
                    hl,
                    &mut s1[l][..nb * n_out],
                    &mut s2[l][..nb * n_out],
                );
                // ḣ = σ′ ⊙ u̇, lane by lane.
                let s1l = &s1[l];
                for r in 0..rt {
                    let b = r / lanes;
                    let rs = if l == 0 && shared0 { r % lanes } else { r };
                    let src = &pdl[rs * n_out..(rs + 1) * n_out];
                    let dst = &mut hdl[r * n_out..(r + 1) * n_out];
                    if from_h {
                        let hr = &hl[b * n_out..(b + 1) * n_out];
                        scale_into(dst, hr, src, |h| tanh_derivatives(h).0);
                    } else {
                        scale_into(dst, &s1l[b * n_out..(b + 1) * n_out], src, |s| s);
                    }
                }
            } else {
                // SAFETY: chunk k owns rows r0..r0 + nb of every output.
                let f = unsafe { job.f.rows(r0 * d, nb * d) };
                for (fr, pr) in f.chunks_exact_mut(d).zip(pl.chunks_exact(d)) {
                    for j in 0..d {
                        fr[j] = pr[j] + sh[j];
                    }
                }
            }
        }

        if lanes > 0 {
            // Outputs of the tangent pass.
            let pdl = &p[l_n - 1][nb * d..(nb + rt) * d];
            // SAFETY: chunk k owns rows r0..r0 + nb of every output.
            let mut q = job.q.map(|o| unsafe { o.rows(r0, nb) });
            let mut jsq = job.jsq.map(|o| unsafe { o.rows(r0, nb) });
            let mut jv = job.jv.map(|o| unsafe { o.rows(r0 * d, nb * d) });
            for b in 0..nb {
                let (mut qb, mut sq) = (zero, zero);
                match job.tan {
                    Tan::Exact => {
                        for i in 0..d {
                            let row = &pdl[(b * d + i) * d..(b * d + i + 1) * d];
                            qb += row[i];
                            for x in row {
                                sq += *x * *x;
                            }
                        }
                    }
                    _ => {
                        let row = &pdl[b * d..(b + 1) * d];
                        let eb = &vc[b * d..(b + 1) * d];
                        for j in 0..d {
                            let x = row[j];
                            qb += eb[j] * x;
                            sq += x * x;
                            if let Some(jv) = jv.as_deref_mut() {
                                jv[b * d + j] = x;
                            }
                        }
                    }
                }
                if let Some(q) = q.as_deref_mut() {
                    q[b] = qb;
                }
                if let Some(s) = jsq.as_deref_mut() {
                    s[b] = sq;
                }
            }
        }

        // ── Reverse pass ──
        let Some((a, c, want_theta)) = job.rev else { return };
        let lanes_r = if c.is_some() { lanes } else { 0 };
        let rt = lanes_r * nb;
        ub[..nb * d].copy_from_slice(&a[r0 * d..(r0 + nb) * d]);
        if let Some(c) = c {
            if lanes_r > 0 {
                let seed = &mut ub[nb * d..(nb + rt) * d];
                match job.tan {
                    Tan::Exact => {
                        seed.fill(zero);
                        for b in 0..nb {
                            for i in 0..d {
                                seed[(b * d + i) * d + i] = c[r0 + b];
                            }
                        }
                    }
                    _ => {
                        for b in 0..nb {
                            for j in 0..d {
                                seed[b * d + j] = c[r0 + b] * vc[b * d + j];
                            }
                        }
                    }
                }
                if let Some(w) = job.jw {
                    // The cotangent of w_b ‖u̇_L‖² (u̇_L = J_b V_b, every lane):
                    // u̇̄_L += 2 w_b u̇_L.
                    let pdl = &p[l_n - 1][nb * d..(nb + rt) * d];
                    for (r, (srow, prow)) in
                        seed.chunks_exact_mut(d).zip(pdl.chunks_exact(d)).enumerate()
                    {
                        let s = (one + one) * w[r0 + r / lanes];
                        for (o, x) in srow.iter_mut().zip(prow) {
                            *o += s * *x;
                        }
                    }
                }
            }
        }
        gsum.fill(zero);
        bsum.fill(zero);
        // Each weight block is written whole by its first GEMM (β = 0), the bias blocks are
        // set from the β̄ sums and the time parameters in `drive` (they stay zero here): no
        // part of θ needs zeroing (zeroing it all cost a 1.3 MB memset per chunk and call on
        // W4's net).
        let gated = self.cfg.time == TimeConditioning::ConcatSquash;
        for l in (0..l_n).rev() {
            let ly = &self.layers[l];
            let (n_in, n_out) = (ly.n_in, ly.n_out);
            let g = &job.gate[ly.tv..ly.tv + n_out];
            let gs = &mut gsum[ly.tv..ly.tv + n_out];
            let bs = &mut bsum[ly.tv..ly.tv + n_out];
            // The cotangent rows [ū; u̇̄] are also those of [p; ṗ] (u = p + shift with the
            // gate in M, see `time_vectors`); read-only from here on.
            let uu = &ub[..(nb + rt) * n_out];
            let (cu, cud) = uu.split_at(nb * n_out);
            // β̄ = Σ_b ū, the shift's cotangent (the tangent rows have no shift).
            for ur in cu.chunks_exact(n_out) {
                for (sb, u) in bs.iter_mut().zip(ur) {
                    *sb += *u;
                }
            }
            if gated && !want_theta {
                // Without the weight gradient M̄ to take it from: g ⊙ ḡ = Σ_b (ū ⊙ p + u̇̄ ⊙ ṗ)
                // over primal and tangent rows (p = M h carries the gate).
                for (r, ur) in uu.chunks_exact(n_out).enumerate() {
                    // (The first layer's shared tangent rows: row nb + lane.)
                    let rs = if l == 0 && shared0 && r >= nb { nb + (r - nb) % lanes } else { r };
                    let prow = &p[l][rs * n_out..(rs + 1) * n_out];
                    for ((sg, u), x) in gs.iter_mut().zip(ur).zip(prow) {
                        *sg += *u * *x;
                    }
                }
            }
            if want_theta {
                let tw = &mut theta[ly.w + ly.x0..ly.w + n_out * ly.wcols];
                if l > 0 {
                    // M̄ = [ū; u̇̄]ᵀ [h; ḣ]: primal and tangent rows in one GEMM.
                    let x = &h[l - 1][..(nb + rt) * n_in];
                    let k = nb + rt;
                    T::gemm(
                        n_out,
                        k,
                        n_in,
                        one,
                        uu,
                        (1, n_out),
                        x,
                        (n_in, 1),
                        zero,
                        tw,
                        (ly.wcols, 1),
                    );
                } else {
                    T::gemm(
                        n_out,
                        nb,
                        n_in,
                        one,
                        cu,
                        (1, n_out),
                        zc,
                        (n_in, 1),
                        zero,
                        tw,
                        (ly.wcols, 1),
                    );
                    if lanes_r > 0 {
                        match job.tan {
                            Tan::Exact => {
                                // ṗ = M₀ eᵢ: column i of M̄₀ gains Σ_b of lane i's rows. Sum
                                // them per lane in contiguous vectors first (ub2 is free at
                                // the first layer), then add each column once: the strided
                                // scalar updates row by row cost 1.7% of a toy-net VJP.
                                let acc = &mut ub2[..d * n_out];
                                acc.fill(zero);
                                for lanes_row in cud.chunks_exact(d * n_out) {
                                    for (a, x) in acc.iter_mut().zip(lanes_row) {
                                        *a += *x;
                                    }
                                }
                                for (i, col) in acc.chunks_exact(n_out).enumerate() {
                                    for (j, v) in col.iter().enumerate() {
                                        tw[j * ly.wcols + i] += *v;
                                    }
                                }
                            }
                            _ => T::gemm(
                                n_out,
                                nb,
                                d,
                                one,
                                cud,
                                (1, n_out),
                                vc,
                                (d, 1),
                                one,
                                tw,
                                (ly.wcols, 1),
                            ),
                        }
                    }
                }
                // From M = diag(g) W: W̄ = diag(g) M̄ and g ⊙ ḡ = rowsum(M ⊙ M̄) (its part
                // through the weights); b̄ = g ⊙ β̄ (the shift holds b ⊙ g).
                if gated {
                    let mw = self.wx(wts, l);
                    for (j, (sg, gj)) in gs.iter_mut().zip(g).enumerate() {
                        let at = j * ly.wcols..j * ly.wcols + n_in;
                        let mut acc = zero;
                        for (m, x) in mw[at.clone()].iter().zip(&tw[at.clone()]) {
                            acc += *m * *x;
                        }
                        *sg += acc;
                        for x in &mut tw[at] {
                            *x *= *gj;
                        }
                    }
                }
                for ((tb, gj), sb) in theta[ly.b..ly.b + n_out].iter_mut().zip(g).zip(bs.iter()) {
                    *tb = *gj * *sb;
                }
            }
            if gated {
                // The part of g ⊙ ḡ through the shift b ⊙ g: g ⊙ b ⊙ β̄.
                let bias = &self.params[ly.b..ly.b + n_out];
                for (((sg, b), sb), gj) in gs.iter_mut().zip(bias).zip(bs.iter()).zip(g) {
                    *sg += *gj * *b * *sb;
                }
            }
            if l > 0 {
                // [h̄; ḣ̄] = [ū; u̇̄] M: primal and tangent rows in one GEMM.
                let m = nb + rt;
                let out = &mut ub2[..m * n_in];
                T::gemm(
                    m,
                    n_out,
                    n_in,
                    one,
                    uu,
                    (n_out, 1),
                    self.wx(wts, l),
                    (ly.wcols, 1),
                    zero,
                    out,
                    (n_in, 1),
                );
                let (nu, nud) = out.split_at_mut(nb * n_in);
                // Through the activation of layer l − 1 (width n_in).
                let s1p = &s1[l - 1][..nb * n_in];
                let s2p = &s2[l - 1][..nb * n_in];
                let pdp = &p[l - 1][nb * n_in..(nb + rt) * n_in];
                for b in 0..nb {
                    let nur = &mut nu[b * n_in..(b + 1) * n_in];
                    let s1r = &s1p[b * n_in..(b + 1) * n_in];
                    let lane_row = |i: usize| {
                        let rs = if l == 1 && shared0 { i } else { b * lanes_r + i };
                        &pdp[rs * n_in..(rs + 1) * n_in]
                    };
                    let s2r = &s2p[b * n_in..(b + 1) * n_in];
                    let hr = &h[l - 1][b * n_in..(b + 1) * n_in];
                    // σ′ and σ″: stored, or tanh's from h (see `from_h`); one monomorphic
                    // loop each (a branch inside the closure cost the softplus VJP 1%).
                    let stored = |s1: T, s2: T| (s1, s2);
                    let tanh = |h: T, _: T| tanh_derivatives(h);
                    if lanes_r == 2 {
                        // The general loops below fused for two lanes (the exact trace in
                        // 2-D): one pass, the same operations in the same order per element.
                        let (o0, o1) = nud[2 * b * n_in..(2 * b + 2) * n_in].split_at_mut(n_in);
                        let (x0, x1) = (lane_row(0), lane_row(1));
                        if from_h {
                            reverse_two_lanes(nur, hr, hr, x0, o0, x1, o1, tanh);
                        } else {
                            reverse_two_lanes(nur, s1r, s2r, x0, o0, x1, o1, stored);
                        }
                        continue;
                    }
                    if lanes_r == 1 {
                        // The same for one lane (Hutchinson).
                        let o0 = &mut nud[b * n_in..(b + 1) * n_in];
                        if from_h {
                            reverse_one_lane(nur, hr, hr, lane_row(0), o0, tanh);
                        } else {
                            reverse_one_lane(nur, s1r, s2r, lane_row(0), o0, stored);
                        }
                        continue;
                    }
                    if from_h {
                        for (u, &h) in nur.iter_mut().zip(hr) {
                            *u *= tanh_derivatives(h).0;
                        }
                        continue;
                    }
                    for (u, s) in nur.iter_mut().zip(s1r) {
                        *u *= *s;
                    }
                    if lanes_r > 0 {
                        // ū += σ″ ⊙ Σ_lanes u̇ ⊙ ḣ̄ (u̇ = ṗ, gated), then u̇̄ = σ′ ⊙ ḣ̄ per lane.
                        let s2r = &s2p[b * n_in..(b + 1) * n_in];
                        for i in 0..lanes_r {
                            let r = b * lanes_r + i;
                            let pr = lane_row(i);
                            let row = &mut nud[r * n_in..(r + 1) * n_in];
                            for ((((u, s2), x), o), s1) in
                                nur.iter_mut().zip(s2r).zip(pr).zip(row.iter_mut()).zip(s1r)
                            {
                                *u += *s2 * (*x * *o);
                                *o *= *s1;
                            }
                        }
                    }
                }
                std::mem::swap(ub, ub2);
            } else if let Some(zb) = job.zbar {
                // SAFETY: chunk k owns rows r0..r0 + nb of every output.
                let zb = unsafe { zb.rows(r0 * d, nb * d) };
                T::gemm(
                    nb,
                    n_out,
                    d,
                    one,
                    cu,
                    (n_out, 1),
                    self.wx(wts, 0),
                    (ly.wcols, 1),
                    zero,
                    zb,
                    (d, 1),
                );
            }
        }
    }

    /// Runs every chunk of `job` (on the rayon pool when `parallel` and there are several),
    /// then reduces the reverse-pass sums over chunks in chunk order and finishes the
    /// time-parameter gradients; returns `∂Φ/∂t` (0 without a reverse pass).
    fn drive(
        &self,
        job: Job<'_, T>,
        scratch: &mut [WorkerWs<T>],
        sums: &mut [ChunkSums<T>],
        red: Reduce<'_, T>,
    ) -> T {
        let n_chunks = job.batch.div_ceil(self.cfg.chunk_size);
        let chunks = &mut sums[..n_chunks];
        // Contiguous runs of chunks, one run per worker scratch (`grow` made `workers` of them).
        let workers = self.workers(n_chunks).min(scratch.len());
        if workers > 1 {
            let per = n_chunks.div_ceil(workers);
            scratch[..workers].par_iter_mut().zip(chunks.par_chunks_mut(per)).enumerate().for_each(
                |(w, (cw, run))| {
                    self.fold_gate(job.gate, &mut cw.mg);
                    for (i, cs) in run.iter_mut().enumerate() {
                        self.run_chunk(w * per + i, &job, cw, cs);
                    }
                },
            );
        } else {
            self.fold_gate(job.gate, &mut scratch[0].mg);
            for (k, cs) in chunks.iter_mut().enumerate() {
                self.run_chunk(k, &job, &mut scratch[0], cs);
            }
        }
        let Some((_, _, want_theta)) = job.rev else { return T::zero() };
        let Reduce { gsum, bsum, theta } = red;
        gsum.fill(T::zero());
        bsum.fill(T::zero());
        for cs in chunks.iter() {
            for (x, y) in gsum.iter_mut().zip(&cs.gsum) {
                *x += *y;
            }
            for (x, y) in bsum.iter_mut().zip(&cs.bsum) {
                *x += *y;
            }
        }
        let t = job.t;
        let mut theta = theta.filter(|_| want_theta);
        if let Some(th) = theta.as_deref_mut() {
            // Σ over chunks in chunk order, element by element (so the result does not
            // depend on how the elements are split); on the pool when θ is long.
            let reduce = |part: usize, out: &mut [T]| {
                let at = part * REDUCE_PART;
                let range = at..at + out.len();
                let Some((first, rest)) = chunks.split_first() else {
                    out.fill(T::zero()); // an empty batch
                    return;
                };
                out.copy_from_slice(&first.theta[range.clone()]);
                for cs in rest {
                    for (x, y) in out.iter_mut().zip(&cs.theta[range.clone()]) {
                        *x += *y;
                    }
                }
            };
            if self.cfg.parallel && th.len() * chunks.len() >= PARALLEL_REDUCE_MIN {
                th.par_chunks_mut(REDUCE_PART).enumerate().for_each(|(i, out)| reduce(i, out));
            } else {
                th.chunks_mut(REDUCE_PART).enumerate().for_each(|(i, out)| reduce(i, out));
            }
        }
        let mut t_cot = T::zero();
        let pr = &self.params;
        for ly in &self.layers {
            let gs = &gsum[ly.tv..ly.tv + ly.n_out];
            let bs = &bsum[ly.tv..ly.tv + ly.n_out];
            let g = &job.gate[ly.tv..ly.tv + ly.n_out];
            match self.cfg.time {
                TimeConditioning::ConcatSquash => {
                    for j in 0..ly.n_out {
                        // gs holds g ⊙ ḡ: ∂Φ/∂(W_g t + b_g) = ḡ ⊙ g(1 − g).
                        let gg = gs[j] * (T::one() - g[j]);
                        t_cot += gg * pr[ly.hg + j] + bs[j] * pr[ly.hb + j];
                        if let Some(th) = theta.as_deref_mut() {
                            th[ly.hg + j] = t * gg;
                            th[ly.hgb + j] = gg;
                            th[ly.hb + j] = t * bs[j];
                        }
                    }
                }
                TimeConditioning::Concat => {
                    for j in 0..ly.n_out {
                        t_cot += bs[j] * pr[ly.w + j * ly.wcols];
                        if let Some(th) = theta.as_deref_mut() {
                            th[ly.w + j * ly.wcols] = t * bs[j];
                        }
                    }
                }
                TimeConditioning::Ignore => {}
            }
        }
        t_cot
    }
}

/// Reduction targets of a reverse pass.
struct Reduce<'a, T> {
    gsum: &'a mut [T],
    bsum: &'a mut [T],
    theta: Option<&'a mut [T]>,
}

impl<T: Real> VectorField<T> for Mlp<T> {
    type Workspace = MlpWorkspace<T>;

    fn dim(&self) -> usize {
        self.cfg.dim
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

    fn workspace(&self, batch: usize) -> MlpWorkspace<T> {
        match self.spare.lock().ok().and_then(|mut v| v.pop()) {
            Some(mut ws) => {
                ws.fit(self, batch);
                ws
            }
            None => MlpWorkspace::new(self, batch),
        }
    }

    fn recycle(&self, ws: MlpWorkspace<T>) {
        if ws.shape != self.ws_shape() || ws.sums.len() > SPARE_MAX_CHUNKS {
            return;
        }
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < SPARE_WORKSPACES {
                spare.push(ws);
            }
        }
    }

    fn eval(&self, t: T, z: &[T], f: &mut [T], ws: &mut MlpWorkspace<T>) -> Result<(), FieldError> {
        let d = self.cfg.dim;
        let batch = batch_of(z.len(), d)?;
        check_len("f", f, batch * d)?;
        ws.ensure(self, batch.div_ceil(self.cfg.chunk_size), 0, false)?;
        self.time_vectors(t, ws);
        let MlpWorkspace { gate, shift, gsum, bsum, scratch, sums, .. } = ws;
        let job = Job {
            t,
            z,
            batch,
            tan: Tan::None,
            rev: None,
            f: OutPtr::new(f),
            q: None,
            jv: None,
            jsq: None,
            jw: None,
            zbar: None,
            gate,
            shift,
        };
        self.drive(job, scratch, sums, Reduce { gsum, bsum, theta: None });
        Ok(())
    }

    fn eval_div(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        jac_sq: Option<&mut [T]>,
        ws: &mut MlpWorkspace<T>,
    ) -> Result<(), FieldError> {
        let d = self.cfg.dim;
        let batch = batch_of(z.len(), d)?;
        check_len("f", f, batch * d)?;
        check_len("q", q, batch)?;
        let tan = match div {
            Divergence::Exact => Tan::Exact,
            Divergence::Hutchinson(e) => {
                check_len("eps", e, batch * d)?;
                Tan::Dir(e)
            }
        };
        if let Some(s) = &jac_sq {
            check_len("jac_sq", s, batch)?;
        }
        let lanes = if matches!(tan, Tan::Exact) { d } else { 1 };
        ws.ensure(self, batch.div_ceil(self.cfg.chunk_size), lanes, false)?;
        self.time_vectors(t, ws);
        let MlpWorkspace { gate, shift, gsum, bsum, scratch, sums, .. } = ws;
        let job = Job {
            t,
            z,
            batch,
            tan,
            rev: None,
            f: OutPtr::new(f),
            q: Some(OutPtr::new(q)),
            jv: None,
            jsq: jac_sq.map(OutPtr::new),
            jw: None,
            zbar: None,
            gate,
            shift,
        };
        self.drive(job, scratch, sums, Reduce { gsum, bsum, theta: None });
        Ok(())
    }

    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut MlpWorkspace<T>,
    ) -> Result<(), FieldError> {
        let d = self.cfg.dim;
        let batch = batch_of(z.len(), d)?;
        check_len("v", v, batch * d)?;
        check_len("f", f, batch * d)?;
        check_len("jv", jv, batch * d)?;
        ws.ensure(self, batch.div_ceil(self.cfg.chunk_size), 1, false)?;
        self.time_vectors(t, ws);
        let MlpWorkspace { gate, shift, gsum, bsum, scratch, sums, .. } = ws;
        let job = Job {
            t,
            z,
            batch,
            tan: Tan::Dir(v),
            rev: None,
            f: OutPtr::new(f),
            q: None,
            jv: Some(OutPtr::new(jv)),
            jsq: None,
            jw: None,
            zbar: None,
            gate,
            shift,
        };
        self.drive(job, scratch, sums, Reduce { gsum, bsum, theta: None });
        Ok(())
    }

    fn vjp(
        &self,
        t: T,
        z: &[T],
        a: &[T],
        f: &mut [T],
        z_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        ws: &mut MlpWorkspace<T>,
    ) -> Result<T, FieldError> {
        let d = self.cfg.dim;
        let batch = batch_of(z.len(), d)?;
        check_len("a", a, batch * d)?;
        check_len("f", f, batch * d)?;
        check_len("z_cot", z_cot, batch * d)?;
        if let Some(th) = &theta_cot {
            check_len("theta_cot", th, self.params.len())?;
        }
        let want_theta = theta_cot.is_some();
        ws.ensure(self, batch.div_ceil(self.cfg.chunk_size), 0, want_theta)?;
        self.time_vectors(t, ws);
        let MlpWorkspace { gate, shift, gsum, bsum, scratch, sums, .. } = ws;
        let job = Job {
            t,
            z,
            batch,
            tan: Tan::None,
            rev: Some((a, None, want_theta)),
            f: OutPtr::new(f),
            q: None,
            jv: None,
            jsq: None,
            jw: None,
            zbar: Some(OutPtr::new(z_cot)),
            gate,
            shift,
        };
        Ok(self.drive(job, scratch, sums, Reduce { gsum, bsum, theta: theta_cot }))
    }

    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut MlpWorkspace<T>,
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
        ws: &mut MlpWorkspace<T>,
    ) -> Result<T, FieldError> {
        self.aug(t, z, div, a, c, Some(jac), out, ws)
    }
}

impl<T: Real> Mlp<T> {
    /// [`VectorField::vjp_aug`] (`jac: None`) and [`VectorField::vjp_aug_jac`]: one fused
    /// forward, tangent and reverse pass; the Jacobian term only adds `2 w_b u̇_L` to the
    /// tangent's output cotangent (see [`Mlp`]).
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
        ws: &mut MlpWorkspace<T>,
    ) -> Result<T, FieldError> {
        let d = self.cfg.dim;
        let batch = batch_of(z.len(), d)?;
        check_aug_lens(batch, d, self.params.len(), &div, a, c, &out, jac.as_ref())?;
        let AugmentedVjp { f, q, z_cot, theta_cot } = out;
        let (jw, jsq) = match jac {
            Some(JacobianTerm { w, jac_sq }) => (Some(w), Some(OutPtr::new(jac_sq))),
            None => (None, None),
        };
        let tan = match div {
            Divergence::Exact => Tan::Exact,
            Divergence::Hutchinson(e) => Tan::Dir(e),
        };
        let lanes = if matches!(tan, Tan::Exact) { d } else { 1 };
        let want_theta = theta_cot.is_some();
        ws.ensure(self, batch.div_ceil(self.cfg.chunk_size), lanes, want_theta)?;
        self.time_vectors(t, ws);
        let MlpWorkspace { gate, shift, gsum, bsum, scratch, sums, .. } = ws;
        let job = Job {
            t,
            z,
            batch,
            tan,
            rev: Some((a, Some(c), want_theta)),
            f: OutPtr::new(f),
            q: Some(OutPtr::new(q)),
            jv: None,
            jsq,
            jw,
            zbar: Some(OutPtr::new(z_cot)),
            gate,
            shift,
        };
        Ok(self.drive(job, scratch, sums, Reduce { gsum, bsum, theta: theta_cot }))
    }
}
