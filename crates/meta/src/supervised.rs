//! [`Supervised`]: plain supervised training of the net (the baselines' pre-training), a
//! [`Learner`] whose step is the gradient of the batch's mean query loss followed by an Adam
//! update. The support sets are not used.

use fewshot_model::ConvNetConfig;

use crate::batch::TaskBatch;
use crate::engine::Engine;
use crate::error::Result;
use crate::learner::{Learner, Outer, StepStats, Trainable};
use crate::meta_params::MetaParams;
use crate::settings::{InnerLoop, Order};

/// Supervised training of the whole net on labelled images, batch by batch. Each task of a
/// batch is one group of images normalised together by batch norm (as a task is at test
/// time); the loss is the mean over tasks of each task's mean cross-entropy on its query set.
#[derive(Debug)]
pub struct Supervised {
    state: Trainable,
    engine: Engine,
}

impl Supervised {
    /// Start from `params` (see [`fewshot_model::init`]) with Adam as `outer` says, gradients
    /// computed by `engine`.
    pub fn new(config: ConvNetConfig, params: &MetaParams, outer: Outer, engine: Engine) -> Result<Supervised> {
        Ok(Supervised { state: Trainable::new(config, params, outer)?, engine })
    }

    /// The gradient of the batch's loss, without updating anything.
    pub fn gradient(&self, batch: &TaskBatch) -> Result<(MetaParams, StepStats)> {
        // A meta-gradient through zero inner steps is exactly the gradient of the query loss
        // at the parameters (the step size is never used).
        let no_adaptation = InnerLoop::new(1.0, 0, Order::First);
        self.engine.meta_gradient(self.state.config(), &self.state.params(), batch, &no_adaptation)
    }
}

impl Learner for Supervised {
    fn state(&self) -> &Trainable {
        &self.state
    }

    fn state_mut(&mut self) -> &mut Trainable {
        &mut self.state
    }

    fn step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        let (grads, stats) = self.gradient(batch)?;
        self.state.update(&grads)?;
        Ok(stats)
    }
}
