//! [`Engine`]: which implementation computes meta-gradients and adapted logits. The one place
//! the choice is made: every caller goes through [`Engine::meta_gradient`] or
//! [`Engine::adapted_logits`].

use candle_core::Tensor;
use fewshot_model::ConvNetConfig;

use crate::StepStats;
use crate::batch::{TaskBatch, TaskInputs};
use crate::error::Result;
use crate::meta_params::MetaParams;
use crate::settings::{Adaptation, InnerLoop};
use crate::{candle, native};

/// Default number of tasks whose graphs are alive at once in the candle engine's
/// meta-gradient: bounds second-order memory while tasks run in parallel.
pub const DEFAULT_TASK_CHUNK: usize = 1;

/// Which implementation runs the inner and outer loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Hand-written forward, backward and Hessian-vector products on flat buffers (f32 or f64
    /// on the CPU), tasks in parallel. The default; batches it does not support (other dtypes
    /// or devices) go to [`Engine::Candle`] with [`DEFAULT_TASK_CHUNK`].
    #[default]
    Native,
    /// candle's autograd over [`fewshot_model::forward`]: the simple reference path, and the
    /// one for other devices or dtypes.
    Candle {
        /// Tasks per batched computation in a meta-gradient (memory bound; at least 1).
        task_chunk: usize,
    },
}

impl Engine {
    /// The candle engine with [`DEFAULT_TASK_CHUNK`].
    pub fn candle() -> Engine {
        Engine::Candle { task_chunk: DEFAULT_TASK_CHUNK }
    }

    /// Whether the native engine can run images of `tensor`'s dtype on its device.
    pub fn native_supports(images: &Tensor) -> bool {
        native::supports(images.dtype(), images.device())
    }

    /// The engine that runs a batch whose images are `images`: this one, unless it is
    /// [`Engine::Native`] and the batch is not on the CPU in f32 or f64.
    fn for_images(self, images: &Tensor) -> Engine {
        match self {
            Engine::Native if !Engine::native_supports(images) => Engine::candle(),
            engine => engine,
        }
    }

    /// The meta-gradient of the batch's mean query loss after `inner`'s adaptation with
    /// respect to `params` (exact to the second order with [`crate::Order::Second`]), and the
    /// batch's query loss and accuracy after adaptation.
    pub fn meta_gradient(
        self,
        config: &ConvNetConfig,
        params: &MetaParams,
        batch: &TaskBatch,
        inner: &InnerLoop,
    ) -> Result<(MetaParams, StepStats)> {
        match self.for_images(&batch.support_images) {
            Engine::Native => native::meta_gradient(config, params, batch, inner),
            Engine::Candle { task_chunk } => {
                refuse_groups()?;
                candle::meta_gradient(config, params, batch, inner, task_chunk)
            }
        }
    }

    /// Query logits of each task after adapting `params` to its support set as `adaptation`
    /// says (first order: adaptation at test time needs no meta-gradient).
    ///
    /// # Shapes
    /// See [`TaskInputs`]; returns `[t, n_query, n_way]`.
    pub fn adapted_logits(
        self,
        config: &ConvNetConfig,
        params: &MetaParams,
        tasks: TaskInputs<'_>,
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        match self.for_images(tasks.support_images) {
            Engine::Native => native::adapted_logits(config, params, tasks, adaptation),
            Engine::Candle { .. } => {
                refuse_groups()?;
                candle::adapted_logits(config, params, tasks, adaptation)
            }
        }
    }
}

/// The candle engine computes every task in this process: under a group of ranks
/// ([`crate::distributed`]) it would not split the work, so it is refused rather than run
/// once per rank.
fn refuse_groups() -> Result<()> {
    match crate::distributed::current() {
        Some(g) => Err(crate::error::Error::InvalidSetting {
            name: "engine",
            value: "candle".into(),
            expected: format!(
                "the native engine when running as {} ranks (only it splits a batch's tasks over ranks)",
                g.size()
            ),
        }),
        None => Ok(()),
    }
}
