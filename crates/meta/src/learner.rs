//! [`Learner`]: what a training loop needs from a learning algorithm (one step on a batch,
//! the parameters, the optimiser state for checkpoints), and [`Trainable`], the state every
//! learner here shares (the net's parameters and their Adam optimiser).

use fewshot_model::{ConvNetConfig, ParamMap, ParamVars};

use crate::adam::Adam;
use crate::batch::TaskBatch;
use crate::error::{Error, Result};

/// Query loss and accuracy of one training batch, averaged over tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean query cross-entropy (after adaptation, for meta-learners).
    pub loss: f32,
    /// Mean query accuracy (after adaptation, for meta-learners).
    pub accuracy: f32,
}

/// A learning algorithm over the net's parameters: [`crate::Maml`] (meta-learning) and
/// [`crate::Supervised`] (the baselines' pre-training). A training loop calls
/// [`Learner::step`] once per batch and saves [`Learner::params`] and the optimiser's state.
pub trait Learner {
    /// The net's shape.
    fn config(&self) -> &ConvNetConfig;
    /// One update from `batch`; returns the batch's loss and accuracy before the update.
    fn step(&mut self, batch: &TaskBatch) -> Result<StepStats>;
    /// A snapshot of the current parameters.
    fn params(&self) -> ParamMap;
    /// Replace the parameters' values (e.g. from a checkpoint); names and shapes must match.
    fn set_params(&mut self, params: &ParamMap) -> Result<()>;
    /// The optimiser (its moments and step count go into checkpoints).
    fn optimizer(&self) -> &Adam;
    /// The optimiser, to restore its state on resume.
    fn optimizer_mut(&mut self) -> &mut Adam;
}

/// The net's parameters and their Adam optimiser: the state a [`Learner`] trains.
#[derive(Debug)]
pub struct Trainable {
    config: ConvNetConfig,
    params: ParamVars,
    /// The optimiser (public for checkpoints).
    pub optimizer: Adam,
}

impl Trainable {
    /// Start from `params` (see [`fewshot_model::init`]) with Adam at `lr`.
    pub fn new(config: ConvNetConfig, params: &ParamMap, lr: f64) -> Result<Trainable> {
        config.validate()?;
        fewshot_model::check_params(&config, params)?;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::InvalidSetting {
                name: "meta_lr",
                value: lr.to_string(),
                expected: "a finite number > 0".into(),
            });
        }
        Ok(Trainable { config, params: ParamVars::new(params)?, optimizer: Adam::new(lr) })
    }

    /// The net's shape.
    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    /// A snapshot of the current parameters.
    pub fn params(&self) -> ParamMap {
        self.params.snapshot()
    }

    /// Replace the parameters' values; names and shapes must match.
    pub fn set_params(&mut self, params: &ParamMap) -> Result<()> {
        fewshot_model::check_params(&self.config, params)?;
        Ok(self.params.set(params)?)
    }

    /// One Adam step along `grads`.
    pub fn update(&mut self, grads: &ParamMap) -> Result<()> {
        self.optimizer.step(&self.params, grads)
    }
}

/// Implement [`Learner`]'s state accessors for a type with a `state: Trainable` field.
macro_rules! delegate_state {
    () => {
        fn config(&self) -> &fewshot_model::ConvNetConfig {
            self.state.config()
        }
        fn params(&self) -> fewshot_model::ParamMap {
            self.state.params()
        }
        fn set_params(&mut self, params: &fewshot_model::ParamMap) -> crate::error::Result<()> {
            self.state.set_params(params)
        }
        fn optimizer(&self) -> &crate::adam::Adam {
            &self.state.optimizer
        }
        fn optimizer_mut(&mut self) -> &mut crate::adam::Adam {
            &mut self.state.optimizer
        }
    };
}
pub(crate) use delegate_state;
