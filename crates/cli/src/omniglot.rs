//! Both Omniglot subsets in memory, addressed by global character index (background
//! `0..964`, then evaluation `964..1623`, as `fewshot_tasks` numbers them). Episodes are
//! rendered into batches by `crate::data::Data`, which holds them.

use std::path::Path;

use anyhow::Context;
use omniglot_data::{Dataset, Expected, LoadOptions, Source, Subset};

/// The two subsets at one image size.
#[derive(Debug)]
pub struct Omniglot {
    background: Dataset,
    evaluation: Dataset,
}

impl Omniglot {
    /// Load both subsets from `data_dir`; when an archive is missing and `source` is given,
    /// fetch it from there first (as `cargo xtask download` does). `expected` is
    /// [`Expected::Omniglot`] for the real dataset; tests pass smaller counts.
    pub fn load(
        data_dir: &Path,
        source: Option<&Source>,
        image_size: u32,
        expected: Expected,
    ) -> anyhow::Result<Omniglot> {
        // `exists()` says false where the folder cannot be read (permission denied): that would
        // fetch an archive that is there and blame the fetch.
        let mut missing = Vec::new();
        for subset in Subset::ALL {
            let archive = data_dir.join(subset.archive_name());
            match archive.try_exists() {
                Ok(true) => {}
                Ok(false) => missing.push(subset),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot look into the data folder {} for {}: fix its permissions, or point \
                             OMNIGLOT_DATA_DIR (or [data] dir) at another folder",
                            data_dir.display(),
                            subset.archive_name()
                        )
                    });
                }
            }
        }
        if let (false, Some(source)) = (missing.is_empty(), source) {
            omniglot_data::fetch(source, data_dir, &missing, &mut |_| {})
                .with_context(|| format!("fetching Omniglot from {source} into {}", data_dir.display()))?;
        }
        let options = LoadOptions { image_size, expected, cache_dir: None };
        let load = |subset| {
            Dataset::load(data_dir, subset, &options)
                .with_context(|| format!("loading the {subset} set from {}", data_dir.display()))
        };
        Ok(Omniglot { background: load(Subset::Background)?, evaluation: load(Subset::Evaluation)? })
    }

    /// Characters in the background set (global indices `0..n_background`).
    pub fn n_background(&self) -> u32 {
        self.background.characters().len() as u32
    }

    /// Characters in the evaluation set (global indices after the background ones).
    pub fn n_evaluation(&self) -> u32 {
        self.evaluation.characters().len() as u32
    }

    /// Side of the square images.
    pub fn image_size(&self) -> usize {
        self.background.image_size() as usize
    }

    /// u8 pixels of drawing `drawing` of global character `character`.
    ///
    /// # Panics
    /// If the character or drawing is out of range.
    pub fn image(&self, character: u32, drawing: usize) -> &[u8] {
        let n_background = self.n_background();
        if character < n_background {
            self.background.image(character as usize, drawing)
        } else {
            self.evaluation.image((character - n_background) as usize, drawing)
        }
    }
}
