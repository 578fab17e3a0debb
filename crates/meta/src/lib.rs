//! Meta-learning for few-shot classification: MAML exact to the second order and first-order
//! MAML, over the functional net of `fewshot-model`.
//!
//! Main items: [`Learner`] (one training step on a batch; implemented by [`Maml`], the
//! meta-learner, and [`Supervised`], the baselines' pre-training), [`InnerLoop`] with its
//! [`Order`] (`First` / `Second`), [`Adaptation`] with its [`Scope`] (how a model adapts at
//! test time), [`Engine`] (native or candle: [`Engine::meta_gradient`],
//! [`Engine::adapted_logits`], [`Engine::evaluate`]), [`TaskBatch`] (a meta-batch as tensors)
//! and [`Accuracy`].
//!
//! ```
//! use candle_core::{DType, Device};
//! use fewshot_meta::{InnerLoop, Learner, Maml, MamlSettings, Order, TaskBatch};
//! use fewshot_model::{ConvNetConfig, init};
//! use fewshot_tasks::EpisodePixels;
//!
//! let config = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 4, depth: 2, n_way: 2 };
//! let params = init(&config, 0, DType::F32, &Device::Cpu)?;
//! let inner = InnerLoop::new(0.4, 1, Order::Second);
//! let mut maml = Maml::new(config, &params.into(), MamlSettings::new(inner, 1e-3))?;
//! let episode = EpisodePixels {
//!     image_size: 8, channels: 1,
//!     support: vec![0.5; 2 * 64], support_labels: vec![0, 1],
//!     query: vec![0.5; 2 * 64], query_labels: vec![0, 1],
//! };
//! let batch = TaskBatch::from_pixels(&[episode.clone(), episode], DType::F32, &Device::Cpu)?;
//! let stats = maml.step(&batch)?;
//! assert!(stats.loss.is_finite());
//! # Ok::<(), fewshot_meta::Error>(())
//! ```
//!
//! Files: `settings` (inner loop and adaptation settings), `engine` (the one dispatch),
//! `native/` (MAML on `fewshot_model::engine`, task by task), `distributed` (a batch's tasks
//! split over ranks, combined in one process's order), `candle` (the reference path
//! through candle's autograd), `learner` (the trait, the shared parameter state and the
//! outer optimiser's `Outer` settings), `maml` (with `MamlSettings`),
//! `supervised`, `head` (how the head starts each task), `rates` (MAML++'s learned inner
//! learning rates), `bn_steps` (MAML++'s per-step batch-norm weights), `adam`, `batch`, `eval`. Cross-cutting: `workers` (the threads tasks run on)
//! and `grad_mode` (candle keeps gradient graphs, for second order, only on threads that saw
//! `CANDLE_GRAD_DO_NOT_DETACH` at their first backward pass; the candle path runs every
//! backward pass on worker threads latched into the right mode, so callers never set the
//! variable and results do not depend on how the process was started).
//!
//! Boundaries: nothing about Omniglot or files; it sees episodes' pixels and parameter maps.
#![deny(missing_docs)]

mod adam;
mod batch;
mod bn_steps;
mod candle;
pub mod distributed;
mod engine;
mod error;
mod eval;
mod grad_mode;
mod head;
mod learner;
mod maml;
mod meta_params;
mod native;
mod rates;
mod settings;
mod supervised;
mod workers;

pub use adam::Adam;
pub use batch::{TaskBatch, TaskInputs};
pub use bn_steps::{BN_STEP_PREFIX, bn_step_name, init_bn_steps};
pub use candle::adapt;
pub use engine::{DEFAULT_TASK_CHUNK, Engine};
pub use error::{Error, Result};
pub use eval::{Accuracy, evaluate_batch};
pub use grad_mode::{GradMode, backward, environment_lock};
pub use head::HeadInit;
pub use learner::{Learner, LrSchedule, Outer, StepStats, Trainable};
pub use maml::{Annealing, Maml, MamlSettings};
pub use meta_params::MetaParams;
pub use rates::{RATE_PREFIX, init_rates, rate_name};
pub use settings::{Adaptation, InnerLoop, MultiStepLoss, Order, Scope};
pub use supervised::Supervised;
pub use workers::set_parallel_tasks;
