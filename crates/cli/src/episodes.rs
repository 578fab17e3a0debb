//! The episodes a run sees, from its config and the loaded data: the class pools of its
//! protocol ([`splits`]), its fixed validation set and seeded test sets.

use fewshot_tasks::{Class, Episode, EpisodeSet, EpisodeSpec, Protocol, Splits};
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

/// A seeded set of episodes, described but not drawn: [`Drawn::episodes`] draws them one at a
/// time (an evaluation of a billion episodes holds a batch at a time), [`Drawn::collect`] all
/// at once.
#[derive(Debug, Clone)]
pub struct Drawn {
    classes: Vec<Class>,
    seed: u64,
    /// Shape of every episode.
    pub spec: EpisodeSpec,
    /// Number of episodes.
    pub n: usize,
    /// What they are.
    pub description: String,
}

impl Drawn {
    /// The episodes, drawn as they are read; the same as [`Drawn::collect`]'s.
    pub fn episodes(&self) -> anyhow::Result<impl Iterator<Item = Episode> + use<>> {
        Ok(EpisodeSet::draw(self.classes.clone(), self.spec, self.seed)?.take(self.n))
    }

    /// The episodes as a set.
    pub fn collect(&self) -> anyhow::Result<EpisodeSet> {
        Ok(EpisodeSet::generate(self.classes.clone(), self.spec, self.n, self.seed, &self.description)?)
    }
}

/// The run's fixed, seeded validation episodes (`train.val_episodes` of them, or `n`), drawn.
pub fn validation_draw(config: &Config, data: &Omniglot, n: Option<usize>) -> anyhow::Result<Drawn> {
    let splits = splits(config, data)?;
    let seed = stream_rng(config.seed, streams::VALIDATION, 0).random();
    let n = n.unwrap_or(config.train.val_episodes);
    Ok(Drawn { classes: splits.validation, seed, spec: config.spec(), n, description: "validation".into() })
}

/// The run's fixed, seeded validation episodes (`train.val_episodes` of them, or `n`).
pub fn validation_episodes(config: &Config, data: &Omniglot, n: Option<usize>) -> anyhow::Result<EpisodeSet> {
    validation_draw(config, data, n)?.collect()
}

/// A seeded set of `n` episodes from a protocol's test pool, drawn.
pub fn test_draw(config: &Config, data: &Omniglot, protocol: Protocol, n: usize) -> anyhow::Result<Drawn> {
    let mut c = config.clone();
    c.episodes.protocol = protocol;
    let pool = splits(&c, data)?.test;
    let seed = stream_rng(config.seed, streams::TEST, 0).random();
    let description = format!("{protocol:?} protocol test episodes");
    Ok(Drawn { classes: pool, seed, spec: config.spec(), n, description })
}

/// A seeded set of `n` episodes from a protocol's test pool.
pub fn test_episodes(config: &Config, data: &Omniglot, protocol: Protocol, n: usize) -> anyhow::Result<EpisodeSet> {
    test_draw(config, data, protocol, n)?.collect()
}
