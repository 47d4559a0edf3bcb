//! Butcher tableaux as `const` data, and the run-time method selector [`Method`].
//!
//! An explicit Runge–Kutta step of size h from (t, y) computes the stages
//!
//! ```text
//! k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j),   i = 1..s
//! y₁  = y + h Σ_i b_i k_i
//! ```
//!
//! and, for an embedded pair, the error estimate `e = h Σ_i (b_i − b̂_i) k_i`. All coefficients
//! are public `f64` data so that other code (the discrete adjoint) can re-run steps exactly.
#![allow(clippy::excessive_precision)]

use std::fmt;
use std::str::FromStr;

/// How a method estimates its local error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorEstimator {
    /// No estimate: a fixed-step method.
    None,
    /// An embedded pair: `e = h Σ_i e_i k_i` with `e_i = b_i − b̂_i` (one per step stage).
    Embedded {
        /// `b_i − b̂_i`, one per stage of a step (`Σ e_i = 0`).
        e: &'static [f64],
    },
    /// Hairer's blended estimator of DOP853 (HNW I, §II.10 and `dop853.f`): with the
    /// 5th-order difference `e5 = h Σ_j e5_j k_j` and the 3rd-order one `e3 = h Σ_j e3_j k_j`,
    /// each component scaled by `sk_i = atol_i + rtol·max(|y0_i|, |y1_i|)`, and
    /// `S5 = Σ_i (e5_i/sk_i)²`, `S3 = Σ_i (e3_i/sk_i)²` over n components,
    /// `err = S5 / sqrt(n·(S5 + 0.01·S3))` (the RMS of e5 when e3 is negligible; larger, and so
    /// more cautious, when the 3rd-order estimate dominates).
    Blended53 {
        /// Coefficients of the 5th-order difference (`Σ = 0`).
        e5: &'static [f64],
        /// Coefficients of the 3rd-order difference `b − b̂₃` (`Σ = 0`).
        e3: &'static [f64],
    },
}

/// The interpolant used for dense output on an accepted step of size h from (t0, y0) to
/// (t1, y1), evaluated at `θ = (t − t0)/h ∈ [0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DenseOutput {
    /// Hairer's continuous form (HNW I, §II.6 and `dopri5.f`/`dop853.f` `CONTD5`/`CONTD8`):
    /// with `Δ = y1 − y0`, `r1 = y0`, `r2 = Δ`, `r3 = h f0 − Δ`, `r4 = Δ − h f1 − r3` and
    /// `r_{4+m} = h Σ_j d_mj k_j` for each row `d_m` of `d`,
    ///
    /// ```text
    /// y(θ) = r1 + θ(r2 + (1−θ)(r3 + θ(r4 + (1−θ)(r5 + θ(r6 + (1−θ)(r7 + θ r8))))))
    /// ```
    ///
    /// With `d` empty this is the cubic Hermite interpolant through (y0, f0), (y1, f1)
    /// (order 3), used by the methods without an interpolant of their own. Stages with an
    /// index beyond [`Tableau::stages`] are computed only when dense output is needed.
    Hairer {
        /// The extra coefficient rows `d_m` (each as long as the tableau's `c`).
        d: &'static [&'static [f64]],
    },
    /// A polynomial in θ per stage: `y(θ) = y0 + h Σ_i b_i(θ) k_i` with
    /// `b_i(θ) = Σ_p coeffs[i][p] θ^(p+1)`; `b_i(1) = b_i`.
    Polynomial {
        /// One row per stage of a step, coefficients of θ¹, θ², ….
        coeffs: &'static [&'static [f64]],
    },
}

/// An explicit Runge–Kutta method as data.
///
/// Invariants (checked by the tests in `tableau.rs`): `a[i].len() == i`, `Σ_j a_ij = c_i`,
/// `Σ b_i = 1`, the error coefficients sum to zero, and `fsal` holds exactly when the last
/// stage of a step has `c = 1`, `a_s = b` and `b_s = 0` (its derivative is the first stage
/// of the next step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tableau {
    /// Short lower-case name (`"dopri5"`), the same as [`Method`]'s `Display`.
    pub name: &'static str,
    /// Where the coefficients come from.
    pub citation: &'static str,
    /// Classical order p of the propagated solution `y₁`.
    pub order: u8,
    /// Order q of the error estimate (the estimate behaves like `h^(q+1)`), or `None` for
    /// fixed-step methods. The step-size controller uses `k = q + 1`.
    pub error_order: Option<u8>,
    /// First-same-as-last: the last step stage is `f(t + h, y₁)`.
    pub fsal: bool,
    /// Nodes `c_i`, one per stage (including any dense-output-only stages).
    pub c: &'static [f64],
    /// Strictly lower-triangular Runge–Kutta matrix: `a[i]` holds `a_i0 … a_i,i−1`.
    pub a: &'static [&'static [f64]],
    /// Weights `b_i`; its length is the number of stages of a step ([`Tableau::stages`]).
    pub b: &'static [f64],
    /// The error estimator.
    pub error: ErrorEstimator,
    /// The dense-output interpolant.
    pub dense: DenseOutput,
}

impl Tableau {
    /// Number of stages evaluated by one step (`b.len()`), including an FSAL stage.
    pub const fn stages(&self) -> usize {
        self.b.len()
    }
    /// Whether the method carries an error estimate (adaptive step size).
    pub const fn is_adaptive(&self) -> bool {
        self.error_order.is_some()
    }
}

const HERMITE: DenseOutput = DenseOutput::Hairer { d: &[] };

/// Forward Euler, order 1: `y₁ = y + h f(t, y)`.
pub const EULER: Tableau = Tableau {
    name: "euler",
    citation: "L. Euler, Institutionum calculi integralis, 1768",
    order: 1,
    error_order: None,
    fsal: false,
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    error: ErrorEstimator::None,
    dense: HERMITE,
};

/// Explicit midpoint rule, order 2 (Runge 1895).
pub const MIDPOINT: Tableau = Tableau {
    name: "midpoint",
    citation: "C. Runge, Math. Ann. 46 (1895) 167–178",
    order: 2,
    error_order: None,
    fsal: false,
    c: &[0.0, 0.5],
    a: &[&[], &[0.5]],
    b: &[0.0, 1.0],
    error: ErrorEstimator::None,
    dense: HERMITE,
};

/// Heun's method (explicit trapezoidal rule), order 2 (Heun 1900).
pub const HEUN: Tableau = Tableau {
    name: "heun",
    citation: "K. Heun, Z. Math. Phys. 45 (1900) 23–38",
    order: 2,
    error_order: None,
    fsal: false,
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[0.5, 0.5],
    error: ErrorEstimator::None,
    dense: HERMITE,
};

/// The classic fourth-order Runge–Kutta method (Kutta 1901).
pub const RK4: Tableau = Tableau {
    name: "rk4",
    citation: "W. Kutta, Z. Math. Phys. 46 (1901) 435–453",
    order: 4,
    error_order: None,
    fsal: false,
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    error: ErrorEstimator::None,
    dense: HERMITE,
};

/// Bogacki–Shampine 3(2), FSAL, 4 stages (3 per step), cubic Hermite dense output.
pub const BOSH3: Tableau = Tableau {
    name: "bosh3",
    citation: "P. Bogacki, L. F. Shampine, Appl. Math. Lett. 2 (1989) 321–325",
    order: 3,
    error_order: Some(2),
    fsal: true,
    c: &[0.0, 0.5, 0.75, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.75], &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0]],
    b: &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0, 0.0],
    // b − b̂ with b̂ = (7/24, 1/4, 1/3, 1/8).
    error: ErrorEstimator::Embedded { e: &[-5.0 / 72.0, 1.0 / 12.0, 1.0 / 9.0, -1.0 / 8.0] },
    dense: HERMITE,
};

/// Dormand–Prince 5(4) ("DOPRI5"), FSAL, 7 stages (6 per step), with Shampine's 4th-order
/// dense output as in Hairer's `dopri5.f`.
pub const DOPRI5: Tableau = Tableau {
    name: "dopri5",
    citation: "J. R. Dormand, P. J. Prince, J. Comput. Appl. Math. 6 (1980) 19–26; dense output: \
               L. F. Shampine, Math. Comp. 46 (1986) 135–150; HNW I §II.5–II.6",
    order: 5,
    error_order: Some(4),
    fsal: true,
    c: &[0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
        &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
        &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
    ],
    b: &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0],
    error: ErrorEstimator::Embedded {
        e: &[
            71.0 / 57600.0,
            0.0,
            -71.0 / 16695.0,
            71.0 / 1920.0,
            -17253.0 / 339200.0,
            22.0 / 525.0,
            -1.0 / 40.0,
        ],
    },
    dense: DenseOutput::Hairer {
        d: &[&[
            -12715105075.0 / 11282082432.0,
            0.0,
            87487479700.0 / 32700410799.0,
            -10690763975.0 / 1880347072.0,
            701980252875.0 / 199316789632.0,
            -1453857185.0 / 822651844.0,
            69997945.0 / 29380423.0,
        ]],
    },
};

/// Tsitouras 5(4), FSAL, 7 stages (6 per step), with its own 4th-order interpolant.
pub const TSIT5: Tableau = Tableau {
    name: "tsit5",
    citation: "Ch. Tsitouras, Comput. Math. Appl. 62 (2011) 770–775 (coefficients to f64 as \
               tabulated in OrdinaryDiffEq.jl)",
    order: 5,
    error_order: Some(4),
    fsal: true,
    c: &[0.0, 0.161, 0.327, 0.9, 0.9800255409045096857298102862870245954942, 1.0, 1.0],
    a: &[
        &[],
        &[0.161],
        &[
            -0.008480655492356988544426874250230774675121,
            0.3354806554923569885444268742502307746751,
        ],
        &[
            2.897153057105493432130432594192938764924887,
            -6.359448489975074843148159912383825625952700,
            4.362295432869581411017727318190886861027813,
        ],
        &[
            5.325864828439256604428877920840511317836476,
            -11.74888356406282787774717033978577296188744,
            7.495539342889836208304604784564358155658679,
            -0.09249506636175524925650207933207191611349983,
        ],
        &[
            5.861455442946420028659251486982647890394337,
            -12.92096931784710929170611868178335939541780,
            8.159367898576158643180400794539253485181918,
            -0.07158497328140099722453054252582973869127213,
            -0.02826905039406838290900305721271224146717633,
        ],
        &TSIT5_B6,
    ],
    b: &[TSIT5_B6[0], TSIT5_B6[1], TSIT5_B6[2], TSIT5_B6[3], TSIT5_B6[4], TSIT5_B6[5], 0.0],
    error: ErrorEstimator::Embedded {
        e: &[
            -1.780011052225771443378550607539534775944678804333659557637450799792588061629796e-03,
            -8.164344596567469032236360633546862401862537590159047610940604670770447527463931e-04,
            7.880878010261996010314727672526304238628733777103128603258129604952959142646516e-03,
            -1.44711007173262907537165147972635116720922712343167677619514233896760819649515e-01,
            5.823571654525552250199376106520421794260781239567387797673045438803694038950012e-01,
            -4.580821059291869466616365188325542974428047279788398179474684434732070620889539e-01,
            1.0 / 66.0,
        ],
    },
    dense: DenseOutput::Polynomial {
        coeffs: &[
            &[
                1.0,
                -2.763706197274825911336735930481400260916070804192,
                2.91325546182191274375068099306808,
                -1.0530884977290216,
            ],
            &[0.0, 0.13169999999999999727, -0.22339999999999999818, 0.1017],
            &[
                0.0,
                3.93029623689475152850687446709813398,
                -5.94103387213150473470249202589458001,
                2.490627285651252793,
            ],
            &[
                0.0,
                -12.411077166933676983734381540685453484102414134010752,
                30.3381886302823215981729903691836576,
                -16.54810288924490272,
            ],
            &[
                0.0,
                37.50931341651103919496903965334519631242339792120440212,
                -88.1789048947664011014276693541209817,
                47.37952196281928122,
            ],
            &[
                0.0,
                -27.896526289197287805948263144598643896,
                65.09189467479367152629021928716553658,
                -34.87065786149660974,
            ],
            &[0.0, 1.5, -4.0, 2.5],
        ],
    },
};

const TSIT5_B6: [f64; 6] = [
    0.09646076681806522951816731316512876333711995,
    0.01,
    0.4798896504144995747752495322905965199130404,
    1.379008574103741893192274821856872770756462,
    -3.290069515436080679901047585711363850115683,
    2.324710524099773982415355918398765796109060,
];

/// Nodes c_i of DOP853 (stages 1–12 of the step, 13 = f(t+h, y₁), 14–16 dense-output stages).
const DOP853_C: [f64; 16] = [
    0.0,
    0.526001519587677318785587544488e-01,
    0.789002279381515978178381316732e-01,
    0.118350341907227396726757197510e+00,
    0.281649658092772603273242802490e+00,
    0.333333333333333333333333333333e+00,
    0.25e+00,
    0.307692307692307692307692307692e+00,
    0.651282051282051282051282051282e+00,
    0.6e+00,
    0.857142857142857142857142857142e+00,
    1.0,
    1.0,
    0.1e+00,
    0.2e+00,
    0.777777777777777777777777777778e+00,
];
const DOP853_A: [&[f64]; 16] = [
    &[],
    &[5.26001519587677318785587544488e-2],
    &[1.97250569845378994544595329183e-2, 5.91751709536136983633785987549e-2],
    &[2.95875854768068491816892993775e-2, 0.0, 8.87627564304205475450678981324e-2],
    &[
        2.41365134159266685502369798665e-1,
        0.0,
        -8.84549479328286085344864962717e-1,
        9.24834003261792003115737966543e-1,
    ],
    &[
        3.7037037037037037037037037037e-2,
        0.0,
        0.0,
        1.70828608729473871279604482173e-1,
        1.25467687566822425016691814123e-1,
    ],
    &[
        3.7109375e-2,
        0.0,
        0.0,
        1.70252211019544039314978060272e-1,
        6.02165389804559606850219397283e-2,
        -1.7578125e-2,
    ],
    &[
        3.70920001185047927108779319836e-2,
        0.0,
        0.0,
        1.70383925712239993810214054705e-1,
        1.07262030446373284651809199168e-1,
        -1.53194377486244017527936158236e-2,
        8.27378916381402288758473766002e-3,
    ],
    &[
        6.24110958716075717114429577812e-1,
        0.0,
        0.0,
        -3.36089262944694129406857109825e0,
        -8.68219346841726006818189891453e-1,
        2.75920996994467083049415600797e1,
        2.01540675504778934086186788979e1,
        -4.34898841810699588477366255144e1,
    ],
    &[
        4.77662536438264365890433908527e-1,
        0.0,
        0.0,
        -2.48811461997166764192642586468e0,
        -5.90290826836842996371446475743e-1,
        2.12300514481811942347288949897e1,
        1.52792336328824235832596922938e1,
        -3.32882109689848629194453265587e1,
        -2.03312017085086261358222928593e-2,
    ],
    &[
        -9.3714243008598732571704021658e-1,
        0.0,
        0.0,
        5.18637242884406370830023853209e0,
        1.09143734899672957818500254654e0,
        -8.14978701074692612513997267357e0,
        -1.85200656599969598641566180701e1,
        2.27394870993505042818970056734e1,
        2.49360555267965238987089396762e0,
        -3.0467644718982195003823669022e0,
    ],
    &[
        2.27331014751653820792359768449e0,
        0.0,
        0.0,
        -1.05344954667372501984066689879e1,
        -2.00087205822486249909675718444e0,
        -1.79589318631187989172765950534e1,
        2.79488845294199600508499808837e1,
        -2.85899827713502369474065508674e0,
        -8.87285693353062954433549289258e0,
        1.23605671757943030647266201528e1,
        6.43392746015763530355970484046e-1,
    ],
    &[
        5.42937341165687622380535766363e-2,
        0.0,
        0.0,
        0.0,
        0.0,
        4.45031289275240888144113950566e0,
        1.89151789931450038304281599044e0,
        -5.8012039600105847814672114227e0,
        3.1116436695781989440891606237e-1,
        -1.52160949662516078556178806805e-1,
        2.01365400804030348374776537501e-1,
        4.47106157277725905176885569043e-2,
    ],
    &[
        5.61675022830479523392909219681e-2,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        2.53500210216624811088794765333e-1,
        -2.46239037470802489917441475441e-1,
        -1.24191423263816360469010140626e-1,
        1.5329179827876569731206322685e-1,
        8.20105229563468988491666602057e-3,
        7.56789766054569976138603589584e-3,
        -8.298e-3,
    ],
    &[
        3.18346481635021405060768473261e-2,
        0.0,
        0.0,
        0.0,
        0.0,
        2.83009096723667755288322961402e-2,
        5.35419883074385676223797384372e-2,
        -5.49237485713909884646569340306e-2,
        0.0,
        0.0,
        -1.08347328697249322858509316994e-4,
        3.82571090835658412954920192323e-4,
        -3.40465008687404560802977114492e-4,
        1.41312443674632500278074618366e-1,
    ],
    &[
        -4.28896301583791923408573538692e-1,
        0.0,
        0.0,
        0.0,
        0.0,
        -4.69762141536116384314449447206e0,
        7.68342119606259904184240953878e0,
        4.06898981839711007970213554331e0,
        3.56727187455281109270669543021e-1,
        0.0,
        0.0,
        0.0,
        -1.39902416515901462129418009734e-3,
        2.9475147891527723389556272149e0,
        -9.15095847217987001081870187138e0,
    ],
];
const DOP853_B: [f64; 13] = [
    5.42937341165687622380535766363e-2,
    0.0,
    0.0,
    0.0,
    0.0,
    4.45031289275240888144113950566e0,
    1.89151789931450038304281599044e0,
    -5.8012039600105847814672114227e0,
    3.1116436695781989440891606237e-1,
    -1.52160949662516078556178806805e-1,
    2.01365400804030348374776537501e-1,
    4.47106157277725905176885569043e-2,
    0.0,
];
const DOP853_E5: [f64; 13] = [
    0.1312004499419488073250102996e-01,
    0.0,
    0.0,
    0.0,
    0.0,
    -0.1225156446376204440720569753e+01,
    -0.4957589496572501915214079952e+00,
    0.1664377182454986536961530415e+01,
    -0.3503288487499736816886487290e+00,
    0.3341791187130174790297318841e+00,
    0.8192320648511571246570742613e-01,
    -0.2235530786388629525884427845e-01,
    0.0,
];
const DOP853_E3: [f64; 13] = [
    5.42937341165687622380535766363e-2 - 0.244094488188976377952755905512e+00,
    0.0,
    0.0,
    0.0,
    0.0,
    4.45031289275240888144113950566e0,
    1.89151789931450038304281599044e0,
    -5.8012039600105847814672114227e0,
    3.1116436695781989440891606237e-1 - 0.733846688281611857341361741547e+00,
    -1.52160949662516078556178806805e-1,
    2.01365400804030348374776537501e-1,
    4.47106157277725905176885569043e-2 - 0.220588235294117647058823529412e-01,
    0.0,
];
const DOP853_D: [&[f64]; 4] = [
    &[
        -0.84289382761090128651353491142e+01,
        0.0,
        0.0,
        0.0,
        0.0,
        0.56671495351937776962531783590e+00,
        -0.30689499459498916912797304727e+01,
        0.23846676565120698287728149680e+01,
        0.21170345824450282767155149946e+01,
        -0.87139158377797299206789907490e+00,
        0.22404374302607882758541771650e+01,
        0.63157877876946881815570249290e+00,
        -0.88990336451333310820698117400e-01,
        0.18148505520854727256656404962e+02,
        -0.91946323924783554000451984436e+01,
        -0.44360363875948939664310572000e+01,
    ],
    &[
        0.10427508642579134603413151009e+02,
        0.0,
        0.0,
        0.0,
        0.0,
        0.24228349177525818288430175319e+03,
        0.16520045171727028198505394887e+03,
        -0.37454675472269020279518312152e+03,
        -0.22113666853125306036270938578e+02,
        0.77334326684722638389603898808e+01,
        -0.30674084731089398182061213626e+02,
        -0.93321305264302278729567221706e+01,
        0.15697238121770843886131091075e+02,
        -0.31139403219565177677282850411e+02,
        -0.93529243588444783865713862664e+01,
        0.35816841486394083752465898540e+02,
    ],
    &[
        0.19985053242002433820987653617e+02,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.38703730874935176555105901742e+03,
        -0.18917813819516756882830838328e+03,
        0.52780815920542364900561016686e+03,
        -0.11573902539959630126141871134e+02,
        0.68812326946963000169666922661e+01,
        -0.10006050966910838403183860980e+01,
        0.77771377980534432092869265740e+00,
        -0.27782057523535084065932004339e+01,
        -0.60196695231264120758267380846e+02,
        0.84320405506677161018159903784e+02,
        0.11992291136182789328035130030e+02,
    ],
    &[
        -0.25693933462703749003312586129e+02,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.15418974869023643374053993627e+03,
        -0.23152937917604549567536039109e+03,
        0.35763911791061412378285349910e+03,
        0.93405324183624310003907691704e+02,
        -0.37458323136451633156875139351e+02,
        0.10409964950896230045147246184e+03,
        0.29840293426660503123344363579e+02,
        -0.43533456590011143754432175058e+02,
        0.96324553959188282948394950600e+02,
        -0.39177261675615439165231486172e+02,
        -0.14972683625798562581422125276e+03,
    ],
];

/// Dormand–Prince 8(5,3) ("DOP853"): 12 stages per step plus the FSAL stage f(t+h, y₁),
/// Hairer's blended 5th/3rd-order error estimate and the 7th-order dense output that costs
/// three more stages (14–16) per step, only when dense output is needed.
pub const DOP853: Tableau = Tableau {
    name: "dop853",
    citation: "P. J. Prince, J. R. Dormand, J. Comput. Appl. Math. 7 (1981) 67–75; \
               E. Hairer, S. P. Nørsett, G. Wanner, Solving ODEs I, 2nd ed., §II.10, and \
               Hairer's dop853.f (coefficients, error estimate, dense output)",
    order: 8,
    error_order: Some(7),
    fsal: true,
    c: &DOP853_C,
    a: &DOP853_A,
    b: &DOP853_B,
    error: ErrorEstimator::Blended53 { e5: &DOP853_E5, e3: &DOP853_E3 },
    dense: DenseOutput::Hairer { d: &DOP853_D },
};

/// A method chosen at run time; `"dopri5".parse::<Method>()` and `Method::Dopri5.to_string()`
/// round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// [`EULER`], fixed step, order 1.
    Euler,
    /// [`MIDPOINT`], fixed step, order 2.
    Midpoint,
    /// [`HEUN`], fixed step, order 2.
    Heun,
    /// [`RK4`], fixed step, order 4.
    Rk4,
    /// [`BOSH3`], adaptive 3(2).
    Bosh3,
    /// [`DOPRI5`], adaptive 5(4).
    Dopri5,
    /// [`TSIT5`], adaptive 5(4).
    Tsit5,
    /// [`DOP853`], adaptive 8(5,3).
    Dop853,
}

impl Method {
    /// Every method, in order of increasing sophistication.
    pub const ALL: [Method; 8] = [
        Method::Euler,
        Method::Midpoint,
        Method::Heun,
        Method::Rk4,
        Method::Bosh3,
        Method::Dopri5,
        Method::Tsit5,
        Method::Dop853,
    ];

    /// The method's coefficients.
    pub const fn tableau(self) -> &'static Tableau {
        match self {
            Method::Euler => &EULER,
            Method::Midpoint => &MIDPOINT,
            Method::Heun => &HEUN,
            Method::Rk4 => &RK4,
            Method::Bosh3 => &BOSH3,
            Method::Dopri5 => &DOPRI5,
            Method::Tsit5 => &TSIT5,
            Method::Dop853 => &DOP853,
        }
    }

    /// The lower-case name used by `FromStr` and `Display`.
    pub const fn name(self) -> &'static str {
        self.tableau().name
    }

    /// Whether the method has an error estimate (and so adapts its step size).
    pub const fn is_adaptive(self) -> bool {
        self.tableau().is_adaptive()
    }

    /// Classical order of the method.
    pub const fn order(self) -> u8 {
        self.tableau().order
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`Method`] from an unknown name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method {name:?}; expected one of euler, midpoint, heun, rk4, bosh3, dopri5, tsit5, dop853")]
pub struct ParseMethodError {
    /// The name that was not recognised.
    pub name: String,
}

impl FromStr for Method {
    type Err = ParseMethodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Method::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .ok_or(ParseMethodError { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    //! Invariants of every tableau. Tolerances: the coefficients are f64 roundings of exact
    //! rationals or of 30-digit decimals, so sums agree to a few ulps of the largest term
    //! (DOP853's coefficients reach ~40 in magnitude, hence the scaling by Σ|terms|).
    use super::*;

    fn close(sum: f64, exact: f64, scale: f64) -> bool {
        (sum - exact).abs() <= 64.0 * f64::EPSILON * scale.max(1.0)
    }

    fn a_c(t: &Tableau, i: usize) -> (f64, f64) {
        let s: f64 = t.a[i].iter().sum();
        let m: f64 = t.a[i].iter().map(|x| x.abs()).sum();
        (s, m)
    }

    /// The eight order conditions up to order 4 for weights `w` (Butcher's trees).
    fn order_conditions(t: &Tableau, w: &[f64], p: u8) -> Vec<(String, f64, f64)> {
        let s = w.len();
        let c = &t.c[..s];
        let a = |i: usize, j: usize| if j < i { t.a[i][j] } else { 0.0 };
        let ac: Vec<f64> = (0..s).map(|i| (0..i).map(|j| a(i, j) * c[j]).sum()).collect();
        let ac2: Vec<f64> = (0..s).map(|i| (0..i).map(|j| a(i, j) * c[j] * c[j]).sum()).collect();
        let aac: Vec<f64> = (0..s).map(|i| (0..i).map(|j| a(i, j) * ac[j]).sum()).collect();
        let dot = |f: &dyn Fn(usize) -> f64| (0..s).map(|i| w[i] * f(i)).sum::<f64>();
        let mut v = vec![("Σb".to_string(), dot(&|_| 1.0), 1.0)];
        if p >= 2 {
            v.push(("Σbc".into(), dot(&|i| c[i]), 0.5));
        }
        if p >= 3 {
            v.push(("Σbc²".into(), dot(&|i| c[i] * c[i]), 1.0 / 3.0));
            v.push(("ΣbAc".into(), dot(&|i| ac[i]), 1.0 / 6.0));
        }
        if p >= 4 {
            v.push(("Σbc³".into(), dot(&|i| c[i].powi(3)), 0.25));
            v.push(("Σbc·Ac".into(), dot(&|i| c[i] * ac[i]), 0.125));
            v.push(("ΣbAc²".into(), dot(&|i| ac2[i]), 1.0 / 12.0));
            v.push(("ΣbAAc".into(), dot(&|i| aac[i]), 1.0 / 24.0));
        }
        v
    }

    fn check_order(t: &Tableau, w: &[f64], p: u8, what: &str) {
        for (name, got, want) in order_conditions(t, w, p) {
            // 1e-12 absolute: these sums involve DOP853 coefficients of size ~40 with
            // cancellation; a wrong digit anywhere shows up far above this.
            assert!((got - want).abs() < 1e-12, "{} {what}: {name} = {got}, want {want}", t.name);
        }
    }

    #[test]
    fn shapes_row_sums_and_weights() {
        for m in Method::ALL {
            let t = m.tableau();
            assert_eq!(t.name, m.name());
            assert_eq!(t.a.len(), t.c.len(), "{}", t.name);
            assert!(t.b.len() <= t.c.len() && t.b.len() <= MAX_STAGES_CHECK);
            for (i, row) in t.a.iter().enumerate() {
                assert_eq!(row.len(), i, "{} row {i}", t.name);
                let (s, scale) = a_c(t, i);
                assert!(close(s, t.c[i], scale), "{} row {i}: Σa = {s}, c = {}", t.name, t.c[i]);
            }
            let sb: f64 = t.b.iter().sum();
            assert!(close(sb, 1.0, t.b.iter().map(|x| x.abs()).sum()), "{}: Σb = {sb}", t.name);
        }
    }

    const MAX_STAGES_CHECK: usize = 16;

    #[test]
    fn fsal_flag_follows_from_data() {
        for m in Method::ALL {
            let t = m.tableau();
            let s = t.stages();
            let last = s - 1;
            let derived = s > 1
                && t.c[last].to_bits() == 1.0f64.to_bits()
                && t.b[last].abs() <= 0.0
                && t.a[last].iter().zip(&t.b[..last]).all(|(x, y)| x.to_bits() == y.to_bits());
            assert_eq!(t.fsal, derived, "{}", t.name);
        }
    }

    #[test]
    fn error_coefficients_sum_to_zero_and_embedded_orders() {
        for m in Method::ALL {
            let t = m.tableau();
            let rows: Vec<&[f64]> = match t.error {
                ErrorEstimator::None => {
                    assert!(t.error_order.is_none());
                    vec![]
                }
                ErrorEstimator::Embedded { e } => vec![e],
                ErrorEstimator::Blended53 { e5, e3 } => vec![e5, e3],
            };
            for e in &rows {
                assert_eq!(e.len(), t.stages(), "{}", t.name);
                let s: f64 = e.iter().sum();
                let scale: f64 = e.iter().map(|x| x.abs()).sum();
                assert!(close(s, 0.0, scale), "{}: Σe = {s}", t.name);
            }
            // The embedded weights b̂ = b − e satisfy the order conditions of their order
            // (checked up to order 4, the trees implemented above).
            if let ErrorEstimator::Embedded { e } = t.error {
                let bhat: Vec<f64> = t.b.iter().zip(e).map(|(b, e)| b - e).collect();
                check_order(t, &bhat, t.error_order.unwrap().min(4), "embedded");
            }
            if let ErrorEstimator::Blended53 { e5, e3 } = t.error {
                let b5: Vec<f64> = t.b.iter().zip(e5).map(|(b, e)| b - e).collect();
                let b3: Vec<f64> = t.b.iter().zip(e3).map(|(b, e)| b - e).collect();
                check_order(t, &b5, 4, "5th-order embedded");
                check_order(t, &b3, 3, "3rd-order embedded");
            }
        }
    }

    #[test]
    fn main_weights_satisfy_order_conditions() {
        for m in Method::ALL {
            let t = m.tableau();
            check_order(t, t.b, t.order.min(4), "main");
        }
    }

    #[test]
    fn dense_output_consistency() {
        for m in Method::ALL {
            let t = m.tableau();
            match t.dense {
                // Exactness for y' = const requires each extra row to sum to zero.
                DenseOutput::Hairer { d } => {
                    for row in d {
                        assert_eq!(row.len(), t.c.len(), "{}", t.name);
                        let s: f64 = row.iter().sum();
                        let scale: f64 = row.iter().map(|x| x.abs()).sum();
                        assert!(close(s, 0.0, scale), "{}: Σd = {s}", t.name);
                    }
                }
                // b_i(1) = b_i and Σ_i b_i(θ) = θ.
                DenseOutput::Polynomial { coeffs } => {
                    assert_eq!(coeffs.len(), t.stages());
                    let bt = |i: usize, th: f64| -> f64 {
                        coeffs[i].iter().enumerate().map(|(p, c)| c * th.powi(p as i32 + 1)).sum()
                    };
                    for i in 0..t.stages() {
                        assert!((bt(i, 1.0) - t.b[i]).abs() < 1e-14, "{} b_{i}(1)", t.name);
                    }
                    for th in [0.1, 0.37, 0.5, 0.9] {
                        let s: f64 = (0..t.stages()).map(|i| bt(i, th)).sum();
                        assert!((s - th).abs() < 1e-13, "{}: Σb_i({th}) = {s}", t.name);
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.to_string().parse::<Method>(), Ok(m));
            assert_eq!(m.name().to_uppercase().parse::<Method>(), Ok(m));
        }
        assert_eq!("rk45".parse::<Method>(), Err(ParseMethodError { name: "rk45".into() }));
        assert!(!Method::Rk4.is_adaptive() && Method::Dop853.is_adaptive());
    }
}
