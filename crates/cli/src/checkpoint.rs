//! Checkpoints: parameters, Adam moments, step and run state in one safetensors file (the
//! state as its metadata), written atomically, plus a small JSON manifest beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use fewshot_model::ParamMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Format tag stored in every checkpoint.
pub const CHECKPOINT_FORMAT: &str = "fewshot-checkpoint-1";

/// Run state saved with the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Steps completed.
    pub step: usize,
    /// Tasks (or, for transfer, batches x meta_batch_size) seen.
    pub tasks_seen: usize,
    /// Adam's step counter.
    pub adam_step: u64,
    /// Best validation accuracy so far, if validated.
    pub best_val: Option<f64>,
    /// Validation accuracy at this step, if validated.
    pub val_acc: Option<f64>,
    /// The run's resolved config, as TOML. Episodes of step `s` are drawn from an RNG derived
    /// from `(config.seed, s)`, so `(seed, step)` is the whole RNG state.
    pub config: String,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Net parameters.
    pub params: ParamMap,
    /// Adam first moments.
    pub adam_m: ParamMap,
    /// Adam second moments.
    pub adam_v: ParamMap,
    /// Run state.
    pub state: State,
}

impl Checkpoint {
    /// The config stored in the checkpoint.
    pub fn config(&self, origin: &Path) -> anyhow::Result<Config> {
        Config::parse(&self.state.config, &format!("config inside {}", origin.display()), &[])
    }

    /// Write to `path` atomically (temporary file, then rename) and a manifest `<path>.json`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (prefix, map) in [("param.", &self.params), ("adam.m.", &self.adam_m), ("adam.v.", &self.adam_v)] {
            for (k, v) in map {
                tensors.push((format!("{prefix}{k}"), v.contiguous()?));
            }
        }
        let state = serde_json::to_string(&self.state)?;
        let metadata = HashMap::from([("state".to_owned(), state)]);
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
            .context("serialising checkpoint")?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        omniglot_data::write_atomic(path, &bytes)?;
        let manifest = serde_json::json!({
            "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "sha256": omniglot_data::sha256_bytes(&bytes),
            "step": self.state.step,
            "tasks_seen": self.state.tasks_seen,
            "val_acc": self.state.val_acc,
            "best_val": self.state.best_val,
        });
        omniglot_data::write_atomic(&manifest_path(path), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        Ok(())
    }

    /// Read a checkpoint file; errors name it. When its manifest `<path>.json` is there, the
    /// file's SHA-256 must match it; parameters must be finite.
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
        let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        let manifest = manifest_path(path);
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let recorded = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|m| m["sha256"].as_str().map(str::to_owned))
                .with_context(|| format!("{}: unreadable manifest (no sha256)", manifest.display()))?;
            let actual = omniglot_data::sha256_bytes(&bytes);
            if actual != recorded {
                bail!(
                    "{} does not match its manifest {} (SHA-256 {actual}, recorded {recorded}): the checkpoint \
                     was changed or damaged after it was written; use another checkpoint (e.g. best/last)",
                    path.display(),
                    manifest.display()
                );
            }
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors checkpoint", path.display()))?;
        let state: State = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .with_context(|| format!("{} has no run state: not a fewshot checkpoint", path.display()))
            .and_then(|s| {
                serde_json::from_str(s).with_context(|| format!("{}: unreadable run state", path.display()))
            })?;
        if state.format != CHECKPOINT_FORMAT {
            bail!("{}: checkpoint format `{}`, this build reads `{CHECKPOINT_FORMAT}`", path.display(), state.format);
        }
        let all = candle_core::safetensors::load_buffer(&bytes, device)
            .with_context(|| format!("reading tensors of {}", path.display()))?;
        let mut out = Checkpoint { params: ParamMap::new(), adam_m: ParamMap::new(), adam_v: ParamMap::new(), state };
        for (k, v) in all {
            if let Some(n) = k.strip_prefix("param.") {
                out.params.insert(n.to_owned(), v);
            } else if let Some(n) = k.strip_prefix("adam.m.") {
                out.adam_m.insert(n.to_owned(), v);
            } else if let Some(n) = k.strip_prefix("adam.v.") {
                out.adam_v.insert(n.to_owned(), v);
            } else {
                bail!("{}: unexpected tensor `{k}`", path.display());
            }
        }
        for (name, tensor) in &out.params {
            let finite = tensor
                .to_dtype(candle_core::DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                bail!("{}: parameter `{name}` holds NaN or infinite values; use another checkpoint", path.display());
            }
        }
        Ok(out)
    }
}

/// `<checkpoint>.json`.
pub fn manifest_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}
