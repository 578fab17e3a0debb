//! Evaluation shared by validation during training and `fewshot eval`.

use candle_core::{DType, Device};
use fewshot_meta::{Accuracy, evaluate_batch};
use fewshot_model::{ConvNetConfig, ParamMap};
use fewshot_tasks::{Episode, EpisodeSet, Protocol, Splits};
use rand::SeedableRng;
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
    /// Training episodes (index: step).
    pub const TRAIN: u64 = 2;
    /// The fixed validation set.
    pub const VALIDATION: u64 = 3;
    /// Fresh test episodes for `fewshot eval --protocol`.
    pub const TEST: u64 = 4;
    /// Heads of the transfer baseline at evaluation.
    pub const HEAD: u64 = 5;
}

/// Class pools of the config's protocol for the loaded dataset.
pub fn splits(config: &Config, data: &Omniglot) -> anyhow::Result<Splits> {
    config.episodes.protocol.splits_for(data.n_background(), data.n_evaluation(), config.seed).ok_or_else(|| {
        anyhow::anyhow!(
            "episodes.protocol = \"paper\" needs the full Omniglot dataset (1,623 characters); this data has {}",
            data.n_background() + data.n_evaluation()
        )
    })
}

/// Parameters to adapt at evaluation: the meta-learned ones, or for the transfer baseline the
/// trained backbone with a fresh `n_way` head (seeded).
pub fn eval_params(config: &Config, params: &ParamMap, n_way: usize) -> anyhow::Result<ParamMap> {
    if config.train.method != Method::Transfer {
        return Ok(params.clone());
    }
    let net = config.net(n_way);
    let seed = stream_rng(config.seed, streams::HEAD, 0);
    let fresh = fewshot_model::init(&net, rand::Rng::random(&mut { seed }), DType::F32, &Device::Cpu)?;
    let mut out = params.clone();
    for k in ["head.weight", "head.bias"] {
        out.insert(k.to_owned(), fresh[k].clone());
    }
    Ok(out)
}

/// Accuracy over `episodes` after `inner_steps` steps of `inner_lr` on each support set.
pub fn evaluate(
    net: &ConvNetConfig,
    params: &ParamMap,
    data: &Omniglot,
    episodes: &[Episode],
    inner_lr: f64,
    inner_steps: usize,
) -> anyhow::Result<Accuracy> {
    let mut per_episode = Vec::with_capacity(episodes.len());
    for chunk in episodes.chunks(EVAL_BATCH) {
        let batch = data.batch(chunk, DType::F32, &Device::Cpu)?;
        per_episode.extend(evaluate_batch(net, params, &batch, inner_lr, inner_steps)?);
    }
    Ok(Accuracy::from_episodes(&per_episode))
}

/// A seeded set of `n` episodes from a protocol's test pool.
pub fn test_episodes(config: &Config, data: &Omniglot, protocol: Protocol, n: usize) -> anyhow::Result<EpisodeSet> {
    let mut c = config.clone();
    c.episodes.protocol = protocol;
    let pool = splits(&c, data)?.test;
    let seed = rand::Rng::random(&mut stream_rng(config.seed, streams::TEST, 0));
    Ok(EpisodeSet::generate(pool, config.spec(), n, seed, &format!("{protocol:?} protocol test episodes"))?)
}
