//! Meta-learning for few-shot classification: MAML exact to the second order and first-order
//! MAML, over the functional net of `fewshot-model`.
//!
//! Main items: [`Maml`] (initial parameters + Adam + inner loop; [`Maml::meta_step`]),
//! [`adapt`] (the inner loop), [`meta_gradient`], [`Order`] (`First` / `Second`),
//! [`TaskBatch`] (a meta-batch as tensors), [`evaluate_batch`] and [`Accuracy`].
//!
//! ```
//! use candle_core::{DType, Device};
//! use fewshot_meta::{InnerLoop, Maml, Order, TaskBatch};
//! use fewshot_model::{ConvNetConfig, init};
//! use fewshot_tasks::EpisodePixels;
//!
//! let config = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 4, depth: 2, n_way: 2 };
//! let params = init(&config, 0, DType::F32, &Device::Cpu)?;
//! let inner = InnerLoop { inner_lr: 0.4, steps: 1, order: Order::Second };
//! let mut maml = Maml::new(config, &params, inner, 1e-3)?;
//! let episode = EpisodePixels {
//!     image_size: 8,
//!     support: vec![0.5; 2 * 64], support_labels: vec![0, 1],
//!     query: vec![0.5; 2 * 64], query_labels: vec![0, 1],
//! };
//! let batch = TaskBatch::from_pixels(&[episode.clone(), episode], DType::F32, &Device::Cpu)?;
//! let stats = maml.meta_step(&batch)?;
//! assert!(stats.loss.is_finite());
//! # Ok::<(), fewshot_meta::Error>(())
//! ```
//!
//! candle keeps gradient graphs (for second order) only on threads that saw
//! `CANDLE_GRAD_DO_NOT_DETACH` at their first backward pass. This crate runs every backward
//! pass on its own worker threads latched into the right mode, so callers never set the
//! variable and results do not depend on how the process was started.
//!
//! Boundaries: nothing about Omniglot or files; it sees episodes' pixels and parameter maps.
#![deny(missing_docs)]

mod adam;
mod batch;
mod error;
mod eval;
mod grad_mode;
mod maml;
mod native;

pub use adam::Adam;
pub use batch::TaskBatch;
pub use error::{Error, Result};
pub use eval::{Accuracy, Adaptation, Scope, adapted_logits, adapted_logits_candle, evaluate_batch};
pub use grad_mode::{GradMode, ParallelJob, backward, run_parallel, set_parallel_tasks};
pub use maml::{DEFAULT_TASK_CHUNK, InnerLoop, Maml, Order, StepStats, adapt, meta_gradient};
pub use native::{Engine, native_adapted_logits, native_meta_gradient};
