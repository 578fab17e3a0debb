//! [`Maml`]: the meta-learner of MAML and first-order MAML (initial parameters, their Adam
//! optimiser and the inner loop), a [`Learner`] whose step is the meta-gradient of a batch
//! followed by an Adam update.

use fewshot_model::{ConvNetConfig, ParamMap};

use crate::batch::TaskBatch;
use crate::engine::Engine;
use crate::error::Result;
use crate::learner::{Learner, StepStats, Trainable, delegate_state};
use crate::settings::InnerLoop;

/// A meta-learner: the net's initial parameters, their Adam state, and the inner loop.
#[derive(Debug)]
pub struct Maml {
    state: Trainable,
    /// Inner-loop settings used by [`Learner::step`].
    pub inner: InnerLoop,
    /// Which implementation computes meta-gradients; default [`Engine::Native`].
    pub engine: Engine,
}

impl Maml {
    /// Start from `params` (see [`fewshot_model::init`]) with Adam at `meta_lr`.
    pub fn new(config: ConvNetConfig, params: &ParamMap, inner: InnerLoop, meta_lr: f64) -> Result<Maml> {
        inner.validate()?;
        Ok(Maml { state: Trainable::new(config, params, meta_lr)?, inner, engine: Engine::default() })
    }

    /// The meta-gradient of one batch without updating anything.
    pub fn meta_gradient(&self, batch: &TaskBatch) -> Result<(ParamMap, StepStats)> {
        self.engine.meta_gradient(self.state.config(), &self.state.params(), batch, &self.inner)
    }

    /// One meta-step: meta-gradient of the batch's mean query loss, then an Adam update.
    pub fn meta_step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        let (grads, stats) = self.meta_gradient(batch)?;
        self.state.update(&grads)?;
        Ok(stats)
    }
}

impl Learner for Maml {
    delegate_state!();

    fn step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        self.meta_step(batch)
    }
}
