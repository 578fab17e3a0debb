//! MAML's inner loop (adaptation) and outer loop (meta-gradient and meta-step).

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use fewshot_model::{ConvNetConfig, ParamMap, accuracy, cross_entropy, expand, forward};

use crate::adam::Adam;
use crate::batch::TaskBatch;
use crate::error::{Error, Result};
use crate::eval::Scope;
use crate::grad_mode::{GradMode, ParallelJob, backward, run_parallel};
use crate::native::{Engine, native_meta_gradient};

/// How the meta-gradient treats the inner loop's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// First-order MAML: inner gradients are constants (detached).
    First,
    /// Exact MAML: differentiate through the inner gradients (Hessian-vector terms included),
    /// like PyTorch's `autograd.grad(create_graph=True)`.
    #[default]
    Second,
}

/// Inner-loop settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InnerLoop {
    /// SGD step size on the support loss.
    pub inner_lr: f64,
    /// Number of SGD steps.
    pub steps: usize,
    /// First or second order.
    pub order: Order,
}

impl InnerLoop {
    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        if !(self.inner_lr > 0.0 && self.inner_lr.is_finite()) {
            return Err(Error::InvalidSetting {
                name: "inner_lr",
                value: self.inner_lr.to_string(),
                expected: "a finite number > 0".into(),
            });
        }
        Ok(())
    }
}

/// Adapt `params` to each task's support set with `inner.steps` SGD steps.
///
/// Returns fast weights with a leading task dimension. With [`Order::Second`] they keep the
/// graph back to `params` through the inner gradients; with [`Order::First`] the inner
/// gradients are detached, so fast weights depend on `params` only through the identity.
///
/// # Shapes
/// `params`: without a task dimension; `support_images`: `[t, n, c, h, w]`;
/// `support_labels`: `[t, n]`.
pub fn adapt(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
) -> Result<ParamMap> {
    adapt_scoped(config, params, support_images, support_labels, inner, Scope::All)
}

/// [`adapt`] updating only the parameters in `scope` (the others keep their values).
pub(crate) fn adapt_scoped(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
    scope: Scope,
) -> Result<ParamMap> {
    inner.validate()?;
    let t = support_images.dim(0)?;
    let mut fast = expand(params, t)?;
    let mode = match inner.order {
        Order::Second => GradMode::KeepGraph,
        Order::First => GradMode::Detach,
    };
    for _ in 0..inner.steps {
        // Each task's gradient is read off a zero Var added to its fast weights: the summed
        // loss of independent tasks has exactly the per-task gradients there.
        let probes: BTreeMap<&String, Var> =
            fast.iter().map(|(k, v)| Ok((k, Var::zeros(v.shape(), v.dtype(), v.device())?))).collect::<Result<_>>()?;
        let probed: ParamMap = fast
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.broadcast_add(probes[k].as_tensor())?)))
            .collect::<Result<_>>()?;
        let loss = cross_entropy(&forward(config, &probed, support_images)?, support_labels)?.sum_all()?;
        let grads = backward(&loss, mode)?;
        fast = fast
            .iter()
            .map(|(k, w)| {
                if !scope.updates(k) {
                    return Ok((k.clone(), w.clone()));
                }
                // A parameter the loss does not depend on (a conv bias before batch norm)
                // has a zero gradient.
                let g = match (grads.get(probes[k].as_tensor()), inner.order) {
                    (Some(g), Order::Second) => g.clone(),
                    (Some(g), Order::First) => g.detach(),
                    (None, _) => w.zeros_like()?,
                };
                Ok((k.clone(), (w - (g * inner.inner_lr)?)?))
            })
            .collect::<Result<_>>()?;
    }
    Ok(fast)
}

/// Query loss and accuracy of one meta-batch, averaged over tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean query cross-entropy after adaptation.
    pub loss: f32,
    /// Mean query accuracy after adaptation.
    pub accuracy: f32,
}

/// Default number of tasks whose graphs are alive at once in a meta-gradient (see
/// [`meta_gradient`]): bounds second-order memory while keeping batched ops large.
pub const DEFAULT_TASK_CHUNK: usize = 1;

/// The meta-gradient of the mean query loss after adaptation, with respect to `params`.
///
/// Tasks are processed `task_chunk` at a time (each chunk as one batched computation); their
/// gradients are summed, so the result equals one pass over the whole batch while only one
/// chunk's graph, the costly part of second order, is alive at a time. The outer backward pass
/// always runs detached (it needs no graph of its own), which halves memory against keeping it.
pub fn meta_gradient(
    config: &ConvNetConfig,
    params: &BTreeMap<String, Var>,
    batch: &TaskBatch,
    inner: &InnerLoop,
    task_chunk: usize,
) -> Result<(ParamMap, StepStats)> {
    if task_chunk == 0 {
        return Err(Error::InvalidSetting { name: "task_chunk", value: "0".into(), expected: "at least 1".into() });
    }
    let theta: ParamMap = params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let t = batch.n_tasks();
    let mode = match inner.order {
        Order::Second => GradMode::KeepGraph,
        Order::First => GradMode::Detach,
    };
    // Chunks run in parallel, each wholly on a gradient worker of the inner loop's mode.
    let jobs: Vec<ParallelJob<Result<(ParamMap, f64, f64)>>> = (0..t)
        .step_by(task_chunk)
        .map(|start| -> Result<ParallelJob<Result<(ParamMap, f64, f64)>>> {
            let chunk = batch.narrow(start, task_chunk.min(t - start))?;
            let (config, theta, params, inner) = (*config, theta.clone(), params.clone(), *inner);
            Ok(Box::new(move || chunk_meta_gradient(&config, &theta, &params, &chunk, &inner, t)))
        })
        .collect::<Result<_>>()?;
    let per_chunk: Vec<(ParamMap, f64, f64)> = run_parallel(mode, jobs)?.into_iter().collect::<Result<_>>()?;
    let (mut loss_sum, mut acc_sum) = (0f64, 0f64);
    let mut sum: Option<ParamMap> = None;
    // Summed in chunk order, so the result does not depend on scheduling.
    for (grads, l, a) in per_chunk {
        loss_sum += l;
        acc_sum += a;
        sum = Some(match sum {
            None => grads,
            Some(acc) => acc.iter().map(|(k, v)| Ok((k.clone(), (v + &grads[k])?))).collect::<Result<_>>()?,
        });
    }
    let grads = sum.expect("a batch has at least one task");
    Ok((grads, StepStats { loss: (loss_sum / t as f64) as f32, accuracy: (acc_sum / t as f64) as f32 }))
}

/// One chunk's share of the meta-gradient (its loss divided by the batch's `t` tasks), with
/// its summed loss and accuracy.
fn chunk_meta_gradient(
    config: &ConvNetConfig,
    theta: &ParamMap,
    params: &BTreeMap<String, Var>,
    chunk: &TaskBatch,
    inner: &InnerLoop,
    t: usize,
) -> Result<(ParamMap, f64, f64)> {
    let fast = adapt(config, theta, &chunk.support_images, &chunk.support_labels, inner)?;
    let logits = forward(config, &fast, &chunk.query_images)?;
    let losses = cross_entropy(&logits, &chunk.query_labels)?; // [chunk]
    let loss_sum = losses.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let acc_sum = accuracy(&logits, &chunk.query_labels)?.sum_all()?.to_scalar::<f32>()? as f64;
    if !loss_sum.is_finite() {
        return Err(Error::NonFinite(loss_sum as f32));
    }
    let grads = backward(&(losses.sum_all()? / t as f64)?, GradMode::Detach)?;
    let mut out = ParamMap::new();
    for (name, var) in params {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.detach(),
            None => var.as_tensor().zeros_like()?, // the loss does not depend on it
        };
        out.insert(name.clone(), g);
    }
    Ok((out, loss_sum, acc_sum))
}

/// A meta-learner: the net's initial parameters, their Adam state, and the inner loop.
#[derive(Debug)]
pub struct Maml {
    config: ConvNetConfig,
    params: BTreeMap<String, Var>,
    /// The outer optimiser (public for checkpoints).
    pub optimizer: Adam,
    /// Inner-loop settings used by [`Maml::meta_step`].
    pub inner: InnerLoop,
    /// Tasks per chunk in [`meta_gradient`] (memory bound) on the candle engine; default
    /// [`DEFAULT_TASK_CHUNK`].
    pub task_chunk: usize,
    /// Which implementation computes meta-gradients; default [`Engine::Native`] (falls back to
    /// candle for batches it does not support).
    pub engine: Engine,
}

impl Maml {
    /// Start from `params` (see [`fewshot_model::init`]).
    pub fn new(config: ConvNetConfig, params: &ParamMap, inner: InnerLoop, meta_lr: f64) -> Result<Maml> {
        config.validate()?;
        fewshot_model::check_params(&config, params)?;
        inner.validate()?;
        if !(meta_lr > 0.0 && meta_lr.is_finite()) {
            return Err(Error::InvalidSetting {
                name: "meta_lr",
                value: meta_lr.to_string(),
                expected: "a finite number > 0".into(),
            });
        }
        let params =
            params.iter().map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.detach())?))).collect::<Result<_>>()?;
        Ok(Maml {
            config,
            params,
            optimizer: Adam::new(meta_lr),
            inner,
            task_chunk: DEFAULT_TASK_CHUNK,
            engine: Engine::default(),
        })
    }

    /// The net's shape.
    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    /// A snapshot of the current initial parameters.
    pub fn params(&self) -> ParamMap {
        self.params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    /// Replace the parameters' values (e.g. from a checkpoint); shapes must match.
    pub fn set_params(&mut self, params: &ParamMap) -> Result<()> {
        fewshot_model::check_params(&self.config, params)?;
        for (k, var) in &self.params {
            var.set(&params[k])?;
        }
        Ok(())
    }

    /// The meta-gradient of one batch without updating anything.
    pub fn meta_gradient(&self, batch: &TaskBatch) -> Result<(ParamMap, StepStats)> {
        let images = &batch.support_images;
        if self.engine == Engine::Native && Engine::native_supports(images.dtype(), images.device()) {
            return native_meta_gradient(&self.config, &self.params(), batch, &self.inner);
        }
        meta_gradient(&self.config, &self.params, batch, &self.inner, self.task_chunk)
    }

    /// One meta-step: meta-gradient of the batch's mean query loss, then an Adam update.
    pub fn meta_step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        let (grads, stats) = self.meta_gradient(batch)?;
        self.optimizer.step(&self.params, &grads)?;
        Ok(stats)
    }
}
