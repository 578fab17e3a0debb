//! The episodes a run sees, from its config and the loaded data: the class pools of its
//! protocol ([`splits`]), its fixed validation set and seeded test sets.

use fewshot_tasks::{EpisodeSet, Protocol, Splits};
use rand::Rng;

use crate::config::Config;
use crate::omniglot::Omniglot;
use crate::seeds::{stream_rng, streams};

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

/// A seeded set of `n` episodes from a protocol's test pool.
pub fn test_episodes(config: &Config, data: &Omniglot, protocol: Protocol, n: usize) -> anyhow::Result<EpisodeSet> {
    let mut c = config.clone();
    c.episodes.protocol = protocol;
    let pool = splits(&c, data)?.test;
    let seed = stream_rng(config.seed, streams::TEST, 0).random();
    Ok(EpisodeSet::generate(pool, config.spec(), n, seed, &format!("{protocol:?} protocol test episodes"))?)
}
