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
        let episodes = EpisodeSet::draw(classes, spec, seed)?.take(n).collect();
        Ok(EpisodeSet { version: EPISODE_SET_VERSION, description: description.to_owned(), spec, seed, episodes })
    }

    /// The episodes [`EpisodeSet::generate`] draws from `classes` with `seed`, one at a time and
    /// without end: its first `n` are that set's, so a large set can be used without being held.
    pub fn draw(classes: Vec<Class>, spec: EpisodeSpec, seed: u64) -> Result<impl Iterator<Item = Episode>> {
        Ok(EpisodeSet::draw_from(Sampler::new(classes, spec)?, seed))
    }

    /// The episodes `sampler` draws with `seed`, one at a time and without end (for classes of
    /// other sizes than Omniglot's, see [`Sampler::with_sizes`]).
    pub fn draw_from(sampler: Sampler, seed: u64) -> impl Iterator<Item = Episode> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        std::iter::repeat_with(move || sampler.sample(&mut rng))
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
            // Every class once per shot in the support set and once per query in the query
            // set: a support set with label 0 twice and no label 1 cannot be learned from.
            for (part, examples, per_class) in [("support", &ep.support, k_shot), ("query", &ep.query, n_query)] {
                let mut count = vec![0usize; n_way];
                examples.iter().for_each(|e| count[e.label as usize] += 1);
                if let Some(label) = count.iter().position(|&c| c != per_class) {
                    return Err(bad(format!(
                        "its {part} set has {} example(s) of label {label}; a {n_way}-way {k_shot}-shot \
                         {n_query}-query episode has {per_class} of each label 0..{n_way}",
                        count[label]
                    )));
                }
            }
        }
        Ok(set)
    }

    /// Check that every class of the set is one of `n_characters` characters (global indices
    /// `0..n_characters`, see [`crate::split`]): the data the episodes will be drawn from.
    /// `origin` (a file name) appears in the error, with the episode, the value and the range.
    pub fn check_characters(&self, n_characters: u32, origin: &str) -> Result<()> {
        for (i, ep) in self.episodes.iter().enumerate() {
            if let Some(ex) = ep.support.iter().chain(&ep.query).find(|e| e.class.character >= n_characters) {
                return Err(Error::InconsistentEpisode {
                    origin: origin.to_owned(),
                    episode: i,
                    problem: format!(
                        "character {} is out of range: the data have {n_characters} characters, \
                         0 to {}",
                        ex.class.character,
                        n_characters.saturating_sub(1)
                    ),
                });
            }
        }
        Ok(())
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
    fn drawing_gives_the_generated_set() {
        let set = EpisodeSet::generate((0..20).map(Class::plain).collect(), spec(), 7, 9, "test").unwrap();
        let drawn: Vec<Episode> =
            EpisodeSet::draw((0..20).map(Class::plain).collect(), spec(), 9).unwrap().take(7).collect();
        assert_eq!(drawn, set.episodes);
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

    #[test]
    fn a_label_twice_and_another_missing_is_refused() {
        let set = EpisodeSet::generate((0..20).map(Class::plain).collect(), spec(), 3, 9, "test").unwrap();
        let mut broken = set.clone();
        let other = broken.episodes[1].support.iter().position(|e| e.label == 1).unwrap();
        broken.episodes[1].support[other].label = 0;
        let err = EpisodeSet::from_json(&broken.to_json(), "eps.json").unwrap_err().to_string();
        assert!(err.starts_with("eps.json: episode 1: its support set has 2 example(s) of label 0"), "{err}");
        let mut broken = set.clone();
        broken.episodes[2].query[0].label = (broken.episodes[2].query[0].label + 1) % 5;
        let err = EpisodeSet::from_json(&broken.to_json(), "eps.json").unwrap_err().to_string();
        assert!(err.starts_with("eps.json: episode 2: its query set has"), "{err}");
    }

    #[test]
    fn characters_out_of_range_are_named() {
        let set = EpisodeSet::generate((0..20).map(Class::plain).collect(), spec(), 3, 9, "test").unwrap();
        assert!(set.check_characters(20, "eps.json").is_ok());
        let mut broken = set.clone();
        broken.episodes[2].query[0].class.character = 1623;
        let err = broken.check_characters(1623, "eps.json").unwrap_err().to_string();
        assert_eq!(
            err,
            "eps.json: episode 2: character 1623 is out of range: the data have 1623 characters, 0 to 1622"
        );
    }
}
