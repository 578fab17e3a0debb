//! The episodes a run sees, from its episode settings, seed and the loaded data: the class
//! pools of its protocol ([`splits`]), its fixed validation set and seeded test sets.

use fewshot_tasks::{Class, Episode, EpisodeSet, EpisodeSpec, Protocol, Splits};
use rand::Rng;

use crate::data::Data;
use crate::seeds::{stream_rng, streams};
use crate::settings::Episodes;

/// Class pools of the protocol for the loaded dataset, split by `seed` (the meta-train pool cut
/// to `episodes.train_classes` when set).
pub fn splits(episodes: &Episodes, seed: u64, data: &Data) -> anyhow::Result<Splits> {
    let mut splits = match data {
        Data::Omniglot(o) => episodes.protocol.splits_for(o.n_background(), o.n_evaluation(), seed).ok_or_else(|| {
            anyhow::anyhow!(
                "episodes.protocol = \"paper\" needs the full Omniglot dataset (1,623 characters); this data has {}",
                o.n_background() + o.n_evaluation()
            )
        })?,
        Data::Folder(f) => f.splits(seed, episodes.train.n_way.max(episodes.eval.n_way))?,
    };
    if let Some(n) = episodes.train_classes {
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
    /// The images of each class, when not Omniglot's 20.
    sizes: Option<Vec<u32>>,
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
        let sampler = crate::data::sampler(&self.classes, self.sizes.clone(), self.spec)?;
        Ok(EpisodeSet::draw_from(sampler, self.seed).take(self.n))
    }

    /// The episodes as a set.
    pub fn collect(&self) -> anyhow::Result<EpisodeSet> {
        Ok(EpisodeSet {
            version: fewshot_tasks::EPISODE_SET_VERSION,
            description: self.description.clone(),
            spec: self.spec,
            seed: self.seed,
            episodes: self.episodes()?.collect(),
        })
    }
}

/// The run's fixed validation episodes (the first `n` of them; a run validates on
/// `train.val_episodes`), seeded by the run's `seed`, drawn.
pub fn validation_draw(episodes: &Episodes, seed: u64, data: &Data, n: usize) -> anyhow::Result<Drawn> {
    let splits = splits(episodes, seed, data)?;
    let draw_seed = stream_rng(seed, streams::VALIDATION, 0).random();
    let sizes = data.sizes(&splits.validation);
    Ok(Drawn {
        classes: splits.validation,
        sizes,
        seed: draw_seed,
        spec: episodes.eval,
        n,
        description: "validation".into(),
    })
}

/// The run's fixed validation episodes (the first `n` of them).
pub fn validation_episodes(episodes: &Episodes, seed: u64, data: &Data, n: usize) -> anyhow::Result<EpisodeSet> {
    validation_draw(episodes, seed, data, n)?.collect()
}

/// A set of `n` episodes from `protocol`'s test pool, seeded by the run's `seed`, drawn.
pub fn test_draw(episodes: &Episodes, seed: u64, data: &Data, protocol: Protocol, n: usize) -> anyhow::Result<Drawn> {
    let pool = splits(&Episodes { protocol, ..episodes.clone() }, seed, data)?.test;
    if let Data::Folder(f) = data
        && pool.len() < episodes.eval.n_way
    {
        anyhow::bail!(
            "{} has {} test classes (a test/ folder of class folders), fewer than the {} of an episode: evaluate on \
             its validation classes (--validation) or on another folder's classes (--folder DIR)",
            f.images.root().display(),
            pool.len(),
            episodes.eval.n_way
        );
    }
    let description = match data {
        Data::Omniglot(_) => format!("{protocol:?} protocol test episodes"),
        Data::Folder(f) => format!("test episodes of {}", f.images.root().display()),
    };
    Ok(test_set(episodes, seed, data, pool, n, description))
}

/// `n` test episodes of `pool`, drawn from the run's test stream of `seed`.
fn test_set(episodes: &Episodes, seed: u64, data: &Data, pool: Vec<Class>, n: usize, description: String) -> Drawn {
    let draw_seed = stream_rng(seed, streams::TEST, 0).random();
    let sizes = data.sizes(&pool);
    Drawn { classes: pool, sizes, seed: draw_seed, spec: episodes.eval, n, description }
}

/// `n` episodes (seeded by the run's `seed`, as its test episodes) from the classes of a
/// folder read for `eval --folder`: those of `split`'s folder, or all with `all`, or by default
/// its test/ classes when it has any, else all of them.
pub fn folder_draw(
    episodes: &Episodes,
    seed: u64,
    data: &Data,
    split: Option<fewshot_images::Split>,
    all: bool,
    n: usize,
) -> anyhow::Result<Drawn> {
    let Data::Folder(f) = data else { anyhow::bail!("--folder: the data read are not a folder") };
    let classes = f.images.classes();
    let has_test = f.kept.iter().any(|&i| classes[i as usize].split == Some(fewshot_images::Split::Test));
    let split = if all { None } else { split.or(has_test.then_some(fewshot_images::Split::Test)) };
    let pool: Vec<Class> = f
        .kept
        .iter()
        .copied()
        .filter(|&i| split.is_none_or(|s| classes[i as usize].split == Some(s)))
        .map(Class::plain)
        .collect();
    let root = f.images.root().display();
    let which = split.map_or_else(|| "all classes".to_owned(), |s| format!("{}/ classes", s.folder()));
    if pool.len() < episodes.eval.n_way {
        anyhow::bail!(
            "--folder {root}: {} usable {which} (with at least k_shot + n_query = {} images), fewer than the {} of an \
             episode: choose another --split, or lower --n-way, --k-shot or --n-query",
            pool.len(),
            episodes.eval.k_shot + episodes.eval.n_query,
            episodes.eval.n_way
        );
    }
    let description = format!("episodes of {root} ({which}, {})", pool.len());
    Ok(test_set(episodes, seed, data, pool, n, description))
}

/// A set of `n` episodes from `protocol`'s test pool, seeded by the run's `seed`.
pub fn test_episodes(
    episodes: &Episodes,
    seed: u64,
    data: &Data,
    protocol: Protocol,
    n: usize,
) -> anyhow::Result<EpisodeSet> {
    test_draw(episodes, seed, data, protocol, n)?.collect()
}
