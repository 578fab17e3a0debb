//! Both Omniglot subsets in memory, addressed by global character index (background
//! `0..964`, then evaluation `964..1623`, as `fewshot_tasks::split` numbers them), and
//! rendering of episode descriptions into meta-batches.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use fewshot_meta::TaskBatch;
use fewshot_tasks::{Episode, OMNIGLOT_BACKGROUND, OMNIGLOT_EVALUATION};
use omniglot_data::{Dataset, LoadOptions, Source, Subset};

/// The two subsets at one image size.
#[derive(Debug)]
pub struct Omniglot {
    background: Dataset,
    evaluation: Dataset,
}

impl Omniglot {
    /// Load both subsets from `data_dir`; when an archive is missing and `source` is given,
    /// fetch it from there first (as `cargo xtask download` does).
    pub fn load(
        data_dir: &Path,
        source: Option<&Source>,
        image_size: u32,
    ) -> anyhow::Result<Omniglot> {
        let missing: Vec<Subset> = Subset::ALL
            .into_iter()
            .filter(|s| !data_dir.join(s.archive_name()).exists())
            .collect();
        if let (false, Some(source)) = (missing.is_empty(), source) {
            omniglot_data::fetch(source, data_dir, &missing, &mut |_| {}).with_context(|| {
                format!(
                    "fetching Omniglot from {source} into {}",
                    data_dir.display()
                )
            })?;
        }
        let options = LoadOptions {
            image_size,
            ..LoadOptions::default()
        };
        let load = |subset| {
            Dataset::load(data_dir, subset, &options)
                .with_context(|| format!("loading the {subset} set from {}", data_dir.display()))
        };
        let (background, evaluation) = (load(Subset::Background)?, load(Subset::Evaluation)?);
        if background.characters().len() != OMNIGLOT_BACKGROUND as usize
            || evaluation.characters().len() != OMNIGLOT_EVALUATION as usize
        {
            bail!(
                "{} does not hold the full Omniglot dataset",
                data_dir.display()
            );
        }
        Ok(Omniglot {
            background,
            evaluation,
        })
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
        if character < OMNIGLOT_BACKGROUND {
            self.background.image(character as usize, drawing)
        } else {
            self.evaluation
                .image((character - OMNIGLOT_BACKGROUND) as usize, drawing)
        }
    }

    /// Render episodes into one meta-batch (f32 on `device` unless `dtype` says otherwise).
    pub fn batch(
        &self,
        episodes: &[Episode],
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<TaskBatch> {
        let size = self.image_size();
        let pixels: Vec<_> = episodes
            .iter()
            .map(|e| e.render(size, |c, d| self.image(c, d)))
            .collect();
        Ok(TaskBatch::from_pixels(&pixels, dtype, device)?)
    }
}
