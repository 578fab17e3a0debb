//! Evaluation: adapt on each episode's support set, score its query set ([`Engine::evaluate`]);
//! mean and 95% interval over episodes ([`Accuracy`]).

use fewshot_model::{ConvNetConfig, accuracy};

use crate::batch::TaskBatch;
use crate::engine::Engine;
use crate::error::Result;
use crate::meta_params::MetaParams;
use crate::settings::Adaptation;

impl Engine {
    /// Query accuracy of each task in `batch` after adapting `params` as `adaptation` says:
    /// [`Engine::adapted_logits`], then the fraction of arg-max logits that are the label.
    pub fn evaluate(
        self,
        config: &ConvNetConfig,
        params: &MetaParams,
        batch: &TaskBatch,
        adaptation: &Adaptation,
    ) -> Result<Vec<f32>> {
        let logits = self.adapted_logits(config, params, batch.inputs(), adaptation)?;
        Ok(accuracy(&logits, &batch.query_labels)?.to_vec1::<f32>()?)
    }
}

/// [`Engine::evaluate`] on the default engine.
pub fn evaluate_batch(
    config: &ConvNetConfig,
    params: &MetaParams,
    batch: &TaskBatch,
    adaptation: &Adaptation,
) -> Result<Vec<f32>> {
    Engine::default().evaluate(config, params, batch, adaptation)
}

/// Accuracy over episodes: mean and the half-width of its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Mean accuracy over episodes.
    pub mean: f64,
    /// 1.96 x the standard error of the mean (sample standard deviation / sqrt(n)).
    pub ci95: f64,
    /// Number of episodes.
    pub episodes: usize,
}

impl Accuracy {
    /// Summarise per-episode accuracies.
    pub fn from_episodes(per_episode: &[f32]) -> Accuracy {
        let n = per_episode.len();
        if n == 0 {
            return Accuracy { mean: f64::NAN, ci95: f64::NAN, episodes: 0 };
        }
        let mean = per_episode.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
        let var = if n > 1 {
            per_episode.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Accuracy { mean, ci95: 1.96 * (var / n as f64).sqrt(), episodes: n }
    }
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4} (95% CI, {} episodes)", self.mean, self.ci95, self.episodes)
    }
}
