//! The run's random streams: every source of randomness (initialisation, training batches,
//! validation and test episodes) draws from its own RNG, derived from the config's seed, a
//! stream id and an index, so that changing one does not shift the others.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
    /// The split of a folder's classes into train, validation and test (`data.split`).
    pub const FOLDER_SPLIT: u64 = 5;
}
