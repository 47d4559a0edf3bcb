//! The files of a training run in its `--out` folder: their paths, the folder's lock, the
//! start of a new run there with its settings (run.json), and the fingerprint of its data
//! that run.json keeps.

use std::fs::File;
use std::path::{Path, PathBuf};

use odeflow::io::write_atomically;

use crate::inputs::create_dir;
use crate::train_args::TrainArgs;

/// The CRC-32 of a data set: its column count and the bits of its values, so that the same
/// points written another way (CSV or .npy, other spacing) give the same.
pub(crate) fn points_crc32(cols: usize, data: &[f64]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(cols as u64).to_le_bytes());
    for v in data {
        h.update(&v.to_bits().to_le_bytes());
    }
    h.finalize()
}

/// A training run's folder (`--out`) and the paths of its files, with the folder's lock once
/// this process holds it ([`lock_run`]): the lock is held for as long as this value lives,
/// so the `train` command keeps it until the training ends.
pub(crate) struct RunFolder {
    /// The folder itself.
    pub(crate) out: PathBuf,
    /// run.json: the run's settings, for `--resume`.
    pub(crate) settings_file: PathBuf,
    /// train_state.bin: the training state, to resume from.
    pub(crate) state_file: PathBuf,
    /// model.safetensors: the trained model.
    pub(crate) model_file: PathBuf,
    /// best.safetensors: the model of the lowest test NLL so far.
    pub(crate) best_model_file: PathBuf,
    /// train_log.csv: one row per iteration.
    pub(crate) log_file: PathBuf,
    /// The folder's lock: `None` until taken, and where there is nothing to lock.
    _lock: Option<File>,
}

impl RunFolder {
    /// The run folder `out`, not yet locked.
    pub(crate) fn new(out: &Path) -> Self {
        RunFolder {
            out: out.to_path_buf(),
            settings_file: out.join("run.json"),
            state_file: out.join("train_state.bin"),
            model_file: out.join("model.safetensors"),
            best_model_file: out.join("best.safetensors"),
            log_file: out.join("train_log.csv"),
            _lock: None,
        }
    }

    /// Takes the folder's lock ([`lock_run`]) to resume the run in it, before its run.json
    /// is read, and removes what a killed process left half-written there
    /// ([`remove_stale_temporaries`](RunFolder::remove_stale_temporaries)).
    pub(crate) fn lock_to_resume(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self._lock = lock_run(&self.out)?;
        self.remove_stale_temporaries();
        Ok(())
    }

    /// Once this process holds the folder's lock, no other train writes here: removes the
    /// temporary files of the run's files and figures that a killed process left
    /// ([`odeflow::io::remove_stale_temporaries`]), naming each on stderr. Without the lock
    /// it removes nothing.
    fn remove_stale_temporaries(&self) {
        if self._lock.is_none() {
            return;
        }
        let names = [
            "model.safetensors",
            "best.safetensors",
            "train_state.bin",
            "train_log.csv",
            "run.json",
        ];
        for path in odeflow::io::remove_stale_temporaries(&self.out, &names) {
            eprintln!("removed {} (left by a process that was killed)", path.display());
        }
    }

    /// Starts a new run here: creates the folder, takes its lock ([`lock_run`]), refuses
    /// one that holds a run unless `--overwrite` (then removes its state, log and best model,
    /// so that a later `--resume` cannot pair them with the new settings), and writes the settings
    /// (for `--resume`). Called once the settings are known to be valid: a refused command
    /// leaves an earlier run's run.json as it was.
    pub(crate) fn start_run(&mut self, a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
        let out = &self.out;
        create_dir(out)?;
        self._lock = lock_run(out)?;
        if self.state_file.exists() || self.settings_file.exists() {
            if !a.overwrite {
                return Err(format!(
                    "{} holds a run (run.json, train_state.bin): continue it with --resume, or \
                     pass --overwrite to start a new run there (replacing it)",
                    out.display()
                )
                .into());
            }
            for p in [&self.state_file, &self.log_file, &self.best_model_file] {
                match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("cannot remove {}: {e}", p.display()).into())
                    }
                    _ => {}
                }
            }
        }
        self.remove_stale_temporaries();
        write_run(&self.settings_file, a)
    }
}

/// Takes the run folder `out` for this process: an exclusive advisory lock (`flock`) on the
/// folder itself, which the system releases when the process ends, however it ends. Two
/// `train` runs in one folder would otherwise mix its model, state and log; the second is
/// refused instead. `None` where there is nothing to lock (no folder yet: a resume then
/// fails on its missing run.json) or the folder cannot be locked (the run goes on unlocked,
/// as before, with a warning: the lock protects, it never stops a run that could go on).
#[cfg(unix)]
fn lock_run(out: &Path) -> Result<Option<File>, Box<dyn std::error::Error>> {
    use std::fs::TryLockError;
    use std::io::ErrorKind;
    let unlocked = |e: std::io::Error| {
        eprintln!(
            "odeflow: warning: cannot lock the run folder {} ({e}): another train could write there at \
             the same time",
            out.display()
        );
        Ok(None)
    };
    let dir = match std::fs::File::open(out) {
        Ok(dir) => dir,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return unlocked(e),
    };
    match dir.try_lock() {
        Ok(()) => Ok(Some(dir)),
        Err(TryLockError::WouldBlock) => Err(format!(
            "{} is in use by another odeflow train (it holds the folder's lock): wait for it \
             to end, or choose another --out",
            out.display()
        )
        .into()),
        // A file system that cannot lock the folder (no locks at all, or NFS, which
        // emulates flock with a write lock a read-only handle may not take).
        Err(TryLockError::Error(e)) => unlocked(e),
    }
}

/// Elsewhere runs go unlocked.
#[cfg(not(unix))]
fn lock_run(_out: &Path) -> Result<Option<File>, Box<dyn std::error::Error>> {
    Ok(None)
}

/// Writes the run's settings (for `--resume`).
fn write_run(path: &Path, a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let json = serde_json::to_string_pretty(a)?;
    write_atomically(path, |w| std::io::Write::write_all(w, json.as_bytes()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_checksum_sees_values_and_shape_not_layout() {
        let points = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let crc = points_crc32(2, &points);
        // The same values as 3 points in 2-D and as 2 points in 3-D are different data.
        assert_ne!(crc, points_crc32(3, &points));
        // One value changed, in its last bit.
        let mut nudged = points;
        nudged[4] = f64::from_bits(5f64.to_bits() + 1);
        assert_ne!(crc, points_crc32(2, &nudged));
        // -0 and 0 are different bits.
        assert_ne!(points_crc32(1, &[0.0]), points_crc32(1, &[-0.0]));
    }
}
