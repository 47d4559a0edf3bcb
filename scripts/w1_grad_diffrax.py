"""Dumps diffrax's W1 gradients (peers.md: FFJORD's toy net, batch 512, T = 0.5, dopri5,
exact trace, f64) so that `examples/grad_work_precision.rs` can set their accuracy beside
odeflow's on the same batches.

Run with the peer harness's JAX environment, from a writable copy of its directory
(`shared/peers/python`, which holds `common.py` and `ckpt/`):

    cp -r shared/peers/python /tmp/peerrun && cd /tmp/peerrun
    python /path/to/odeflow/scripts/w1_grad_diffrax.py --ckpt-dir ckpt --out ckpt/w1grad
    cargo run --release --example grad_work_precision -- /tmp/peerrun/ckpt/w1grad

For each checkpoint (`init_toy.npz`, `torch_f32_iter0300.npz`) and each of the first
`--batches` timing batches of the harness's W1 (`common.batches_8gaussians(4004, 64, 512)`)
it writes, under `--out`:
- `batch{k}.npy`: the 512 × 2 batch;
- `{ckpt}_b{k}_{label}.npz`: the gradient of the mean NLL in the checkpoint's own layout
  (`{i}_W`, `{i}_b`, `{i}_gw`, `{i}_gb`, `{i}_cw`), for the labels
  `backsolve_{tol}` for each of `--backsolve-tols` (1e-05 is what the harness times),
  `recursive_1e-05` (backprop through the solver's steps) and `recursive_1e-11` (the
  tight reference);
- one JSON line per gradient, on stdout and in `diffrax.jsonl` (which the example reads):
  loss, forward and backward NFE, and the median wall time of `--reps` gradients (`jax.value_and_grad`, compiled, without the NFE
  counting callbacks; the first call, which compiles, is not timed).

The solver settings are the harness's (`bench_diffrax.py`): `diffrax.Dopri5`,
`PIDController(rtol, atol, norm=mixed_norm)`, `SaveAt(t1=True)`.
"""

import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt-dir", default="ckpt")
ap.add_argument("--out", default="ckpt/w1grad")
ap.add_argument("--batches", type=int, default=4)
ap.add_argument("--ckpts", default="init_toy.npz,torch_f32_iter0300.npz")
ap.add_argument("--backsolve-tols", default="5e-6,1e-5,2e-5,5e-5,1e-4")
ap.add_argument("--reps", type=int, default=5, help="timed gradients per batch")
args = ap.parse_args()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.getcwd())
import common as C  # noqa: E402

T_END = C.T_END


def mlp(params, t, x):
    h = x
    for i, l in enumerate(params):
        gate = jax.nn.sigmoid(l["gw"][:, 0] * t + l["gb"])
        h = (h @ l["W"].T + l["b"]) * gate + l["cw"][:, 0] * t
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return h


NFE = {"n": 0}


def _inc():
    NFE["n"] += 1


def dyn_exact(params, t, y, counted):
    if counted:
        jax.debug.callback(_inc)
    x, _ = y
    f, lin = jax.linearize(lambda xx: mlp(params, t, xx), x)
    tr = 0.0
    for i in range(x.shape[1]):
        tr = tr + lin(jnp.zeros_like(x).at[:, i].set(1.0))[:, i]
    return f, -tr


def mixed_norm(tree):
    leaves = [jax.lax.stop_gradient(l) for l in jax.tree_util.tree_leaves(tree) if l.size > 0]
    out = None
    for l in leaves:
        r = jnp.sqrt(jnp.mean(jnp.square(l)))
        out = r if out is None else jnp.maximum(out, r)
    return out


def nll(params, x, tol, adjoint, counted):
    b = x.shape[0]
    term = diffrax.ODETerm(lambda t, y, a: dyn_exact(a, t, y, counted))
    adj = diffrax.BacksolveAdjoint() if adjoint == "backsolve" else diffrax.RecursiveCheckpointAdjoint()
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Dopri5(),
        0.0,
        T_END,
        None,
        (x, jnp.zeros((b,), x.dtype)),
        args=params,
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol, norm=mixed_norm),
        adjoint=adj,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=100_000,
    )
    z, dlogp = (a[0] for a in sol.ys)
    logpz = -0.5 * z.shape[1] * jnp.log(2 * jnp.pi) - 0.5 * jnp.sum(z * z, axis=1)
    return -jnp.mean(logpz - dlogp)


def main():
    os.makedirs(args.out, exist_ok=True)
    batches = C.batches_8gaussians(4004, 64, C.BATCH_TOY)[: args.batches]
    for k, xb in enumerate(batches):
        np.save(os.path.join(args.out, "batch%d.npy" % k), np.asarray(xb, np.float64))
    settings = [("backsolve", float(t)) for t in args.backsolve_tols.split(",")]
    settings += [("recursive", 1e-5), ("recursive", 1e-11)]
    log = open(os.path.join(args.out, "diffrax.jsonl"), "w")
    for name in args.ckpts.split(","):
        params = [{k: jnp.asarray(v, jnp.float64) for k, v in l.items()}
                  for l in C.load_params(os.path.join(args.ckpt_dir, name))]
        stem = name.rsplit(".", 1)[0]
        for adjoint, tol in settings:
            fwd = jax.jit(lambda p, x: nll(p, x, tol, adjoint, True))
            grad = jax.jit(jax.value_and_grad(lambda p, x: nll(p, x, tol, adjoint, True)))
            timed = jax.jit(jax.value_and_grad(lambda p, x: nll(p, x, tol, adjoint, False)))
            for k, xb in enumerate(batches):
                x = jnp.asarray(xb, jnp.float64)
                NFE["n"] = 0
                fwd(params, x).block_until_ready()
                jax.effects_barrier()
                nf = NFE["n"]
                NFE["n"] = 0
                loss, g = grad(params, x)
                jax.block_until_ready(g)
                jax.effects_barrier()
                times = []
                jax.block_until_ready(timed(params, x))  # compiles (first batch)
                for _ in range(args.reps if tol > 1e-9 else 0):
                    t0 = time.perf_counter()
                    jax.block_until_ready(timed(params, x))
                    times.append(time.perf_counter() - t0)
                label = "%s_%g" % (adjoint, tol)
                C.save_params(os.path.join(args.out, "%s_b%d_%s.npz" % (stem, k, label)),
                              [{kk: np.asarray(v) for kk, v in l.items()} for l in g])
                line = json.dumps({"ckpt": stem, "batch": k, "setting": label, "loss": float(loss),
                                   "nfe_fwd": nf, "nfe_bwd": NFE["n"] - nf,
                                   "grad_s_median": sorted(times)[len(times) // 2] if times else None})
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()


if __name__ == "__main__":
    main()
