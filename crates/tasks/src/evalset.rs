//! Fixed evaluation sets: a seeded list of episode descriptions, written to and read from a
//! small JSON text, so "the 640 test tasks" is a file anyone can rerun.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::episode::{DRAWINGS, Episode, EpisodeSpec, Sampler};
use crate::error::{Error, Result};
use crate::split::Class;

/// Current format version of episode-set files.
pub const EPISODE_SET_VERSION: u32 = 1;

/// A fixed list of episodes with what made them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeSet {
    /// [`EPISODE_SET_VERSION`].
    pub version: u32,
    /// Free text: which classes the character indices refer to, and how the set was made.
    pub description: String,
    /// Shape of every episode.
    pub spec: EpisodeSpec,
    /// Seed the episodes were drawn with.
    pub seed: u64,
    /// The episodes.
    pub episodes: Vec<Episode>,
}

impl EpisodeSet {
    /// Draw `n` episodes from `classes` with a sampler seeded by `seed` (no augmentation).
    pub fn generate(
        classes: Vec<Class>,
        spec: EpisodeSpec,
        n: usize,
        seed: u64,
        description: &str,
    ) -> Result<EpisodeSet> {
        let sampler = Sampler::new(classes, spec)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let episodes = (0..n).map(|_| sampler.sample(&mut rng)).collect();
        Ok(EpisodeSet { version: EPISODE_SET_VERSION, description: description.to_owned(), spec, seed, episodes })
    }

    /// Serialise: one header, then one line per episode (diff-friendly and small).
    pub fn to_json(&self) -> String {
        let header = EpisodeSet { episodes: Vec::new(), ..self.clone() };
        let mut text = serde_json::to_string(&header).expect("episode sets serialise");
        text.truncate(text.len() - "[]}".len());
        text.push_str("[\n");
        for (i, ep) in self.episodes.iter().enumerate() {
            text.push_str(&serde_json::to_string(ep).expect("episodes serialise"));
            text.push_str(if i + 1 < self.episodes.len() { ",\n" } else { "\n" });
        }
        text.push_str("]}\n");
        text
    }

    /// Parse and check a set; `origin` (a file name) appears in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<EpisodeSet> {
        let set: EpisodeSet = serde_json::from_str(text)
            .map_err(|e| Error::BadEpisodeSet { origin: origin.to_owned(), reason: e.to_string() })?;
        if set.version != EPISODE_SET_VERSION {
            return Err(Error::BadEpisodeSet {
                origin: origin.to_owned(),
                reason: format!("version {} (this build reads {EPISODE_SET_VERSION})", set.version),
            });
        }
        let EpisodeSpec { n_way, k_shot, n_query, .. } = set.spec;
        for (i, ep) in set.episodes.iter().enumerate() {
            let bad = |problem: String| Error::InconsistentEpisode { origin: origin.to_owned(), episode: i, problem };
            if ep.n_way != n_way || ep.support.len() != n_way * k_shot || ep.query.len() != n_way * n_query {
                return Err(bad(format!(
                    "has {}-way, {} support, {} query; the set's spec says {n_way}-way {k_shot}-shot {n_query}-query",
                    ep.n_way,
                    ep.support.len(),
                    ep.query.len()
                )));
            }
            if let Some(ex) =
                ep.support.iter().chain(&ep.query).find(|e| e.label as usize >= n_way || e.drawing as usize >= DRAWINGS)
            {
                return Err(bad(format!("example {ex:?} has a label >= {n_way} or a drawing >= {DRAWINGS}")));
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::DrawingSplit;

    fn spec() -> EpisodeSpec {
        EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any }
    }

    #[test]
    fn round_trip() {
        let set = EpisodeSet::generate((0..20).map(Class::plain).collect(), spec(), 7, 9, "test").unwrap();
        let text = set.to_json();
        assert_eq!(text.lines().count(), 9, "header line, 7 episode lines, closing line");
        assert_eq!(EpisodeSet::from_json(&text, "x.json").unwrap(), set);
    }

    #[test]
    fn bad_files_are_named() {
        let err = EpisodeSet::from_json("{", "eps.json").unwrap_err().to_string();
        assert!(err.starts_with("eps.json: not an episode set"), "{err}");
        let set = EpisodeSet::generate((0..20).map(Class::plain).collect(), spec(), 3, 9, "test").unwrap();
        let mut broken = set.clone();
        broken.episodes[2].support.pop();
        let err = EpisodeSet::from_json(&broken.to_json(), "eps.json").unwrap_err().to_string();
        assert!(err.starts_with("eps.json: episode 2: has 5-way, 4 support"), "{err}");
    }
}
