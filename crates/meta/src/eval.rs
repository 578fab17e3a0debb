//! Evaluation: adapt on each episode's support, score its query; mean and 95% interval.

use candle_core::Tensor;
use fewshot_model::{ConvNetConfig, ParamMap, accuracy, forward};

use crate::batch::TaskBatch;
use crate::error::Result;
use crate::grad_mode::{GradMode, ParallelJob, run_parallel};
use crate::maml::{InnerLoop, Order, adapt_scoped};
use crate::native::{Engine, native_adapted_logits};

/// Which parameters adaptation to a task updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every parameter (MAML).
    #[default]
    All,
    /// The linear head only, the feature extractor frozen (a transfer baseline's fine-tuning).
    Head,
}

impl Scope {
    /// Whether adaptation updates the parameter named `name`.
    pub fn updates(self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Head => name.starts_with("head."),
        }
    }
}

/// How a model adapts to a task's support set before it labels the query set: `steps` SGD
/// steps of `inner_lr` on the support loss, of the parameters in `scope`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptation {
    /// SGD step size.
    pub inner_lr: f64,
    /// Number of SGD steps (0: no adaptation).
    pub steps: usize,
    /// Which parameters move.
    pub scope: Scope,
}

impl Adaptation {
    /// `steps` steps of `inner_lr` on every parameter, as MAML adapts.
    pub fn all(inner_lr: f64, steps: usize) -> Adaptation {
        Adaptation { inner_lr, steps, scope: Scope::All }
    }
}

/// Query logits of each task after adapting `params` to its support set as `adaptation` says.
/// First order (same fast weights as exact MAML, no graph kept): adaptation at test time needs
/// no meta-gradient.
///
/// # Shapes
/// `support_images`: `[t, n_support, c, h, w]`, `support_labels`: `[t, n_support]`,
/// `query_images`: `[t, n_query, c, h, w]`; returns `[t, n_query, n_way]`.
pub fn adapted_logits(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    query_images: &Tensor,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    if Engine::native_supports(support_images.dtype(), support_images.device()) {
        return native_adapted_logits(config, params, support_images, support_labels, query_images, adaptation);
    }
    adapted_logits_candle(config, params, support_images, support_labels, query_images, adaptation)
}

/// [`adapted_logits`] through candle's autograd (the reference path).
pub fn adapted_logits_candle(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    query_images: &Tensor,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    let detached: ParamMap = params.iter().map(|(k, v)| (k.clone(), v.detach())).collect();
    let inner = InnerLoop { inner_lr: adaptation.inner_lr, steps: adaptation.steps, order: Order::First };
    let fast = adapt_scoped(config, &detached, support_images, support_labels, &inner, adaptation.scope)?;
    let fast: ParamMap = fast.into_iter().map(|(k, v)| (k, v.detach())).collect();
    Ok(forward(config, &fast, query_images)?)
}

/// Query accuracy of each task in `batch` after adapting `params` as `adaptation` says.
///
/// Evaluation needs no meta-gradient, so the inner loop runs first-order (same fast weights,
/// no graph kept). Runs on the native engine when it supports the batch (f32/f64 on the CPU),
/// through candle otherwise.
pub fn evaluate_batch(
    config: &ConvNetConfig,
    params: &ParamMap,
    batch: &TaskBatch,
    adaptation: &Adaptation,
) -> Result<Vec<f32>> {
    if Engine::native_supports(batch.support_images.dtype(), batch.support_images.device()) {
        // The engine runs the tasks in parallel itself.
        let (support, labels, query) = (&batch.support_images, &batch.support_labels, &batch.query_images);
        let logits = native_adapted_logits(config, params, support, labels, query, adaptation)?;
        return Ok(accuracy(&logits, &batch.query_labels)?.to_vec1::<f32>()?);
    }
    let t = batch.n_tasks();
    // Small chunks keep activations in cache on CPU (see docs/performance.md); chunks run in
    // parallel on rayon's threads.
    let jobs: Vec<ParallelJob<Result<Vec<f32>>>> = (0..t)
        .step_by(EVAL_TASK_CHUNK)
        .map(|start| -> Result<ParallelJob<Result<Vec<f32>>>> {
            let chunk = batch.narrow(start, EVAL_TASK_CHUNK.min(t - start))?;
            let (config, params, adaptation) = (*config, params.clone(), *adaptation);
            Ok(Box::new(move || -> Result<Vec<f32>> {
                let logits = adapted_logits_candle(
                    &config,
                    &params,
                    &chunk.support_images,
                    &chunk.support_labels,
                    &chunk.query_images,
                    &adaptation,
                )?;
                Ok(accuracy(&logits, &chunk.query_labels)?.to_vec1::<f32>()?)
            }))
        })
        .collect::<Result<_>>()?;
    let per_chunk: Vec<Vec<f32>> = run_parallel(GradMode::Detach, jobs)?.into_iter().collect::<Result<_>>()?;
    Ok(per_chunk.into_iter().flatten().collect())
}

/// Tasks per batched computation in [`evaluate_batch`].
pub const EVAL_TASK_CHUNK: usize = 1;

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
