//! The options of `odeflow train`, which are also the settings a run saves in its run.json
//! (the options about this process alone, such as `--out` and `--quiet`, are not saved).

use std::path::PathBuf;

use clap::Args;
use odeflow::cnf::Steps;

use crate::inputs::count;

/// The options of `odeflow train`; serialized, the run.json of a run. (The help text comes
/// from the subcommand's own doc comment, which clap puts over this one.)
#[derive(Args, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TrainArgs {
    /// Data: a toy set (8gaussians, swissroll, pinwheel, circles, moons, 2spirals,
    /// checkerboard, rings) or a file of points (CSV or .npy; `-` reads them from standard
    /// input, and a resumed run reads them there again).
    #[arg(long, default_value = "8gaussians")]
    pub(crate) data: String,
    /// Fraction of a data file held out for the test NLL.
    #[arg(long, default_value_t = 0.2)]
    pub(crate) test_fraction: f64,
    /// Train a flow model instead of a CNF: realnvp (affine couplings), nice (additive
    /// couplings), maf, nsf (spline couplings), iaf (affine), glow (LU 1×1 mixing + affine
    /// coupling per step), planar, radial, all shaped by --layers and --hidden (planar and
    /// radial use no --hidden); or realnvp+cnf: --layers affine couplings followed, at the
    /// data end, by one trainable CNF block whose MLP takes --hidden, --activation, --time,
    /// --blocks, --t-end, --train-t, --method, --rtol, --atol, --steps and the --adjoint
    /// options (exact trace only). --kinetic and --jacobian are refused with any flow, and
    /// the CNF options with the purely discrete kinds (--trace other than exact, --train-t,
    /// --adjoint-method, --seminorm, --forward-seminorm; the others are not used there).
    #[arg(long)]
    #[serde(default)]
    pub(crate) flow: Option<String>,
    /// Layers of a flow (couplings, MAF/IAF layers, Glow steps, planar or radial maps; with
    /// --flow).
    #[arg(long, default_value_t = 4, value_parser = count)]
    #[serde(default = "default_layers")]
    pub(crate) layers: usize,
    /// Hidden widths of each CNF block's MLP, or of each flow layer's conditioner,
    /// comma-separated (each at least 1).
    #[arg(long, value_delimiter = ',', default_value = "64,64,64", value_parser = count)]
    pub(crate) hidden: Vec<usize>,
    /// Activation: tanh, softplus, silu, elu.
    #[arg(long, default_value = "tanh")]
    pub(crate) activation: String,
    /// Time conditioning: concatsquash, concat, ignore.
    #[arg(long, default_value = "concatsquash")]
    pub(crate) time: String,
    /// Number of CNF blocks (at least 1).
    #[arg(long, default_value_t = 1, value_parser = count)]
    pub(crate) blocks: usize,
    /// Integration time T of each block.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) t_end: f64,
    /// Learn T (as FFJORD's train_T, T = τ²).
    #[arg(long)]
    pub(crate) train_t: bool,
    /// Solver method, an adaptive one: bosh3, dopri5, tsit5, dop853.
    #[arg(long, default_value = "dopri5")]
    pub(crate) method: String,
    /// Relative tolerance of the training solves.
    #[arg(long, default_value_t = 1e-5)]
    pub(crate) rtol: f64,
    /// Absolute tolerance of the training solves.
    #[arg(long, default_value_t = 1e-5)]
    pub(crate) atol: f64,
    /// Step-size rules: hairer (Hairer's PI controller and first step) or peers (the
    /// elementary controller of torchdiffeq and first step of diffrax: on FFJORD's toy net
    /// 15% faster training to the same test NLL, less accurate per tolerance). Saved in the
    /// model.
    #[arg(long, default_value = "hairer")]
    #[serde(default)]
    pub(crate) steps: Steps,
    /// Divergence: exact, hutchinson-gaussian, hutchinson-rademacher.
    #[arg(long, default_value = "exact")]
    pub(crate) trace: String,
    /// Gradient strategy: backsolve, checkpointed, discrete.
    #[arg(long, default_value = "checkpointed")]
    pub(crate) adjoint: String,
    /// Relative tolerance of the adjoint's backward solve (default: --rtol), as torchdiffeq's
    /// adjoint_rtol. With --adjoint checkpointed the gradient's error follows the backward
    /// tolerances and the forward's set the loss's: on FFJORD's toy net, --rtol 5e-5
    /// --atol 5e-5 --adjoint-rtol 5e-6 --adjoint-atol 5e-6 gives a more accurate gradient
    /// than 1e-5 for both, with a quarter fewer forward evaluations. Not used by discrete.
    #[arg(long)]
    #[serde(default)]
    pub(crate) adjoint_rtol: Option<f64>,
    /// Absolute tolerance of the adjoint's backward solve (default: --atol).
    #[arg(long)]
    #[serde(default)]
    pub(crate) adjoint_atol: Option<f64>,
    /// Method of the adjoint's backward solve (default: --method; an adaptive one), as
    /// diffrax's BacksolveAdjoint(solver=…). Not used by discrete, which replays the
    /// forward's own steps.
    #[arg(long)]
    #[serde(default)]
    pub(crate) adjoint_method: Option<String>,
    /// Leave the parameter cotangent out of the backward solve's error norm (the seminorm of
    /// Kidger et al. 2021), so that the backward steps are chosen for the state and its
    /// cotangent alone. Off by default: on FFJORD's toy net it is not never-worse (fewer
    /// backward evaluations in 6 of 36 measured runs, as many in 17, more in 13); it pays
    /// where the parameter cotangent limits the backward steps. Not used by discrete.
    #[arg(long)]
    #[serde(default)]
    pub(crate) seminorm: bool,
    /// Leave the log-density out of the forward solve's error norm, so that its steps are
    /// chosen for z alone. Meant for --adjoint checkpointed, whose gradient reads only z(t)
    /// from the forward: on FFJORD's toy net after 300 iterations, 38 instead of 50 forward
    /// evaluations at 1e-5 with the gradient as accurate, the logged loss less so. Backsolve
    /// and discrete gradients lose accuracy with it.
    #[arg(long)]
    #[serde(default)]
    pub(crate) forward_seminorm: bool,
    /// Kinetic-energy regularizer weight λ_K (RNODE): adds λ_K·mean ∫‖f‖² dt to the loss.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) kinetic: f64,
    /// Jacobian-Frobenius regularizer weight λ_J (RNODE): adds λ_J·mean ∫‖J ε‖² dt to the loss
    /// (J = ∂f/∂z, ε the solve's Hutchinson noise; ∫‖J‖²_F with --trace exact).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub(crate) jacobian: f64,
    /// Training iterations (in total, counting those before a --resume).
    #[arg(long, default_value_t = 500)]
    pub(crate) iterations: u64,
    /// Points per batch.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) lr: f64,
    /// Adam (coupled) weight decay.
    #[arg(long, default_value_t = 1e-5)]
    pub(crate) weight_decay: f64,
    /// Learning-rate schedule (PyTorch's, stepped once per iteration): constant; cosine or
    /// cosine:MIN_LR (CosineAnnealingLR over the run's --iterations: from --lr down toward
    /// MIN_LR, default 0, which the step after the last one reaches); step:EVERY:GAMMA (times
    /// GAMMA every EVERY iterations); warmup:STEPS (linear warm-up, then constant). A resumed
    /// run keeps its schedule, a cosine's length included: extended with --iterations, it
    /// goes on at MIN_LR.
    #[arg(long, default_value = "constant")]
    #[serde(default = "default_lr_schedule")]
    pub(crate) lr_schedule: String,
    /// Seed of the initial weights, the batches and the noise.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Test NLL every this many iterations (0: never).
    #[arg(long, default_value_t = 100)]
    pub(crate) test_every: u64,
    /// Points of a toy set's test set (0: no test set).
    #[arg(long, default_value_t = 2048)]
    pub(crate) test_points: usize,
    /// Checkpoint (state + model) every this many iterations (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub(crate) checkpoint_every: u64,
    /// Output folder: model.safetensors, best.safetensors (the model of the lowest test NLL),
    /// train_state.bin, train_log.csv, run.json, figures.
    #[arg(long, default_value = "out")]
    #[serde(skip)]
    pub(crate) out: PathBuf,
    /// Continue the run saved in --out (its run.json settings; --iterations may extend it).
    #[arg(long)]
    #[serde(skip)]
    pub(crate) resume: bool,
    /// Start a new run in an --out that holds one, replacing it (without this, train
    /// refuses such a folder: use --resume to continue the run there).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    pub(crate) overwrite: bool,
    /// Skip the figures at the end.
    #[arg(long)]
    #[serde(skip)]
    pub(crate) no_plot: bool,
    /// No progress bar (one line per test evaluation instead).
    #[arg(long)]
    #[serde(skip)]
    pub(crate) quiet: bool,
    /// Not an option: the CRC-32 of a data file's points when the run started, which
    /// `--resume` compares with the file's now (runs saved before it have none).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_crc32: Option<u32>,
    /// Not an option: the length of a cosine --lr-schedule, the run's --iterations when it
    /// started (kept when a resumed run extends them).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lr_schedule_length: Option<u64>,
}

/// The default of `--lr-schedule`, also for a run.json saved before schedules.
fn default_lr_schedule() -> String {
    "constant".into()
}

/// The default of `--layers`, also for a run.json saved before flows had layers.
fn default_layers() -> usize {
    4
}
