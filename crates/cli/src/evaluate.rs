//! Evaluation shared by validation during training and `fewshot eval`.

use candle_core::{DType, Device, Tensor};
use fewshot_meta::{Accuracy, Adaptation, evaluate_batch};
use fewshot_model::{ConvNetConfig, ParamMap};
use fewshot_tasks::{Episode, EpisodeSet, Protocol, Splits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, Method};
use crate::omniglot::Omniglot;

/// Episodes evaluated per batched computation.
const EVAL_BATCH: usize = 32;

/// Derive an independent RNG for `stream` and `index` from the run seed.
pub fn stream_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    fn mix(mut z: u64) -> u64 {
        // splitmix64
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    ChaCha8Rng::seed_from_u64(mix(seed ^ mix(stream ^ mix(index))))
}

/// RNG streams of a run.
pub mod streams {
    /// Initialisation of parameters.
    pub const INIT: u64 = 1;
    /// Training episodes, or the transfer baseline's images (index: step).
    pub const TRAIN: u64 = 2;
    /// The fixed validation set.
    pub const VALIDATION: u64 = 3;
    /// Fresh test episodes for `fewshot eval --protocol`.
    pub const TEST: u64 = 4;
}

/// Class pools of the config's protocol for the loaded dataset (the meta-train pool cut to
/// `episodes.train_classes` when set).
pub fn splits(config: &Config, data: &Omniglot) -> anyhow::Result<Splits> {
    let mut splits = config
        .episodes
        .protocol
        .splits_for(data.n_background(), data.n_evaluation(), config.seed)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "episodes.protocol = \"paper\" needs the full Omniglot dataset (1,623 characters); this data has {}",
                data.n_background() + data.n_evaluation()
            )
        })?;
    if let Some(n) = config.episodes.train_classes {
        if n > splits.train.len() {
            anyhow::bail!("episodes.train_classes = {n}: the meta-train pool has only {} classes", splits.train.len());
        }
        splits.train.truncate(n);
    }
    Ok(splits)
}

/// The run's fixed, seeded validation episodes (`train.val_episodes` of them, or `n`).
pub fn validation_episodes(config: &Config, data: &Omniglot, n: Option<usize>) -> anyhow::Result<EpisodeSet> {
    let splits = splits(config, data)?;
    let seed = stream_rng(config.seed, streams::VALIDATION, 0).random();
    let n = n.unwrap_or(config.train.val_episodes);
    Ok(EpisodeSet::generate(splits.validation, config.spec(), n, seed, "validation")?)
}

/// Parameters to adapt at evaluation: the meta-learned ones, or for the transfer baseline the
/// trained feature extractor with a fresh, zero `n_way` head (a random head's logits are noise
/// that the first fine-tuning steps must undo; from zero, one head-only step already gives a
/// nearest-prototype classifier, and the result does not depend on a head seed).
pub fn eval_params(config: &Config, params: &ParamMap, n_way: usize) -> anyhow::Result<ParamMap> {
    if config.train.method != Method::Transfer {
        return Ok(params.clone());
    }
    let features = config.net(n_way).features();
    let mut out = params.clone();
    out.insert("head.weight".into(), Tensor::zeros((n_way, features), DType::F32, &Device::Cpu)?);
    out.insert("head.bias".into(), Tensor::zeros(n_way, DType::F32, &Device::Cpu)?);
    Ok(out)
}

/// Accuracy over `episodes` after adapting to each support set as `adaptation` says.
pub fn evaluate(
    net: &ConvNetConfig,
    params: &ParamMap,
    data: &Omniglot,
    episodes: &[Episode],
    adaptation: &Adaptation,
) -> anyhow::Result<Accuracy> {
    if episodes.is_empty() {
        anyhow::bail!("no episodes to evaluate: give at least one (e.g. --n 600)");
    }
    let mut per_episode = Vec::with_capacity(episodes.len());
    for chunk in episodes.chunks(EVAL_BATCH) {
        let batch = data.batch(chunk, DType::F32, &Device::Cpu)?;
        per_episode.extend(evaluate_batch(net, params, &batch, adaptation)?);
    }
    Ok(Accuracy::from_episodes(&per_episode))
}

/// A seeded set of `n` episodes from a protocol's test pool.
pub fn test_episodes(config: &Config, data: &Omniglot, protocol: Protocol, n: usize) -> anyhow::Result<EpisodeSet> {
    let mut c = config.clone();
    c.episodes.protocol = protocol;
    let pool = splits(&c, data)?.test;
    let seed = stream_rng(config.seed, streams::TEST, 0).random();
    Ok(EpisodeSet::generate(pool, config.spec(), n, seed, &format!("{protocol:?} protocol test episodes"))?)
}
