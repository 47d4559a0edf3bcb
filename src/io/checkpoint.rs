//! The peer harness's checkpoints of FFJORD's ODEnet (`shared/peers/python`, `.npz`).
//!
//! Layer `i` is stored as `{i}_W` `[out, in]`, `{i}_b` `[out]`, `{i}_gw` `[out, 1]`
//! (hyper-gate weight), `{i}_gb` `[out]` (hyper-gate bias) and `{i}_cw` `[out, 1]`
//! (hyper-bias weight): a ConcatSquash layer `(W h + b) ⊙ sigmoid(gw t + gb) + cw t`.

use std::path::Path;

use crate::field::{Activation, Mlp, MlpConfig, Real, TimeConditioning, VectorField};
use crate::io::{NpyError, NpzReader};
use crate::Error;

/// The npz key of the parameter block `name` of layer `i` (FFJORD names, see
/// [`crate::field::ParamBlock`]).
fn npz_key(block: &str) -> Option<(usize, &'static str)> {
    let rest = block.strip_prefix("layers.")?;
    let (i, part) = rest.split_once('.')?;
    let key = match part {
        "_layer.weight" => "W",
        "_layer.bias" => "b",
        "_hyper_gate.weight" => "gw",
        "_hyper_gate.bias" => "gb",
        "_hyper_bias.weight" => "cw",
        _ => return None,
    };
    Some((i.parse().ok()?, key))
}

/// Loads a ConcatSquash MLP from a peer checkpoint. The widths are read from the file;
/// `activation` is the one the checkpoint was trained with (tanh for the toy net).
pub fn load_peer_checkpoint<T: Real>(
    path: impl AsRef<Path>,
    activation: Activation,
) -> Result<Mlp<T>, Error> {
    let path = path.as_ref();
    let mut npz = NpzReader::open(path)?;
    let mut widths = Vec::new();
    for i in 0.. {
        match npz.array(&format!("{i}_W")) {
            Ok(w) if w.shape.len() == 2 => {
                if i == 0 {
                    widths.push(w.shape[1]);
                }
                widths.push(w.shape[0]);
            }
            Ok(w) => {
                return Err(NpyError::Format {
                    path: path.to_path_buf(),
                    reason: format!("{i}_W has shape {:?}, expected [out, in]", w.shape),
                }
                .into())
            }
            Err(NpyError::MissingArray { .. }) if i > 0 => break,
            Err(e) => return Err(e.into()),
        }
    }
    let (dim, hidden) = (widths[0], widths[1..widths.len() - 1].to_vec());
    let cfg = MlpConfig {
        dim,
        hidden,
        activation,
        time: TimeConditioning::ConcatSquash,
        ..Default::default()
    };
    let mut mlp = Mlp::<T>::new(&cfg)?;
    let blocks = mlp.blocks().to_vec();
    for block in blocks {
        let Some((i, key)) = npz_key(&block.name) else {
            return Err(NpyError::Format {
                path: path.to_path_buf(),
                reason: format!("no npz key for {}", block.name),
            }
            .into());
        };
        let name = format!("{i}_{key}");
        let a = npz.array(&name)?;
        if a.data.len() != block.len() {
            return Err(NpyError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "{name} has shape {:?}, the layer needs {:?}",
                    a.shape, block.shape
                ),
            }
            .into());
        }
        for (p, &v) in mlp.params_mut()[block.range()].iter_mut().zip(&a.data) {
            *p = T::from_f64c(v);
        }
    }
    Ok(mlp)
}
