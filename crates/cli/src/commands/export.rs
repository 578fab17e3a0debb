//! `fewshot export`: a checkpoint's parameters and config without the optimiser state.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Device;

use super::refuse_to_overwrite_inputs;
use crate::checkpoint::Checkpoint;

/// `fewshot export --checkpoint CHECKPOINT --out OUT`.
pub fn run(checkpoint: PathBuf, out: PathBuf) -> anyhow::Result<ExitCode> {
    if !crate::ranks::is_writer() {
        return Ok(ExitCode::SUCCESS); // rank 0 writes the file
    }
    refuse_to_overwrite_inputs(&out, &[(&checkpoint, "the checkpoint it exports")], None)?;
    let mut ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
    ckpt.adam_m.clear();
    ckpt.adam_v.clear();
    ckpt.save(&out)?;
    eprintln!("wrote the parameters of {} to {}", checkpoint.display(), out.display());
    Ok(ExitCode::SUCCESS)
}
