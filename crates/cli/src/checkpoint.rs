//! Checkpoints: parameters, Adam moments, step and run state in one safetensors file (the
//! state as its metadata), written atomically, plus a small JSON manifest beside it.
//!
//! The file checks itself: its metadata holds the SHA-256 of its run state and tensor data
//! (`sha256`), so one rename publishes the data and their checksum together. The manifest is
//! written after it, for people and tools; a manifest of another write of the same path (a
//! crash between the two renames, or a reader racing a rewrite) does not make a sound file
//! unreadable. Files from before the embedded checksum are checked against their manifest
//! alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use fewshot_model::ParamMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::settings::Settings;

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

    /// The settings of the config stored in the checkpoint.
    pub fn settings(&self, origin: &Path) -> anyhow::Result<Settings> {
        Settings::resolve(self.config(origin)?)
            .with_context(|| format!("config inside {}: invalid configuration", origin.display()))
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
        let serialize = |metadata: HashMap<String, String>| {
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
                .context("serialising checkpoint")
        };
        // The data section does not depend on the metadata: serialise once to digest it, then
        // again with the digest beside the state.
        let plain = serialize(HashMap::from([("state".to_owned(), state.clone())]))?;
        let digest = content_digest(&state, data_section(&plain)?);
        let bytes = serialize(HashMap::from([("state".to_owned(), state), ("sha256".to_owned(), digest)]))?;
        let bytes = metadata_in_order(bytes)?;
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

    /// Read a checkpoint file; errors name it. Its run state and tensors must match the
    /// checksum inside it (files written before it had one: the checksum in its manifest
    /// `<path>.json`, when there is one); parameters must be finite.
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
        let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        let manifest = manifest_path(path);
        let recorded = match std::fs::read_to_string(&manifest) {
            Ok(text) => Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|m| m["sha256"].as_str().map(str::to_owned))
                    .with_context(|| format!("{}: unreadable manifest (no sha256)", manifest.display()))?,
            ),
            Err(_) => None,
        };
        let actual = omniglot_data::sha256_bytes(&bytes);
        let damaged = |what: &str| {
            anyhow::anyhow!(
                "{} does not match {what}: the checkpoint was changed or damaged after it was written; use \
                 another checkpoint (e.g. best/last)",
                path.display()
            )
        };
        let meta = match safetensors::SafeTensors::read_metadata(&bytes) {
            Ok((_, meta)) => meta,
            // Unreadable: a manifest that disagrees says why (damage); otherwise it never was one.
            Err(_) if recorded.as_ref().is_some_and(|r| *r != actual) => {
                let recorded = recorded.as_deref().unwrap_or_default();
                return Err(damaged(&format!(
                    "its manifest {} (SHA-256 {actual}, recorded {recorded})",
                    manifest.display()
                )));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("{} is not a safetensors checkpoint", path.display()));
            }
        };
        let metadata = meta.metadata().clone().unwrap_or_default();
        let state_text = metadata
            .get("state")
            .with_context(|| format!("{} has no run state: not a fewshot checkpoint", path.display()))?;
        match (metadata.get("sha256"), &recorded) {
            // The manifest of this very write: nothing more to check.
            (_, Some(recorded)) if *recorded == actual => {}
            (Some(inside), _) => {
                let computed = content_digest(state_text, data_section(&bytes)?);
                if computed != *inside {
                    let manifest_too = match recorded {
                        Some(_) => format!("its manifest {} nor ", manifest.display()),
                        None => String::new(),
                    };
                    return Err(damaged(&format!(
                        "{manifest_too}the checksum written into it (SHA-256 of its state and tensors \
                         {computed}, recorded {inside})"
                    )));
                }
                if recorded.is_some() {
                    tracing::warn!(
                        "{} is of another write of {} (a crash between writing the two, or a rewrite while \
                         reading); the checkpoint matches the checksum inside it",
                        manifest.display(),
                        path.display()
                    );
                }
            }
            (None, Some(recorded)) => {
                return Err(damaged(&format!(
                    "its manifest {} (SHA-256 {actual}, recorded {recorded})",
                    manifest.display()
                )));
            }
            (None, None) => tracing::warn!(
                "{} has no manifest and no checksum inside it (an older checkpoint, copied alone): its \
                 integrity was not checked",
                path.display()
            ),
        }
        let state: State =
            serde_json::from_str(state_text).with_context(|| format!("{}: unreadable run state", path.display()))?;
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

/// The safetensors file `bytes` with its metadata keys in sorted order. safetensors writes the
/// metadata from a `HashMap`, whose order is drawn anew for every map, so the same checkpoint
/// came out as different bytes from run to run (a run and its resumed twin differed in their
/// header alone). The sorted header has the same length, so the data section stays in place.
fn metadata_in_order(mut bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let n = n.filter(|n| 8 + n <= bytes.len()).context("serialised checkpoint without a header")?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).context("serialised checkpoint header")?;
    if let Some(serde_json::Value::Object(meta)) = header.get_mut("__metadata__") {
        let sorted: std::collections::BTreeMap<String, serde_json::Value> = std::mem::take(meta).into_iter().collect();
        meta.extend(sorted);
    }
    let text = serde_json::to_vec(&header)?;
    anyhow::ensure!(text.len() <= n, "reordered checkpoint header grew ({} > {n} bytes)", text.len());
    bytes[8..8 + text.len()].copy_from_slice(&text);
    bytes[8 + text.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// The tensor data of serialised safetensors bytes: what follows the 8-byte header length and
/// the header.
fn data_section(bytes: &[u8]) -> anyhow::Result<&[u8]> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    n.and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_add(8))
        .and_then(|start| bytes.get(start..))
        .context("a safetensors header longer than the file")
}

/// The checksum a checkpoint carries: SHA-256 of its run state's JSON, then its tensor data.
fn content_digest(state: &str, data: &[u8]) -> String {
    let mut all = Vec::with_capacity(state.len() + data.len());
    all.extend_from_slice(state.as_bytes());
    all.extend_from_slice(data);
    omniglot_data::sha256_bytes(&all)
}

/// `<checkpoint>.json`.
pub fn manifest_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_checkpoint_is_the_same_bytes_and_loads() {
        let config = fewshot_model::ConvNetConfig { in_channels: 1, image_size: 8, hidden: 2, depth: 1, n_way: 2 };
        let params = fewshot_model::init(&config, 0, candle_core::DType::F32, &Device::Cpu).unwrap();
        let checkpoint = Checkpoint {
            adam_m: params.clone(),
            adam_v: params.clone(),
            params,
            state: State {
                format: CHECKPOINT_FORMAT.to_owned(),
                step: 3,
                tasks_seen: 12,
                adam_step: 3,
                best_val: Some(0.5),
                val_acc: None,
                config: "name = \"x\"\n".to_owned(),
            },
        };
        let dir = tempfile::tempdir().unwrap();
        // Each save builds new metadata maps, whose order was drawn anew: unsorted, eight saves
        // agreeing would happen by chance once in 128 times.
        let first = dir.path().join("0.safetensors");
        checkpoint.save(&first).unwrap();
        let bytes = std::fs::read(&first).unwrap();
        for i in 1..8 {
            let path = dir.path().join(format!("{i}.safetensors"));
            checkpoint.save(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "save {i} differs from the first");
        }
        let loaded = Checkpoint::load(&first, &Device::Cpu).unwrap();
        assert_eq!(loaded.state, checkpoint.state);
    }
}
