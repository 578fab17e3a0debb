//! The few-shot conv net as a pure function of an explicit parameter map, in candle, with
//! every op differentiable twice and a leading task dimension so a whole meta-batch, each task
//! with its own fast weights, runs as one computation.
//!
//! Main items: [`ConvNetConfig`], [`ParamMap`] (ordered name -> tensor), [`init`] (PyTorch's
//! default initialisation from a seed), [`expand`] (add the task dimension), [`forward`],
//! [`cross_entropy`] and [`accuracy`], [`to_safetensors`] / [`from_safetensors`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use fewshot_model::{ConvNetConfig, cross_entropy, expand, forward, init};
//!
//! let config = ConvNetConfig::omniglot(5);
//! let params = init(&config, 42, DType::F32, &Device::Cpu)?;
//! let per_task = expand(&params, 2)?; // 2 tasks, same starting weights
//! let images = Tensor::zeros((2, 5, 1, 28, 28), DType::F32, &Device::Cpu)?; // [t, b, c, h, w]
//! let logits = forward(&config, &per_task, &images)?; // [2, 5, 5]
//! let labels = Tensor::new(&[[0u32, 1, 2, 3, 4], [4, 3, 2, 1, 0]], &Device::Cpu)?;
//! let loss = cross_entropy(&logits, &labels)?; // [2], one mean loss per task
//! assert_eq!(loss.dims(), &[2]);
//! # Ok::<(), fewshot_model::Error>(())
//! ```
//!
//! Boundaries: no IO (parameters go to and from safetensors *bytes*; files are the caller's),
//! nothing Omniglot-specific beyond the input shape, no training loop.
#![deny(missing_docs)]

mod cpu_op;
pub mod engine;
mod error;
mod im2col;
mod net;
mod params;
mod pool;
mod shape;

pub use error::{Error, Result};
pub use im2col::{im2col3x3, im2col3x3_reference};
pub use net::{BN_EPS, accuracy, batch_norm, conv3x3, conv3x3_unbiased, cross_entropy, features, forward, max_pool2x2};
pub use params::{
    ParamMap, ParamRole, ParamSpec, ParamVars, block_param, check_params, expand, from_safetensors, init, param_specs,
    to_safetensors,
};
pub use pool::max_pool2x2_op;
pub use shape::ConvNetConfig;
